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
    assert "connect feed connected" in text
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
    assert "Next renewals" in text and "10:25:00" in text


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
    assert "Recent changes" in text
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
    assert "presencectl sync --watch · sandbox" in text
    assert "Recent changes" in text
    assert "person  " in text  # the simulated people's own changes, noted in the view
    assert " -> " in text  # writes carried to the other side
    assert "✓ enable: both directions" in text  # narration goes through the same console
    assert "Simulated changes" in stdout  # the summary still goes to stdout
