"""The live dashboard of `sync --watch` on a terminal (rich), redrawn from the engine's events.

Owns :class:`LiveView`. A header says how each side arrives (Teams by change notifications —
how many people they cover, how often the rest is polled — or by polling; Connect by its
feed), the counts (updated at each write, not at the next poll: a change a notification
delivers is written between polls), a long read's progress line, an outage line, and which of
our sessions are renewed next. Below it a people grid (like ``top``): each person's state on
both sides, the session we hold for them and their last change, most recent first, as many as
fit the terminal, beside the event log (stacked under it on a narrow terminal). The whole view
is cut to the terminal's height, so a redraw never scrolls and nothing stale stays on screen.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from presencectl import output
from presencectl.cli.events import event_text

SIDE_BY_SIDE_MIN_WIDTH = 180  # narrower: the event log goes under the people grid (full width)
LOG_KEEP = 200
REDRAW_EVERY_S = 0.1  # events redraw at most this often (the Live also redraws 4 times a second)
SPARE_LINES = 2  # the frame leaves these lines of the terminal free (see _render)


@dataclass
class PersonRow:
    """What the view knows of one person, from the engine's events."""

    teams: str = "?"
    connect: str = "?"
    ours_teams: str | None = None
    ours_connect: str | None = None
    last_at: datetime | None = None
    last_what: str = ""


