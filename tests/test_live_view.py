"""The live dashboard (cli/live.py) of `sync --watch` and of the demo, rendered through a
recording rich Console and asserted on its text: the view alone from events, then the real
`sync --watch` and `demo` on a (pretended) terminal against the sandbox."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from presencectl import output
from presencectl.sync.engine import EngineOptions, SyncEvent

pytestmark = pytest.mark.timeout(120)


class _Tty(io.StringIO):
    """stdout/stderr that say they are a terminal (the live view only runs on one)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> Iterator[Console]:
    """Every rich output presencectl sends to stderr lands in this recording console."""
    console = Console(
        file=io.StringIO(), record=True, force_terminal=True, width=140, color_system=None
    )
    monkeypatch.setattr(output, "stderr_console", lambda: console)
    yield console


def _text(console: Console) -> str:
    return console.export_text(clear=False)


def _event(event_type: str, /, **data: Any) -> SyncEvent:
    return SyncEvent(event_type, datetime(2026, 1, 5, 9, 30, 15, tzinfo=UTC), data)


def test_the_view_shows_cycles_changes_writes_and_renewals(screen: Console) -> None:
    from presencectl.cli.live import LiveView

    view = LiveView("prod", EngineOptions(interval=2.5))
    with view:
        view.on_event(_event("feed", state="connected"))
        view.on_event(_event("change", user="ann@contoso.example", teams="Busy/InACall",
                             connect=None))  # fmt: skip
        view.on_event(
            _event(
                "write", user="ann@contoso.example", side="connect", kind="set",
                **{"from": "available", "to": "onphone"}, reason="Teams: Busy/InACall",
                purpose="assert", outcome="ok",
            )
        )  # fmt: skip
        view.note("09:30:16", "person  bob@contoso.example starts a call in Connect (onphone)")
        view.on_event(
            _event(
                "cycle", cycle=3, matched=27, written=5, cleared=2, failed=1, throttled=4,
                throttle_wait_s=1.5, sessions=6,
                next_renewals=[{"user": "ann@contoso.example", "at": "2026-01-05T10:25:00+00:00"}],
            )
        )  # fmt: skip
    text = _text(screen)
    assert "presencectl sync --watch · prod" in text
    assert "direction both" in text and "every 2.5 s" in text
    assert "Connect by its feed (connected)" in text
    assert "matched 27" in text and "cycles 3" in text and "sessions held 6" in text
    assert "written 5 · cleared 2" in text and "failed 1" in text
    assert "throttled 4 (1.5 s waited)" in text
    assert "writes/min 1" in text
    assert "change  ann@contoso.example: teams=Busy/InACall connect=(ours)" in text
    assert (
        "connect ann@contoso.example: our session -> onphone"
        " (connect showed available; Teams: Busy/InACall) ok"
    ) in text
    assert "person  bob@contoso.example starts a call in Connect (onphone)" in text
    assert "renew next: our session for ann@contoso.example at 10:25:00" in text


def _run_on_a_terminal(*args: str) -> tuple[int, str, str]:
    from presencectl.cli.app import run

    out, err = _Tty(), _Tty()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = run(list(args))
    finally:
        sys.stdin = old_stdin
    return code, out.getvalue(), err.getvalue()


def test_sync_watch_on_a_terminal_draws_the_live_view(cli: Any, screen: Console) -> None:
    from test_engine_sandbox import Org

    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=12, seed=3, auto_approve="admin@contoso.example") as sb:
        org = Org(sb, cli)
        assert org.run("enable").exit_code == 0
        person = org.people[0].email
        org.connect(person, "onphone")
        code, stdout, _ = _run_on_a_terminal(
            "--profile", "sandbox", "sync", "--watch", "--max-cycles", "2", "--interval", "0.5"
        )  # fmt: skip
    assert code == 0
    text = _text(screen)
    assert "presencectl sync --watch · sandbox" in text
    assert f"matched {len(org.people) + 2}" in text  # the admin and the sync user match too
    assert f"teams   {person}: " in text and "Busy/InACall" in text
    assert "People (latest change first)" in text and "Events" in text
    # The dashboard replaced the plain event lines: stdout has none of them.
    assert f"{person}:" not in stdout


