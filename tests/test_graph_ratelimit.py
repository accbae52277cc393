"""RateLimiter: the presence budget, the Retry-After pause, and the client never sending inside it.

A fake Graph that throttles like the sandbox (sliding window per app, $batch members counted one
by one; a request sent after a 429 answer was delivered and before its Retry-After ended is a
violation) runs on a FakeClock.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from typing import Any

import httpx
import pytest
from fakes import FakeClock

from presencectl.graph.client import GraphClient
from presencectl.graph.presence import PresenceWrite, set_presence, set_presences_batch
from presencectl.graph.ratelimit import OTHER, PRESENCE, RateLimiter, endpoint_scope
from presencectl.graph.tokens import AccessToken


def token(force_refresh: bool = False) -> AccessToken:
    return AccessToken("t", 4_000_000_000.0)


def test_budget_never_exceeds_limit_in_any_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limit=20, window=10.0, clock=clock, sleep=clock.sleep, slack=0.0)
    sent: list[float] = []

    async def one(units: int) -> None:
        await limiter.acquire(units)
        sent.extend([clock()] * units)

    async def go() -> None:
        await asyncio.gather(*(one(1 + i % 3) for i in range(60)))

    asyncio.run(go())
    assert len(sent) == sum(1 + i % 3 for i in range(60)) == 120
    for i, t in enumerate(sent):
        in_window = sum(1 for u in sent[: i + 1] if u > t - 10.0)
        assert in_window <= 20
    # 120 units at 20 per 10 s: the last leaves after 5 full windows, not much later.
    assert 50.0 <= sent[-1] - sent[0] <= 60.0
    assert limiter.metrics.bucket_wait_s == pytest.approx(sent[-1] - sent[0])
    assert limiter.metrics.presence_units == 120


def test_pause_holds_every_request_of_the_scope() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)

    async def go() -> list[float]:
        start = clock()
        limiter.note_retry_after(PRESENCE, 4.0)
        limiter.note_retry_after(PRESENCE, 2.0)  # a shorter one does not shorten the pause
        await limiter.acquire(0, OTHER)  # another scope is not held
        other = clock() - start
        await limiter.acquire(1, PRESENCE)
        await limiter.acquire(0, PRESENCE)  # batch of non-counted members, same scope
        return [other, clock() - start]

    other, presence = asyncio.run(go())
    assert other == 0.0 and presence == pytest.approx(4.0)
    assert limiter.metrics.retry_after_wait_s == pytest.approx(4.0)


def test_a_429_arriving_during_a_budget_wait_still_holds_the_waiter() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limit=1, window=10.0, clock=clock, sleep=clock.sleep, slack=0.0)

    async def go() -> float:
        await limiter.acquire(1)
        start = clock()
        waiter = asyncio.create_task(limiter.acquire(1))
        await asyncio.sleep(0)  # the waiter is now sleeping for budget (10 s)
        limiter.note_retry_after(PRESENCE, 30.0)  # a 429 elsewhere, at the start of that wait
        await waiter
        return clock() - start

    assert asyncio.run(go()) >= 30.0


def test_endpoint_scope() -> None:
    assert endpoint_scope("/communications/getPresencesByUserId") == PRESENCE
    assert endpoint_scope("/users/abc/presence/setPresence") == PRESENCE
    assert endpoint_scope("/users?$select=id") == OTHER
    assert endpoint_scope("/applications") == OTHER


def test_metrics_dict() -> None:
    limiter = RateLimiter()
    limiter.metrics.bucket_wait_s = 1.23456
    d = limiter.metrics.as_dict()
    assert d["bucket_wait_s"] == 1.235 and d["throttled"] == 0
    assert limiter.metrics.copy() == limiter.metrics


class ThrottlingGraph:
    """setPresence and $batch with the sandbox's throttling rules, on a fake clock."""

    def __init__(self, clock: FakeClock, limit: int, window: float) -> None:
        self.clock, self.limit, self.window = clock, limit, window
        self.accepted: deque[float] = deque()
        self.retry_until = 0.0
        self.forced_429: set[int] = set()  # request numbers answered 429 regardless
        self.requests = 0
        self.writes = 0
        self.throttled = 0
        self.violations = 0
        self.delivered_until = 0.0  # the Retry-After of the last 429 answer delivered
        self._sent_inside = False  # the request being answered was sent inside it

    def admit(self) -> int | None:
        now = self.clock()
        while self.accepted and self.accepted[0] <= now - self.window:
            self.accepted.popleft()
        if self._sent_inside:
            self.violations += 1
        if now < self.retry_until:
            return max(1, math.ceil(self.retry_until - now))
        if len(self.accepted) >= self.limit:
            wait = max(1, math.ceil(self.accepted[0] + self.window - now))
            self.retry_until = now + wait
            return wait
        self.accepted.append(now)
        return None

    def member(self) -> tuple[int, dict[str, str]]:
        wait = self.admit()
        if wait is not None:
            self.throttled += 1
            return 429, {"Retry-After": str(wait)}
        self.writes += 1
        return 200, {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        # MockTransport answers synchronously: the request arrives when this starts, its answer
        # is delivered when this returns.
        self._sent_inside = self.clock() < self.delivered_until
        throttled_before = self.throttled
        response = self._answer(request)
        if self.throttled > throttled_before:
            self.delivered_until = max(self.delivered_until, self.retry_until)
        return response

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.requests in self.forced_429:
            self.violations += self._sent_inside
            self.throttled += 1
            self.retry_until = self.clock() + 3
            return httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {"code": "x"}})
        if request.url.path.endswith("/$batch"):
            answers = []
            for m in json.loads(request.content)["requests"]:
                status, headers = self.member()
                answers.append({"id": m["id"], "status": status, "headers": headers})
            return httpx.Response(200, json={"responses": answers})
        status, headers = self.member()
        return httpx.Response(status, headers=headers)