class LiveView:
    """Feed it ``SyncEvent``s (``on_event``); use as a context manager around the watch."""

    def __init__(self, profile_name: str, options: Any) -> None:
        self.profile_name = profile_name
        self.options = options
        self.changes: deque[tuple[str, str]] = deque(maxlen=LOG_KEEP)
        self.write_times: deque[float] = deque(maxlen=10_000)
        self.last_cycle: dict[str, Any] = {}
        self.counts = {"written": 0, "cleared": 0, "failed": 0}
        self.people: dict[str, PersonRow] = {}
        self.notifications: dict[str, Any] | None = None
        self.progress: dict[str, Any] | None = None
        self.interval_chosen: dict[str, Any] | None = None  # the last `interval` event
        self.feed_state = "—"
        self.stopped = False
        self.outage: str | None = None  # "Graph unreachable since 10:02, retrying in 20 s"
        self._outage_data: dict[str, Any] | None = None  # the event, to count down its retry
        self._live: Any = None
        self._console: Any = None  # the Live's own (stderr_console() makes a new one meanwhile)
        self._drawn_at = 0.0

    def __enter__(self) -> LiveView:
        from rich.live import Live

        self._console = output.stderr_console()
        self._live = Live(
            self._render(),
            console=self._console,
            refresh_per_second=4,
            transient=False,
            vertical_overflow="crop",
            get_renderable=self._render,  # redrawn on each refresh: the outage line counts down
        )
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            self.stopped = True
            live.update(self._render(), refresh=True)  # the last frame says "stopped"
            live.__exit__(*exc)

    def on_event(self, event: Any) -> None:
        data = event.data
        at = event.at.strftime("%H:%M:%S")
        if event.type == "write":
            self.write_times.append(time.monotonic())
            self._count_write(data)
            self._person_write(event)
            self.changes.appendleft((at, event_text(event) or ""))
        elif event.type == "change":
            self._person_change(event)
            self.changes.appendleft((at, event_text(event) or ""))
        elif event.type == "cycle":
            self.last_cycle = data
            for key in self.counts:  # the engine's totals catch up with what we counted
                self.counts[key] = max(self.counts[key], int(data.get(key, 0)))
            self.progress = None
        elif event.type == "feed":
            self.feed_state = str(data.get("state"))
        elif event.type == "notifications":
            self.notifications = dict(data)
            self.changes.appendleft((at, event_text(event) or ""))
        elif event.type == "progress":
            self.progress = dict(data)
        elif event.type == "interval":  # --interval auto chose (again): sync/pacing.py
            self.interval_chosen = dict(data)
        elif event.type == "outage":
            self.outage = str(data.get("message"))
            self._outage_data = dict(data)
        elif event.type == "recovered":
            self.outage = None
            self._outage_data = None
        elif event.type == "stop":
            self.stopped = True
        self._redraw(force=event.type in ("stop", "outage", "recovered", "notifications"))

    def note(self, at: str, text: str) -> None:
        """A line of the caller's own in the event log (the demo's simulated people).

        Printing above a rich Live from another thread while it redraws garbles the screen, so
        such lines go into the dashboard instead."""
        self.changes.appendleft((at, text))
        self._redraw()

    def _redraw(self, *, force: bool = False) -> None:
        """Draw now, at most REDRAW_EVERY_S apart: a first cycle of 10,000 people sends 10,000
        events, and a frame sorts every person (the Live redraws on its own meanwhile)."""
        if self._live is None:
            return
        now = time.monotonic()
        if force or now - self._drawn_at >= REDRAW_EVERY_S:
            self._drawn_at = now
            self._live.update(self._render())

    # -- what the events say -----------------------------------------------------------------

    def _count_write(self, data: dict[str, Any]) -> None:
        outcome = data.get("outcome")
        if outcome in ("ok", "gone"):
            self.counts["written" if data.get("kind") == "set" else "cleared"] += 1
        elif outcome == "failed":
            self.counts["failed"] += 1

    def _person(self, user: str) -> PersonRow:
        row = self.people.get(user)
        if row is None:
            row = self.people[user] = PersonRow()
        return row

    def _person_change(self, event: Any) -> None:
        data = event.data
        row = self._person(str(data["user"]))
        row.teams = data["teams"] if data["teams"] is not None else "(ours)"
        row.connect = data["connect"] if data["connect"] is not None else "(ours)"
        row.last_at = event.at
        row.last_what = "changed"

    def _person_write(self, event: Any) -> None:
        data = event.data
        if data.get("outcome") not in ("ok", "gone"):
            row = self._person(str(data["user"]))
            row.last_at, row.last_what = event.at, f"{data['side']} write failed"
            return
        row = self._person(str(data["user"]))
        held = None if data.get("to") is None else str(data["to"])
        if data["side"] == "teams":
            row.ours_teams = held
        else:
            row.ours_connect = held
        row.last_at = event.at
        side = "Teams" if data["side"] == "teams" else "Connect"
        row.last_what = f"{side} ← {held}" if held else f"{side} cleared"

    # -- rendering ---------------------------------------------------------------------------

    def teams_arrival(self) -> str:
        """How Teams arrives, in one line (the header's second; rich markup)."""
        from rich.markup import escape

        interval = f"{self.options.interval:g}"
        chosen = self.interval_chosen
        budget = ""
        if chosen and chosen.get("interval_s") is not None:
            interval = f"{float(chosen['interval_s']):g}"
            share = chosen.get("budget_share")
            if isinstance(share, (int, float)):
                budget = f", auto: {share:.0%} of Graph's presence budget"
        n = self.notifications
        if not n or n.get("mode") != "notifications":
            why = f" ({escape(str(n['reason']))})" if n and n.get("reason") else ""
            return f"Teams polled every {interval} s{budget}{why}"
        covered, matched = n.get("users_covered", 0), n.get("users_matched", 0)
        poll = f"{n.get('poll_interval_s', self.options.interval):g}"
        subs = n.get("subscriptions", 0)
        line = f"Teams by change notifications ({subs} subscription{'s' * (subs != 1)}): "
        if matched and covered >= matched:
            line += f"all {matched} people covered, reconciled every {poll} s"
        else:
            line += (
                f"{covered} of {matched} people covered, polling every {interval} s for the "
                f"rest{budget}"
            )
        if n.get("received"):
            line += f" · {n['received']} received"
        return line

    def renewals_line(self) -> str | None:
        from rich.markup import escape

        items = self.last_cycle.get("next_renewals") or []
        parts = []
        for item in items[:2]:
            side = {"teams": "Teams", "connect": "Connect"}.get(item.get("side", ""), "")
            what = f"our {side} session" if side else "our session"
            parts.append(f"{what} for {escape(item['user'])} at {item['at'][11:19]}")
        n = self.notifications or {}
        if n.get("next_renewal"):
            parts.append(f"the Graph subscription at {str(n['next_renewal'])[11:19]}")
        if not parts:
            return None
        more = len(items) - 2
        return "renew next: " + "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")

    def progress_line(self) -> str | None:
        p = self.progress
        if not p:
            return None
        done, total = int(p.get("done", 0)), int(p.get("total", 0) or 0)
        share = f" ({100 * done // total}%)" if total else ""
        line = f"{p.get('phase', 'reading')}: {done:,} of {total:,}{share}"
        if p.get("rate_per_min"):
            line += f" · {float(p['rate_per_min']):,.0f}/min"
        eta = p.get("eta_s")
        if eta is not None:
            eta = float(eta)
            left = f"{eta / 60:.0f} min" if eta >= 90 else f"{eta:.0f} s"
            line += f" · about {left} left"
        return line

    def _outage_now(self) -> str | None:
        """The outage line, its "retrying in N s" counted at this redraw."""
        from datetime import UTC

        from presencectl.sync.resilience import outage_text

        if self._outage_data is None:
            return self.outage
        return outage_text(self._outage_data, datetime.now(UTC)) or self.outage

    def _writes_per_minute(self) -> int:
        horizon = time.monotonic() - 60
        return sum(1 for t in self.write_times if t >= horizon)

    def _header_lines(self) -> list[str]:
        from rich.markup import escape

        c = self.last_cycle
        state = "[bold yellow]stopped[/]" if self.stopped else "[green]watching[/]"
        direction = self.options.direction.value
        lines = [
            f"[bold]presencectl sync --watch[/] · {escape(self.profile_name)} · {state} · "
            f"direction {direction} · Connect by its feed ({escape(self.feed_state)})",
            self.teams_arrival(),
            f"matched {c.get('matched', '…')} · cycles {c.get('cycle', 0)} · "
            f"writes/min {self._writes_per_minute()} · sessions held {c.get('sessions', 0)}",
            f"written {self.counts['written']} · cleared {self.counts['cleared']} · "
            f"failed {self.counts['failed']} · throttled {c.get('throttled', 0)} "
            f"({c.get('throttle_wait_s', 0)} s waited)",
        ]
        progress = self.progress_line()
        if progress:
            lines.append(escape(progress))
        renewals = self.renewals_line()
        if renewals:
            lines.append(renewals)
        if self.outage:
            lines.append(f"[bold red]{escape(self._outage_now() or '')}[/]")
        return lines

    def _render(self) -> Any:
        from rich.console import Group
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        console = self._console or output.stderr_console()
        resized = _follow_the_terminal(console)
        if resized and self._live is not None:
            # The terminal reflowed the last frame at its old width: the lines the Live would
            # move up over are no longer the frame's. Start this frame on a clean screen.
            console.file.write("\x1b[2J\x1b[H")
        width, height = console.size.width, console.size.height
        header = []
        for line in self._header_lines():
            text = Text.from_markup(line, overflow="ellipsis")
            text.no_wrap = True  # one line each, cut at the edge: the height stays known
            header.append(text)
        side_by_side = width >= SIDE_BY_SIDE_MIN_WIDTH
        # The frame stays SPARE_LINES short of the terminal: a line printed above it (the
        # "stopping…" note) or the cursor's own line must not scroll its top off the screen,
        # where no redraw can reach it (a stale header after Ctrl-C).
        budget = height - SPARE_LINES - len(header) - 1  # the header and the blank after it
        if side_by_side:  # grid: title, header row, rows, caption; log: title, rows
            grid_rows = max(budget - 3, 2)
            log_rows = grid_rows + 2
        else:  # grid as above, a blank, then the log
            room = max(budget - 6, 4)
            grid_rows = max(room // 2, 2)
            log_rows = max(room - grid_rows, 2)

        grid = Table(title="People (latest change first)", expand=True, pad_edge=False,
                     show_edge=False, box=None, title_justify="left")  # fmt: skip
        for name, ratio in (("Person", 3), ("Teams", 2), ("Connect", 2), ("We hold", 2),
                            ("Last change", 3)):  # fmt: skip
            grid.add_column(name, ratio=ratio, no_wrap=True, overflow="ellipsis")
        ordered = sorted(
            list(self.people.items()),  # one C-level copy: the watch adds people meanwhile
            key=lambda item: (item[1].last_at is not None, item[1].last_at or 0, item[0]),
            reverse=True,
        )
        for user, row in ordered[:grid_rows]:
            held = [f"T {row.ours_teams}" if row.ours_teams else "",
                    f"C {row.ours_connect}" if row.ours_connect else ""]  # fmt: skip
            last = f"{row.last_at:%H:%M:%S} {row.last_what}" if row.last_at else ""
            grid.add_row(escape(user), escape(row.teams), escape(row.connect),
                         escape(" ".join(h for h in held if h) or "—"), escape(last))  # fmt: skip
        if len(ordered) > grid_rows:
            grid.caption = f"{len(ordered) - grid_rows} more not shown (the terminal is full)"
        log = Table(title="Events", expand=True, show_header=False, box=None,
                    title_justify="left", pad_edge=False)  # fmt: skip
        log.add_column("at", min_width=8, no_wrap=True)
        log.add_column("what", no_wrap=True, overflow="ellipsis")
        for at, what in list(self.changes)[:log_rows]:  # copied first, as above
            log.add_row(at, escape(what))
        console._drawn = True  # a later size change is a resize of what is on screen
        if side_by_side:
            body = Table.grid(expand=True, padding=(0, 2))
            body.add_column(ratio=3)
            body.add_column(ratio=2)
            body.add_row(grid, log)
            return Group(*header, Text(""), body, Text(""))
        # The empty last line holds the cursor: a "^C" the terminal echoes there cannot wrap
        # a full-width line onto one more, which would leave the top line behind at the redraw.
        return Group(*header, Text(""), grid, Text(""), log, Text(""))


def _follow_the_terminal(console: Any) -> bool:
    """Size the console to the terminal as it is now (a resize shows at the next frame);
    True when the size changed after a frame was drawn.

    rich prefers ``$COLUMNS``/``$LINES`` when set, and a shell may have exported them at
    another size; a view that redraws in place must know the real size, or a frame wider or
    taller than the terminal scrolls and leaves stale lines behind."""
    import os

    try:
        size = os.get_terminal_size(console.file.fileno())
    except (AttributeError, OSError, ValueError):
        return False  # not a terminal (a recording console in a test): its own size stands
    if not (size.columns and size.lines):
        return False
    before = (console.size.width, console.size.height)
    console.size = (size.columns, size.lines)
    return before != (size.columns, size.lines) and getattr(console, "_drawn", False)
