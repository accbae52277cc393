"""The sync engine: runs cycles (one-shot or watch) and ``disable``, and reports what it did.

``SyncEngine`` is what the CLI, the demo and the benches drive (wired to a profile by
``sync/service.py``'s ``engine_for``). It is assembled from one base per responsibility, each in
its own module; this module owns the assembly and the one-shot run (``run_once``):

- ``sync/results.py``: ``EngineOptions``, ``SyncResult``, ``ActionReport``, ``SyncEvent``,
  ``DisableResult`` (re-exported here, the names every caller imports from this module);
- ``sync/cycle.py``: the engine's state and one cycle: directories → match → reads → plan →
  writes → state + audit, a chunk of pairs at a time;
- ``sync/writes.py``: the writes on the wire and each one's outcome (ok, gone, refused, uncertain);
- ``sync/watch.py``: the watch loop: polls, Connect feed events, outages waited out;
- ``sync/notify_glue.py``: Teams change notifications between polls;
- ``sync/disable.py``: ``disable``.

Crash safety: the planned states are saved before a batch is sent and the real outcome after, so
a restart neither loses nor repeats writes (``sync/state.py``). Tokens: Graph reads, writes and
the directory use the app token; the sync user's delegated token owns the Teams change-notification
subscriptions (delegated only). Both Graph clients share one rate limiter (the limit is per app
and tenant).
"""

from __future__ import annotations

import asyncio
import time

from presencectl.sync.cycle import WRITE_CHUNK_PAIRS
from presencectl.sync.disable import Disabler
from presencectl.sync.results import (
    ActionReport,
    Clock,
    DisableResult,
    EngineOptions,
    EventCallback,
    Sleep,
    SyncEvent,
    SyncResult,
    utc_now,
)
from presencectl.sync.watch import OUTAGE_META, WatchLoop


class SyncEngine(WatchLoop, Disabler):
    """Drives cycles over two live services and a state store: ``run_once``, ``watch``
    (``sync/watch.py``) and ``disable`` (``sync/disable.py``); the constructor is
    ``SyncCycle``'s (``sync/cycle.py``)."""

    def _chunk_pairs(self) -> int:
        return WRITE_CHUNK_PAIRS  # read here, at each use, so that it can be tuned (tests do)

    async def run_once(self, stop: asyncio.Event | None = None) -> SyncResult:
        """One full cycle: directory, both sides read, plan, write, persist.

        ``stop`` set (SIGINT/SIGTERM): the writes already sent are finished and persisted, no
        new ones start, and the result says ``interrupted``."""
        started = time.monotonic()
        result = self._new_result()
        self._stop = stop
        self._start_run("once")
        outcome = "error"
        try:
            await self.refresh_directory(force=True)
            self._fill_directory_counts(result)
            if not self._stopping():
                await self.release_unmatched(result)
            if not self._stopping():
                await self.cycle(result)
                result.cycles = 1
            result.interrupted = self._stopping()
            outcome = "partial" if result.failed else "ok"
            outcome = "interrupted" if result.interrupted else outcome
        finally:
            result.duration_s = time.monotonic() - started
            result.throttled, result.throttle_wait_s = self._throttle()
            self._finish_run(result, outcome)
            self._record_budget()
        return result


__all__ = [
    "OUTAGE_META",
    "WRITE_CHUNK_PAIRS",
    "ActionReport",
    "Clock",
    "DisableResult",
    "EngineOptions",
    "EventCallback",
    "Sleep",
    "SyncEngine",
    "SyncEvent",
    "SyncResult",
    "utc_now",
]