def test_the_demo_on_a_terminal_shows_people_and_writes_in_the_live_view(
    screen: Console,
) -> None:
    code, stdout, _ = _run_on_a_terminal(
        "demo", "--users", "12", "--duration", "5", "--interval", "0.5"
    )
    assert code == 0
    text = _text(screen)
    assert "presencectl sync --watch · demo" in text
    assert "Events" in text
    assert "person  " in text  # the simulated people's own changes, noted in the view
    assert " -> " in text  # writes carried to the other side
    assert "✓ enable: both directions" in text  # narration goes through the same console
    assert "Simulated changes" in stdout  # the summary still goes to stdout


def _write(user: str, side: str, to: str | None, *, at: int = 15, outcome: str = "ok") -> SyncEvent:
    event = _event("write", user=user, side=side, kind="set" if to else "clear",
                   **{"from": "available", "to": to}, reason="r", purpose="assert",
                   outcome=outcome)  # fmt: skip
    event.at = event.at.replace(second=at)
    return event


def test_the_header_says_how_teams_arrives(screen: Console) -> None:
    from presencectl.cli.live import LiveView

    view = LiveView("prod", EngineOptions(interval=5))
    assert view.teams_arrival() == "Teams polled every 5 s"
    view.on_event(_event("notifications", mode="notifications", users_covered=650,
                         users_matched=700, subscriptions=1, poll_interval_s=5,
                         reason="…"))  # fmt: skip
    assert view.teams_arrival() == (
        "Teams by change notifications (1 subscription): 650 of 700 people covered, "
        "polling every 5 s for the rest"
    )
    view.on_event(_event("notifications", mode="notifications", users_covered=13,
                         users_matched=13, subscriptions=1, poll_interval_s=60, received=4,
                         reason="…"))  # fmt: skip
    assert view.teams_arrival() == (
        "Teams by change notifications (1 subscription): all 13 people covered, reconciled "
        "every 60 s · 4 received"
    )
    view.on_event(_event("notifications", mode="polling", reason="no --notify-url"))
    assert view.teams_arrival() == "Teams polled every 5 s (no --notify-url)"


def test_counts_move_at_each_write_not_at_the_next_poll(screen: Console) -> None:
    """Issue 24 item 6: a change delivered by a notification was written in ~60 ms, yet the
    header said "written 0" until the reconcile poll a minute later."""
    from presencectl.cli.live import LiveView

    view = LiveView("prod", EngineOptions(interval=60))
    with view:
        view.on_event(_event("cycle", cycle=1, matched=3, written=0, cleared=0, failed=0))
        view.on_event(_write("ann@contoso.example", "connect", "onphone"))
        view.on_event(_write("bob@contoso.example", "teams", None))
        view.on_event(_write("cy@contoso.example", "teams", "Busy/InACall", outcome="failed"))
        assert view.counts == {"written": 1, "cleared": 1, "failed": 1}
        screen.print(view._render())
        assert "written 1 · cleared 1 · failed 1" in _text(screen)
        # The next cycle's totals are the engine's own: they never move the counts back.
        view.on_event(_event("cycle", cycle=2, matched=3, written=1, cleared=1, failed=1))
        assert view.counts == {"written": 1, "cleared": 1, "failed": 1}


def test_the_people_grid_shows_both_sides_what_we_hold_latest_first(screen: Console) -> None:
    from presencectl.cli.live import LiveView

    view = LiveView("prod", EngineOptions(interval=5))
    with view:
        view.on_event(_event("change", user="old@contoso.example", teams="Available/Available",
                             connect="available"))  # fmt: skip
        later = _event("change", user="ann@contoso.example", teams="Busy/InACall",
                       connect=None)  # fmt: skip
        later.at = later.at.replace(second=40)
        view.on_event(later)
        view.on_event(_write("ann@contoso.example", "connect", "onphone", at=41))
    frame = view._render()
    screen.print(frame)
    lines = _text(screen).splitlines()
    rows = [line for line in lines if "@contoso.example" in line and "change  " not in line
            and "our session" not in line]  # fmt: skip
    assert "ann@contoso.example" in rows[-2] and "old@contoso.example" in rows[-1]
    ann = rows[-2]
    assert "Busy/InACall" in ann and "(ours)" in ann  # Teams; Connect shows our session
    assert "C onphone" in ann and "09:30:41 Connect ← onphone" in ann
    assert "Available/Available" in rows[-1] and "—" in rows[-1]  # we hold nothing for them


