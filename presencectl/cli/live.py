"""The live dashboard of `sync --watch` on a terminal (rich): users, recent changes, writes/min,
throttling and the next renewals, redrawn from the engine's events."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from presencectl import output
from presencectl.cli.events import event_text


class LiveView:
    """Feed it ``SyncEvent``s (``on_event``); use as a context manager around the watch."""

    def __init__(self, profile_name: str, options: Any) -> None:
        self.profile_name = profile_name
        self.options = options
        self.changes: deque[tuple[str, str]] = deque(maxlen=10)
        self.write_times: deque[float] = deque(maxlen=10_000)
        self.last_cycle: dict[str, Any] = {}
        self.feed_state = "—"
        self.outage: str | None = None  # "Graph unreachable since 10:02, retrying in 20 s"
        self._outage_data: dict[str, Any] | None = None  # the event, to count down its retry
        self._live: Any = None

    def __enter__(self) -> LiveView:
        from rich.live import Live

        self._live = Live(
            self._render(),
            console=output.stderr_console(),
            refresh_per_second=4,
            transient=False,
            get_renderable=self._render,  # redrawn on each refresh: the outage line counts down
        )
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def on_event(self, event: Any) -> None:
        data = event.data
        at = event.at.strftime("%H:%M:%S")
        if event.type in ("write", "change"):
            if event.type == "write":
                self.write_times.append(time.monotonic())
            self.changes.appendleft((at, event_text(event) or ""))
        elif event.type == "cycle":
            self.last_cycle = data
        elif event.type == "feed":
            self.feed_state = str(data.get("state"))
        elif event.type == "outage":
            self.outage = str(data.get("message"))
            self._outage_data = dict(data)
        elif event.type == "recovered":
            self.outage = None
            self._outage_data = None
        if self._live is not None:
            self._live.update(self._render())

    def note(self, at: str, text: str) -> None:
        """A line of the caller's own among the recent changes (the demo's simulated people).

        Printing above a rich Live from another thread while it redraws garbles the screen, so
        such lines go into the dashboard instead."""
        self.changes.appendleft((at, text))
        if self._live is not None:
            self._live.update(self._render())

    def _outage_now(self) -> str | None:
        """The outage line, its "retrying in N s" counted at this redraw."""
        from datetime import UTC, datetime

        from presencectl.sync.resilience import outage_text

        if self._outage_data is None:
            return self.outage
        return outage_text(self._outage_data, datetime.now(UTC)) or self.outage

    def _writes_per_minute(self) -> int:
        horizon = time.monotonic() - 60
        return sum(1 for t in self.write_times if t >= horizon)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        c = self.last_cycle
        head = Table.grid(padding=(0, 2))
        head.add_row(
            f"[bold]presencectl sync --watch[/] · {self.profile_name}",
            f"direction {self.options.direction.value}",
            f"every {self.options.interval:g} s",
            f"connect feed {self.feed_state}",
        )
        head.add_row(
            f"matched {c.get('matched', '…')}",
            f"cycles {c.get('cycle', 0)}",
            f"writes/min {self._writes_per_minute()}",
            f"sessions held {c.get('sessions', 0)}",
        )
        head.add_row(
            f"written {c.get('written', 0)} · cleared {c.get('cleared', 0)}",
            f"failed {c.get('failed', 0)}",
            f"throttled {c.get('throttled', 0)} ({c.get('throttle_wait_s', 0)} s waited)",
            "",
        )
        if self.outage:
            head.add_row(f"[bold red]{self._outage_now()}[/]", "", "", "")
        recent = Table(title="Recent changes", show_header=False, expand=True)
        recent.add_column("at", width=8)
        recent.add_column("what")
        for at, what in self.changes:
            recent.add_row(at, what)
        renewals = Table(title="Next renewals", show_header=False)
        for item in c.get("next_renewals", []):
            renewals.add_row(item["at"][11:19], item["user"])
        return Group(head, recent, renewals)
