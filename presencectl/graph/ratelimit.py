"""The per-tenant Graph rate limiter and its metrics.

Owns: :class:`RateLimiter`, shared by every request of one
:class:`~presencectl.graph.client.GraphClient`, and :class:`ThrottleMetrics`, the numbers the
engine reports and the benchmarks print.

Two mechanisms, both per *scope* (``"presence"`` for presence endpoints, ``"other"`` for the rest):

- A budget for presence requests sized for Microsoft's documented ceiling (1,500 requests per
  30 s per app per tenant, configurable), counting ``$batch`` members one by one. It is kept as a
  sliding window (no more than ``limit`` units in any ``window`` seconds) rather than a classic
  token bucket: a bucket of capacity N refilled at N/window lets 2N through in one window after an
  idle period, which a server counting per window answers with 429s. The sliding window is the
  same ceiling without that burst, and it reaches 100 % of it in steady state.
- A global pause: after any 429 with ``Retry-After``, no request of that scope (batch or not)
  leaves before the time has passed. :meth:`RateLimiter.acquire` checks the pause last, right
  before it returns, so a 429 that arrives while a caller waits for budget still holds it back.
  Presence requests go one at a time (``presence_on_wire``, taken by every client sharing the
  limiter), so none is already on its way when a 429 arrives.
- Adaptation (the configured limit is an assumption, not a fact: the tenant's real ceiling may be
  lower, or other clients of the same app share it): the budget in use, ``ceiling``, starts at
  ``limit``. After a throttle episode (the first 429 of a pause), once the pause is over, the
  ceiling becomes what the server really accepted from us in the window before that 429 — the
  presence units sent in that span whose answers were not 429 (``note_answer``) — but never less
  than half the ceiling before (multiplicative decrease, bounded). Every full window without a
  429 it grows by 5 % (additive increase), up to ``limit``: it probes for a higher ceiling at the
  cost of a few 429s, which the pause absorbs. Against a server whose limit is the configured
  one, nothing changes.

The clock and sleep are injectable so tests run instantly (tests/test_graph_client.py). The
sources of the figures: docs/verification.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

PRESENCE = "presence"
OTHER = "other"

DEFAULT_LIMIT = 1500
DEFAULT_WINDOW_S = 30.0

Sleep = Callable[[float], Awaitable[None]]


def endpoint_scope(path: str) -> str:
    """``"presence"`` for presence endpoints (reads, writes), else ``"other"``."""
    p = path.lower()
    if "/presence" in p or "getpresencesbyuserid" in p:
        return PRESENCE
    return OTHER


@dataclass
class ThrottleMetrics:
    """What the client did and how long it waited (all times in seconds)."""

    requests: int = 0  # HTTP requests sent (a $batch counts once)
    presence_units: int = 0  # presence requests as Graph counts them (batch members one by one)
    throttled: int = 0  # 429s received, inside $batch answers included
    retries: int = 0  # requests or batch members sent again
    retry_after_wait_s: float = 0.0  # wall time under a Retry-After pause (overlaps counted once)
    bucket_wait_s: float = 0.0  # time held back by the presence budget
    backoff_wait_s: float = 0.0  # time spent in exponential backoff (network errors, 5xx)

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def copy(self) -> ThrottleMetrics:
        return ThrottleMetrics(**asdict(self))


class RateLimiter:
    """Budget + Retry-After pause for one app in one tenant."""

    def __init__(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        window: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        slack: float = 0.05,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.ceiling = limit  # the budget in use: the limit as learnt from 429s
        self.window = window
        # Requests reach the server a little after we count them: a small slack keeps our window
        # at least as long as the server's.
        self._span = window + slack
        self.clock = clock
        self.sleep = sleep
        self.metrics = ThrottleMetrics()
        self._sent: deque[tuple[float, int]] = deque()  # (time, units) inside the current window
        self._in_window = 0
        self._pause_until: dict[str, float] = {}
        self._lock = asyncio.Lock()
        # One presence request (single, or a $batch with presence members) on the wire at a time
        # for every client sharing this limiter: a request already sent when a 429 reaches us
        # cannot be called back, so one sent beside it would land inside that Retry-After.
        self.presence_on_wire = asyncio.Lock()
        self._accepted: deque[tuple[float, int]] = deque()  # (sent at, units not refused)
        self._episode_at: float | None = None  # the first 429 of a throttle episode, to learn
        self._clean_since = clock()  # no 429 since then

    # -- adaptation --------------------------------------------------------------------------
    def note_answer(self, sent_at: float, accepted_units: int) -> None:
        """Presence units of a request sent at ``sent_at`` that the server did not refuse."""
        if accepted_units > 0:
            self._accepted.append((sent_at, accepted_units))

    def _adapt(self, now: float) -> None:
        while self._accepted and self._accepted[0][0] <= now - 3 * self._span:
            self._accepted.popleft()
        if self._episode_at is not None:
            at, self._episode_at = self._episode_at, None
            observed = sum(n for t, n in self._accepted if at - self._span < t <= at)
            self.ceiling = max(1, min(self.limit, max(observed, self.ceiling // 2)))
            self._clean_since = now
        elif self.ceiling < self.limit and now - self._clean_since >= self._span:
            self.ceiling = min(self.limit, self.ceiling + max(1, self.ceiling // 20))
            self._clean_since = now

    # -- the pause ---------------------------------------------------------------------------
    def note_retry_after(self, scope: str, seconds: float) -> None:
        """Hold back every request of ``scope`` for ``seconds`` from now."""
        now = self.clock()
        until = now + max(0.0, seconds)
        previous = self._pause_until.get(scope, 0.0)
        if scope == PRESENCE:
            self._clean_since = now
            if now >= previous and self._episode_at is None:
                self._episode_at = now  # a new throttle episode: learn from it after the pause
        if until > previous:
            # Wall time paused, counted once however many requests wait through it.
            self.metrics.retry_after_wait_s += until - max(now, previous)
            self._pause_until[scope] = until

    def paused_for(self, scope: str) -> float:
        """Seconds left in the pause of ``scope`` (0 when none)."""
        return max(0.0, self._pause_until.get(scope, 0.0) - self.clock())

    async def _wait_pause(self, scope: str) -> None:
        while (left := self.paused_for(scope)) > 0:
            await self.sleep(left)

    # -- the budget --------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0][0] <= now - self._span:
            self._in_window -= self._sent.popleft()[1]

    def _budget_wait(self, units: int, now: float) -> float:
        """Seconds until ``units`` more fit in the window (0 when they fit now)."""
        self._expire(now)
        need = self._in_window + min(units, self.ceiling) - self.ceiling
        if need <= 0:
            return 0.0
        freed = 0
        for at, n in self._sent:
            freed += n
            if freed >= need:
                return max(0.0, at + self._span - now)
        return 0.0  # unreachable: the window holds more than `need`

    async def acquire(self, units: int = 1, scope: str = PRESENCE) -> float:
        """Wait until a request worth ``units`` presence requests may leave now, and count it;
        return that moment (for :meth:`note_answer`).

        ``units`` is 0 for requests outside the presence budget (they still honour the pause).
        """
        if units <= 0:
            await self._wait_pause(scope)
            return self.clock()
        async with self._lock:  # FIFO: callers leave in the order they asked
            while True:
                await self._wait_pause(scope)
                self._adapt(self.clock())
                wait = self._budget_wait(units, self.clock())
                if wait > 0:
                    await self.sleep(wait)
                    self.metrics.bucket_wait_s += wait
                    continue  # and check the pause again: a 429 may have come meanwhile
                now = self.clock()
                self._sent.append((now, units))
                self._in_window += units
                self.metrics.presence_units += units
                return now
