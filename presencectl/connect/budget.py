"""The Connect request budget: at most N requests started in any minute, per client.

A third party reports about 250 requests per minute per Extend API client (unverified,
docs/verification.md). The budget is a token bucket whose burst plus one minute of refill never
exceeds N, so a server that counts requests in any sliding 60 s window never sees more than N.
``per_minute <= 0`` switches the budget off. Clock and sleep are injected for tests.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

BURST_SHARE = 1 / 6  # a sixth of the minute's budget may go at once (a cold start)
MAX_IN_FLIGHT = 32


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
        self.capacity = max(1.0, math.floor(self.per_minute * BURST_SHARE))
        # burst + 60 s of refill == per_minute: no sliding minute ever holds more than that
        self.rate = max(0.0, (self.per_minute - self.capacity) / 60.0)
        if self.per_minute and self.rate == 0:
            self.rate = self.per_minute / 60.0
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._updated = clock()
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    @property
    def max_in_flight(self) -> int:
        """Concurrency that fits the budget: a couple of seconds' worth of requests in flight."""
        if not self.enabled:
            return MAX_IN_FLIGHT
        return max(2, min(MAX_IN_FLIGHT, math.ceil(self.per_minute / 60.0) * 2))

    async def acquire(self) -> float:
        if not self.enabled:
            return 0.0
        async with self._lock:  # waiters queue in order; one sleeps at a time
            now = self._clock()
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            wait = (1.0 - self._tokens) / self.rate
            await self._sleep(wait)
            self._tokens = 0.0
            self._updated = max(self._clock(), now + wait)
            return wait