def _client(server: ThrottlingGraph, clock: FakeClock, limit: int, window: float) -> GraphClient:
    limiter = RateLimiter(limit=limit, window=window, clock=clock, sleep=clock.sleep)
    return GraphClient(
        "https://graph.test/v1.0",
        token,
        transport=httpx.MockTransport(server),
        limiter=limiter,
        now=clock,
    )


def test_matching_budget_writes_at_the_ceiling_without_a_single_429() -> None:
    clock = FakeClock()
    server = ThrottlingGraph(clock, limit=100, window=10.0)
    client = _client(server, clock, limit=100, window=10.0)
    writes = [PresenceWrite(f"u{i}", "Available", "Available") for i in range(1000)]

    async def go() -> list[Any]:
        start = clock()
        out = await set_presences_batch(client, "sess", writes)
        go.elapsed = clock() - start  # type: ignore[attr-defined]
        return out

    outcomes = asyncio.run(go())
    assert all(o.ok for o in outcomes)
    assert server.writes == 1000 and server.throttled == 0 and server.violations == 0
    # 1,000 writes at 100 per 10 s: 9 full windows of waiting at least, and close to it.
    elapsed: float = go.elapsed  # type: ignore[attr-defined]
    assert 90.0 <= elapsed <= 92.0
    assert client.metrics.bucket_wait_s == pytest.approx(elapsed, abs=0.01)


def test_a_client_over_the_server_limit_never_sends_inside_a_retry_after() -> None:
    clock = FakeClock()
    server = ThrottlingGraph(clock, limit=30, window=10.0)
    client = _client(server, clock, limit=1000, window=10.0)  # misconfigured: far too generous

    async def go() -> None:
        # Single requests only: a $batch crossing the limit gets its later members refused by
        # the server itself, which no client can prevent.
        await asyncio.gather(
            *(set_presence(client, f"u{i}", "s", "Available", "Available") for i in range(120))
        )

    asyncio.run(go())
    assert server.writes == 120
    assert server.throttled > 0 and server.violations == 0
    assert client.metrics.throttled == server.throttled
    assert client.metrics.retry_after_wait_s > 0


def test_a_429_on_one_request_pauses_concurrent_batches_and_singles() -> None:
    clock = FakeClock()
    server = ThrottlingGraph(clock, limit=10_000, window=30.0)
    server.forced_429 = {5, 9}
    client = _client(server, clock, limit=1500, window=30.0)
    writes = [PresenceWrite(f"u{i}", "Busy", "InACall") for i in range(200)]

    async def go() -> None:
        await asyncio.gather(
            set_presences_batch(client, "s", writes),
            *(set_presence(client, f"v{i}", "s", "Available", "Available") for i in range(20)),
        )

    asyncio.run(go())
    assert server.violations == 0
    assert server.writes == 220
    assert client.metrics.throttled == 2
    assert client.metrics.retry_after_wait_s >= 6.0


@pytest.mark.parametrize("server_limit", [100, 60])
def test_a_server_limit_below_the_assumed_one_is_learnt_not_fought(server_limit: int) -> None:
    """The client assumes 150 per 10 s; the server allows less. After the first throttle episode
    the limiter works at what the server really accepted: the writes take close to the least
    time the server allows, few 429s after the first episode, none sent inside a Retry-After."""
    clock = FakeClock()
    server = ThrottlingGraph(clock, limit=server_limit, window=10.0)
    client = _client(server, clock, limit=150, window=10.0)
    writes = [PresenceWrite(f"u{i}", "Available", "Available") for i in range(1000)]

    async def go() -> float:
        start = clock()
        outcomes = await set_presences_batch(client, "sess", writes)
        assert all(o.ok for o in outcomes)
        return clock() - start

    elapsed = asyncio.run(go())  # fake clock: the schedule, not the machine
    assert server.writes == 1000 and server.violations == 0
    least = (math.ceil(1000 / server_limit) - 1) * 10.0
    assert least / elapsed >= 0.85, (least, elapsed)
    # The first window oversends what the assumption exceeds the limit by; after that, only the
    # probes (5 % above the learnt ceiling, once a window). A limiter that kept assuming 150
    # would meet 150 - limit refusals in every window.
    windows = math.ceil(1000 / server_limit)
    assert server.throttled > 0  # the limit was really hit
    assert server.throttled <= (150 - server_limit) + math.ceil(server_limit / 20) * windows
    assert server_limit * 0.9 <= client.limiter.ceiling < 150
