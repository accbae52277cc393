"""The progress display of long one-shot work (``sync``, ``disable``) on stderr.

Owns :class:`ProgressDisplay`: it renders the engine's ``progress`` events (sync/progress.py:
phase, done/total, rate, time left computed from the budget) as a rich progress bar on stderr —
only on a terminal, never under ``-q``, and only once the work has run for ``SHOW_AFTER_S``
(a run that ends sooner shows nothing). Stdout is never touched, so a table or an ``-o json``
document stays exactly what it was. The watch renders the same events in its live view.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from presencectl.cli.context import AppContext

SHOW_AFTER_S = 2.0
PHASE_LABELS = {
    "directory": "directories",
    "adopt": "clearing old sessions",
    "connect_reads": "Connect reads",
    "graph_reads": "Teams reads",
    "writes": "writes",
}


def _eta(eta_s: float | None) -> str:
    if eta_s is None:
        return "time left unknown"
    seconds = round(eta_s)
    if seconds >= 3600:
        return f"~{seconds // 3600} h {seconds % 3600 // 60:02d} min left"
    if seconds >= 60:
        return f"~{seconds // 60} min {seconds % 60:02d} s left"
    return f"~{seconds} s left"


class ProgressDisplay:
    """A progress bar on stderr fed by engine events (only on a terminal, unless -q)."""

    def __init__(
        self, app: AppContext, *, enabled: bool | None = None, clock: Any = time.monotonic
    ) -> None:
        self._enabled = app.verbosity >= 0 and sys.stderr.isatty() if enabled is None else enabled
        self._clock = clock
        self._started = clock()
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self.shown = 0  # progress events rendered (tests count them)

    def on_event(self, event: Any) -> None:
        if event.type == "progress":
            self.update(event.data)

    def update(self, data: dict[str, Any]) -> None:
        if not self._enabled or self._clock() - self._started < SHOW_AFTER_S:
            return
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            from presencectl import output

            self._bar = Progress(
                TextColumn("{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[eta]}"),
                console=output.stderr_console(),
                transient=True,
            )
            self._bar.start()
        phase = str(data["phase"])
        fields = {
            "rate": f"{data['rate_per_min']:g}/min" if data.get("rate_per_min") else "",
            "eta": _eta(data.get("eta_s")) if data["done"] < data["total"] else "done",
        }
        if phase not in self._tasks:
            label = PHASE_LABELS.get(phase, phase)
            self._tasks[phase] = self._bar.add_task(label, total=data["total"], **fields)
        self._bar.update(self._tasks[phase], completed=data["done"], total=data["total"], **fields)
        self.shown += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
