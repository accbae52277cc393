"""Progress of long work: which phase a run is in, how far, how fast, how long is left.

Owns :class:`Progress`, which the engine feeds (``begin``, ``tick``, ``end``) and which turns that
into ``progress`` events ``{"phase", "done", "total", "rate_per_min", "eta_s"}`` for the CLI's
progress display (one-shot ``sync``, ``disable``) and the watch's live view. Phases:
``directory`` (both directories listed), ``adopt`` (sessions of an earlier life cleared,
sync/adopt.py), ``connect_reads``, ``graph_reads``, ``writes``.

Time left comes from the budget where one bounds the phase: Connect reads and writes go no
faster than the Connect request budget (connect/budget.py), so ``eta_s`` is what is left divided
by the slower of that rate and the rate measured so far; a phase without a budget uses the
measured rate alone. Events are emitted at most every ``EMIT_EVERY_S`` (and at each phase's
start and end), so a 10,000-user read costs a few hundred events, not 10,000.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EMIT_EVERY_S = 0.5
PHASES = ("directory", "adopt", "connect_reads", "graph_reads", "writes")

Emit = Callable[[dict[str, Any]], None]


@dataclass
class _Phase:
    name: str
    total: int
    budget_per_min: float  # 0: no budget bounds this phase
    started: float
    done: int = 0
    emitted_at: float = 0.0


class Progress:
    """The current phase of a run and how far it is (clock injectable for tests)."""

    def __init__(self, emit: Emit, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._emit = emit
        self._clock = clock
        self.phase: _Phase | None = None

    def begin(self, name: str, total: int, *, budget_per_min: float = 0.0) -> None:
        self.phase = _Phase(name, max(0, total), max(0.0, budget_per_min), self._clock())
        self._send(force=True)

    def tick(self, name: str, done: int = 1, *, absolute: bool = False) -> None:
        """``done`` more units of ``name`` (or ``done`` in all, ``absolute``); ignored when
        another phase is current (a write made during a read does not move the read's bar)."""
        phase = self.phase
        if phase is None or phase.name != name:
            return
        phase.done = min(phase.total, done if absolute else phase.done + done)
        self._send(force=phase.done >= phase.total)

    def end(self, name: str) -> None:
        phase = self.phase
        if phase is None or phase.name != name:
            return
        phase.done = phase.total
        self._send(force=True)
        self.phase = None

    def snapshot(self) -> dict[str, Any] | None:
        phase = self.phase
        if phase is None:
            return None
        elapsed = max(1e-9, self._clock() - phase.started)
        rate = phase.done / elapsed * 60.0 if phase.done else 0.0
        left = phase.total - phase.done
        paces = [r for r in (rate, phase.budget_per_min) if r > 0]
        pace = min(paces) if paces else 0.0  # never faster than the budget allows
        eta = left / pace * 60.0 if pace > 0 else None
        return {
            "phase": phase.name,
            "done": phase.done,
            "total": phase.total,
            "rate_per_min": round(rate, 1),
            "eta_s": None if eta is None else round(eta, 1),
        }

    def _send(self, *, force: bool) -> None:
        phase = self.phase
        if phase is None:
            return
        now = self._clock()
        if not force and now - phase.emitted_at < EMIT_EVERY_S:
            return
        phase.emitted_at = now
        snap = self.snapshot()
        if snap is not None:
            self._emit(snap)