def test_the_grid_fits_the_terminal_and_says_how_many_are_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from presencectl.cli.live import LiveView

    console = Console(file=io.StringIO(), record=True, force_terminal=True, width=100,
                      height=20, color_system=None)  # fmt: skip
    monkeypatch.setattr(output, "stderr_console", lambda: console)
    view = LiveView("prod", EngineOptions(interval=5))
    for n in range(40):
        view.on_event(_event("change", user=f"p{n:02d}@contoso.example", teams="Away/Away",
                             connect="away"))  # fmt: skip
    console.print(view._render())
    lines = console.export_text().splitlines()
    assert len(lines) <= 20  # never taller than the terminal: a redraw never scrolls
    assert max(len(line) for line in lines) <= 100
    assert "more not shown (the terminal is full)" in "\n".join(lines)


def test_renewals_say_what_they_renew_and_progress_is_one_line(screen: Console) -> None:
    from presencectl.cli.live import LiveView

    view = LiveView("prod", EngineOptions(interval=5))
    view.on_event(_event("cycle", cycle=1, matched=2, next_renewals=[
        {"user": "ann@contoso.example", "side": "teams", "at": "2026-01-05T10:25:00+00:00"},
        {"user": "bob@contoso.example", "side": "connect", "at": "2026-01-05T10:26:00+00:00"},
        {"user": "cy@contoso.example", "side": "teams", "at": "2026-01-05T10:27:00+00:00"},
    ]))  # fmt: skip
    view.on_event(_event("notifications", mode="notifications", users_covered=2,
                         users_matched=2, subscriptions=1, poll_interval_s=60,
                         next_renewal="2026-01-05T10:40:00+00:00", reason="…"))  # fmt: skip
    assert view.renewals_line() == (
        "renew next: our Teams session for ann@contoso.example at 10:25:00; our Connect session"
        " for bob@contoso.example at 10:26:00; the Graph subscription at 10:40:00 (+1 more)"
    )
    assert view.progress_line() is None
    # A long read's progress (the event helper "budgets" emits), as one line.
    view.on_event(_event("progress", phase="reading Connect presence", done=1200, total=10000,
                         rate_per_min=250, eta_s=2112))  # fmt: skip
    assert view.progress_line() == (
        "reading Connect presence: 1,200 of 10,000 (12%) · 250/min · about 35 min left"
    )
    with view:
        pass
    text = _text(screen)
    assert "reading Connect presence: 1,200 of 10,000 (12%)" in text
    assert "stopped" in text  # the last frame says so: nothing claims to be watching


def test_the_header_shows_the_interval_auto_chose_and_its_budget_share(screen: Console) -> None:
    from presencectl.cli.live import LiveView

    view = LiveView("prod", EngineOptions(interval=5))
    assert view.teams_arrival() == "Teams polled every 5 s"
    view.on_event(_event("interval", interval_s=1.2, reads_per_poll=4, reads_per_s=3.33,
                         budget_share=0.067, auto=True, polled_users=2000))  # fmt: skip
    assert view.teams_arrival() == ("Teams polled every 1.2 s, auto: 7% of Graph's presence budget")
    view.on_event(_event("notifications", mode="notifications", users_covered=650,
                         users_matched=2000, subscriptions=1, poll_interval_s=1.2,
                         reason="650 of 2000 covered"))  # fmt: skip
    assert "650 of 2000 people covered, polling every 1.2 s for the rest, auto: 7%" in (
        view.teams_arrival()
    )
