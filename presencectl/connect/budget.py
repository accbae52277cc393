"""The Connect request budget: at most N requests started in any minute, per client, shared by
reads and writes, writes first.

A third party reports about 250 requests per minute per Extend API client (unverified,
docs/verification.md). At that rate the budget, not CPU, bounds everything presencectl does on
Connect, so it is spent by priority:

- ``URGENT``: writes (set and clear our session) and the reads a write needs (the current Connect
  state of a user whose Teams status just changed);
- ``BULK``: full reads (a one-shot's, a watch's first or after a reconnect), adoption's clears of
  a fresh state, ``disable``'s sweep.

Every request waits in one queue ordered by (priority, arrival): when a slot frees, the oldest
urgent request takes it; bulk requests fill what is left. Bulk work never holds slots ahead of
time (a slot is taken only when its request leaves), so a write that arrives during a full read
leaves with the next slot: within ``60 / N`` seconds plus at most a second's pacing.

Two rules together give the slots: a **sliding window** (no more than N starts in any
``60 s + WINDOW_SLACK_S``, the slack covering the time a request takes to reach the server, so a
server counting arrivals in any 60 s never sees more than N) and **pacing** (a token bucket of
N / 60 per second holding at most one second's worth), so the budget is spread over the minute
instead of spent in the first second and then absent for the rest of it. In steady state this
reaches N per minute: a long run takes requests / N minutes (the budget-bound minimum), not the
5/6 of it an earlier burst-then-refill bucket gave.

``per_minute <= 0`` switches the budget off (testing only). Clock and sleep are injected for
tests. :meth:`RequestBudget.snapshot` is what ``status`` and the progress display report: the
rate, the queue per priority and how long its oldest request has waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import math
from collections import deque
from collections.abc import Awaitable, Callable
from enum import IntEnum
from typing import Any

MAX_IN_FLIGHT = 32
WINDOW_S = 60.0
WINDOW_SLACK_S = 0.5  # our clock starts a request a little before the server counts it
PACING_BURST_S = 1.0  # the bucket holds at most this many seconds' worth of the rate


class Priority(IntEnum):
    """Who goes first when the budget is short (lower goes first)."""

    URGENT = 0  # writes, and the reads a write needs
    BULK = 1  # full reads, sweeps


# The priority of requests made by the current task when the caller names none: a task that
# does bulk work (a watch's full read, sync/fullread.py) sets BULK for all it sends.
current_priority: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "connect_priority", default=Priority.URGENT
)


class RequestBudget:
    """Paces request starts to ``per_minute``; ``acquire`` waits for a slot, returns the wait."""

    def __init__(
        self,
        per_minute: float,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.per_minute = max(0.0, float(per_minute))
        self.rate = self.per_minute / WINDOW_S  # requests a second
        self.limit = math.floor(self.per_minute)
        self.capacity = max(1.0, math.floor(self.rate * PACING_BURST_S))
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._updated = clock()
        self._sent: deque[float] = deque()  # start times inside the window
        self._seq = itertools.count()
        # (priority, arrival order, queued at, future): the dispatcher hands out slots in order
        self._waiters: list[tuple[int, int, float, asyncio.Future[None]]] = []
        self._dispatcher: asyncio.Task[None] | None = None
        self.granted = {p: 0 for p in Priority}
        self.waited_s = {p: 0.0 for p in Priority}

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    @property
    def max_in_flight(self) -> int:
        """Concurrency that fits the budget: a couple of seconds' worth of requests in flight."""
        if not self.enabled:
            return MAX_IN_FLIGHT
        return max(2, min(MAX_IN_FLIGHT, math.ceil(self.rate) * 2))

    def minimum_s(self, requests: int) -> float:
        """The budget-bound minimum: how long ``requests`` take at the full rate (0 off)."""
        return requests / self.rate if self.enabled else 0.0

    # -- slots ----------------------------------------------------------------------------------
    def _next_slot_in(self, now: float) -> float:
        """Seconds until a request may start (0: now)."""
        while self._sent and self._sent[0] <= now - (WINDOW_S + WINDOW_SLACK_S):
            self._sent.popleft()
        tokens = min(self.capacity, self._tokens + max(0.0, now - self._updated) * self.rate)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
        if self.limit >= 1 and len(self._sent) >= self.limit:
            # the oldest start inside the window must leave it first
            oldest = self._sent[len(self._sent) - self.limit]
            wait = max(wait, oldest + WINDOW_S + WINDOW_SLACK_S - now)
        # a microsecond is "now": a float clock far from zero cannot advance by less
        return wait if wait > 1e-6 else 0.0

    def _take(self, now: float) -> None:
        self._tokens = min(self.capacity, self._tokens + max(0.0, now - self._updated) * self.rate)
        self._tokens -= 1.0
        self._updated = now
        self._sent.append(now)

    async def acquire(self, priority: Priority = Priority.BULK) -> float:
        """Wait for a slot (urgent requests before bulk ones, each in arrival order); returns
        the seconds waited."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        if not self._waiters and self._next_slot_in(now) == 0.0:
            self._take(now)
            self.granted[priority] += 1
            return 0.0
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (int(priority), next(self._seq), now, future))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.ensure_future(self._dispatch())
        await future
        waited = max(0.0, self._clock() - now)
        self.waited_s[priority] += waited
        return waited

    async def _dispatch(self) -> None:
        """Hand each slot, as it comes, to the first waiter in (priority, arrival) order."""
        while self._waiters:
            wait = self._next_slot_in(self._clock())
            if wait > 0:
                await self._sleep(wait)
                continue
            while self._waiters:
                priority, _, _, future = heapq.heappop(self._waiters)
                if future.done():  # its caller was cancelled
                    continue
                self._take(self._clock())
                self.granted[Priority(priority)] += 1
                future.set_result(None)
                break
            await asyncio.sleep(0)  # let the request leave before the next slot is given

    def now(self) -> float:
        return self._clock()

    def recent_starts(self) -> list[float]:
        """The starts still inside the window (this budget's clock)."""
        self._next_slot_in(self._clock())  # drops the ones that left it
        return list(self._sent)

    def preload(self, starts: list[float]) -> None:
        """Count starts made by an earlier process of this client (this budget's clock): the
        server's window still holds them, so a run that follows another within a minute
        continues its budget instead of starting with a full one."""
        now = self._clock()
        inside = [t for t in starts if now - (WINDOW_S + WINDOW_SLACK_S) < t <= now]
        merged = sorted([*self._sent, *inside])
        self._sent = deque(merged[-self.limit :] if self.limit >= 1 else merged)

    async def aclose(self) -> None:
        task, self._dispatcher = self._dispatcher, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- what status and progress show ----------------------------------------------------------
    def queued(self, priority: Priority) -> int:
        return sum(1 for p, _, _, f in self._waiters if p == priority and not f.done())

    def oldest_wait_s(self, priority: Priority) -> float:
        now = self._clock()
        ages = [now - at for p, _, at, f in self._waiters if p == priority and not f.done()]
        return max(ages, default=0.0)

    def snapshot(self) -> dict[str, Any]:
        """The budget as ``status`` shows it."""
        return {
            "per_minute": self.per_minute,
            "used_last_minute": self.used_last_minute(),
            "queued_urgent": self.queued(Priority.URGENT),
            "queued_bulk": self.queued(Priority.BULK),
            "oldest_urgent_wait_s": round(self.oldest_wait_s(Priority.URGENT), 1),
            "sent_urgent": self.granted[Priority.URGENT],
            "sent_bulk": self.granted[Priority.BULK],
        }

    def used_last_minute(self) -> int:
        cutoff = self._clock() - WINDOW_S
        return sum(1 for t in self._sent if t > cutoff)
