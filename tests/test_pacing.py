"""--interval auto (sync/pacing.py), progress events (sync/progress.py) and their display
(cli/progress.py), and the bad input around them."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from presencectl.sync.pacing import auto_interval, budget_line, interval_line
from presencectl.sync.progress import Progress
from tests.fakes import FakeClock


@pytest.mark.parametrize(
    ("users", "writes", "interval", "reads"),
    [
        (2_000, 0.0, 1.0, 4),  # 4 reads a second: the floor, 8 % of the budget
        (0, 0.0, 1.0, 0),
        (650, 0.0, 1.0, 1),
        (50_000, 0.0, 3.08, 77),  # 77 reads at 25 a second
        (50_000, 40.0, 15.4, 77),  # writes take 40 of the 50 a second: 5 left for polls
        (2_000, 50.0, 30.0, 4),  # writes take it all: once a window
    ],
)
def test_auto_interval_takes_half_of_what_the_writes_leave(
    users: int, writes: float, interval: float, reads: int
) -> None:
    chosen = auto_interval(users, limit=1500, window_s=30.0, write_units_per_s=writes)
    assert chosen["reads_per_poll"] == reads
    assert chosen["interval_s"] == pytest.approx(interval, abs=0.01)
    assert chosen["interval_s"] >= 1.0
    assert chosen["reads_per_s"] <= 25.0  # half of 1,500 / 30 s, never more
    if users == 2_000 and writes == 0:
        assert chosen["budget_share"] == pytest.approx(0.08)


def test_progress_events_carry_phase_done_total_rate_and_time_left_from_the_budget() -> None:
    clock = FakeClock()
    events: list[dict[str, Any]] = []
    progress = Progress(events.append, clock=clock)
    progress.begin("connect_reads", 100, budget_per_min=60)
    for _ in range(10):
        clock.advance(0.1)  # measured: 600 a minute, far above the budget
        progress.tick("connect_reads")
    progress.tick("writes", 5)  # another phase's work does not move this bar
    assert events[0] == {"phase": "connect_reads", "done": 0, "total": 100,
                         "rate_per_min": 0.0, "eta_s": 100.0}  # fmt: skip
    snap = progress.snapshot()
    assert snap is not None and snap["done"] == 10
    assert snap["eta_s"] == pytest.approx(90.0)  # 90 left at 60 a minute, not at 600
    assert len(events) <= 4  # throttled: not one event per tick
    progress.end("connect_reads")
    assert events[-1]["done"] == events[-1]["total"] == 100
    assert progress.snapshot() is None


def test_the_progress_display_shows_nothing_off_a_terminal_or_under_quiet() -> None:
    from presencectl.cli.progress import ProgressDisplay

    app = SimpleNamespace(verbosity=-1)
    quiet = ProgressDisplay(app, clock=lambda: 100.0)  # type: ignore[arg-type]
    quiet.update({"phase": "writes", "done": 1, "total": 2, "rate_per_min": 1, "eta_s": 60})
    assert quiet.shown == 0
    app = SimpleNamespace(verbosity=0)
    piped = ProgressDisplay(app, clock=lambda: 100.0)  # type: ignore[arg-type]  # not a tty
    piped.update({"phase": "writes", "done": 1, "total": 2, "rate_per_min": 1, "eta_s": 60})
    assert piped.shown == 0


def test_the_progress_display_draws_phase_done_total_rate_and_time_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from presencectl import output
    from presencectl.cli.progress import ProgressDisplay

    console = Console(file=io.StringIO(), record=True, force_terminal=True, width=120)
    monkeypatch.setattr(output, "stderr_console", lambda: console)
    now = [0.0]
    app = SimpleNamespace(verbosity=0)
    display = ProgressDisplay(app, enabled=True, clock=lambda: now[0])  # type: ignore[arg-type]
    event = {"phase": "connect_reads", "done": 40, "total": 400, "rate_per_min": 250.0,
             "eta_s": 86.4}  # fmt: skip
    display.update(event)
    assert display.shown == 0  # the first 2 s show nothing
    now[0] = 2.5
    display.update(event)
    display.close()
    drawn = console.export_text()
    assert "Connect reads" in drawn and "40/400" in drawn
    assert "250/min" in drawn and "~1 min 26 s left" in drawn


def test_status_lines_for_the_budget_and_the_interval() -> None:
    budget = {"per_minute": 250, "used_last_minute": 240, "queued_writes": 12}
    line = budget_line({**budget, "oldest_write_wait_s": 3.5})
    assert line == "250/min, 240 used in the last minute; 12 write(s) queued, oldest waiting 3.5 s"
    assert budget_line({"per_minute": 0, "used_last_minute": 3}) is not None
    assert "no budget" in (budget_line({"per_minute": 0}) or "")
    chosen = auto_interval(2000, limit=1500, window_s=30.0)
    text = interval_line({**chosen, "auto": True})
    assert text == "every 1 s (auto: 4 read(s) a poll, 8.0 % of Graph's presence budget)"


@pytest.mark.parametrize("bad", ["0.1", "0", "-5", "abc", "nan", "inf"])
def test_a_bad_interval_is_refused_with_the_option_named(cli: Any, bad: str) -> None:
    result = cli("sync", "--watch", "--interval", bad)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "--interval" in result.stderr and "No such option" not in result.stderr


def test_a_watch_poll_leaves_out_the_users_notifications_cover_except_to_reconcile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from presencectl.sync import notify_glue
    from presencectl.sync.notify_glue import NotificationsGlue

    now = [1000.0]
    monkeypatch.setattr(notify_glue.time, "monotonic", lambda: now[0])
    glue = NotificationsGlue.__new__(NotificationsGlue)
    glue.pairs = {f"k{i}": SimpleNamespace(azure_id=f"a{i}") for i in range(1000)}  # type: ignore[misc]
    glue.notifications = SimpleNamespace(  # type: ignore[assignment]
        active=True, covered={f"a{i}" for i in range(650)},
        options=SimpleNamespace(reconcile_interval=60.0),
    )  # fmt: skip
    wanted = list(glue.pairs)
    assert len(glue._teams_poll_keys(wanted)) == 1000  # the first poll reads everyone
    now[0] += 1
    polled = glue._teams_poll_keys(wanted)
    assert len(polled) == 350 and "k0" not in polled and "k999" in polled
    now[0] += 60
    assert len(glue._teams_poll_keys(wanted)) == 1000  # the reconcile poll: everyone again
    glue.notifications = None
    assert len(glue._teams_poll_keys(wanted)) == 1000
