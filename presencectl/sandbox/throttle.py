"""Presence throttling and fault injection for the sandbox's Graph and Connect routes.

Owns:
- `SlidingWindow`: per client (app id, tenant id) a sliding window of accepted presence requests;
  over the limit (default 1,500 per 30 s, ``world.faults.throttle_per_30s`` /
  ``throttle_window``) the request gets 429 + ``Retry-After`` (whole seconds, >= 1) + a Graph error
  body ``TooManyRequests``. A request that comes while the client's Retry-After is still running is
  counted in ``world.stats.in_retry_after_window`` and refused again, as Graph does.
- `check_presence_throttle(world, claims)`: the call every presence route (and every ``$batch``
  member, one by one) makes before doing its work.
- `inject_faults(world, request)`: latency, dropped connections and 500/503/504 answers
  (503 with Retry-After) according to ``world.faults``.

Time is the world's clock, so tests can advance past a Retry-After without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from typing import TYPE_CHECKING, Any

from presencectl.sandbox.errors import GraphError

if TYPE_CHECKING:
    from starlette.requests import Request

    from presencectl.sandbox.world import Claims, World

log = logging.getLogger(__name__)

_STATE_KEY = "presence_windows"
# Requests arriving this soon after a 429 were already in flight when it was sent.
IN_FLIGHT_GRACE = 0.25
_fault_random = random.Random()


class ClientWindow:
    """Accepted request times of one client and the end of its current Retry-After."""

    __slots__ = ("accepted", "retry_origin", "retry_set_at", "retry_until")

    def __init__(self) -> None:
        self.accepted: deque[float] = deque()
        self.retry_until = 0.0
        self.retry_origin: object = None
        self.retry_set_at = 0.0


class SlidingWindow:
    """At most `limit` accepted requests per `window` seconds for each client key."""

    def __init__(self) -> None:
        self.clients: dict[Any, ClientWindow] = {}

    def admit(
        self, key: Any, now: float, limit: int, window: float, origin: object = None
    ) -> tuple[int | None, bool]:
        """(None, _) when admitted, else (Retry-After seconds, _); the flag says the request came
        while a Retry-After given earlier was still running.

        ``origin`` names the HTTP request a ``$batch`` member came in: members of the batch that
        got the first 429 were sent before the client could see it, so they do not count as
        coming inside the Retry-After window (they are refused all the same).
        """
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = ClientWindow()
        inside_retry = now < client.retry_until
        if inside_retry and (
            (origin is not None and origin == client.retry_origin)
            or now - client.retry_set_at < IN_FLIGHT_GRACE
        ):
            # Sent before the client could have seen the 429: refused, but not held against it.
            return max(1, math.ceil(client.retry_until - now)), False
        accepted = client.accepted
        horizon = now - window
        while accepted and accepted[0] <= horizon:
            accepted.popleft()
        if inside_retry:
            return max(1, math.ceil(client.retry_until - now)), True
        if limit > 0 and len(accepted) >= limit:
            wait = max(1, math.ceil(accepted[0] + window - now))
            client.retry_until = now + wait
            client.retry_origin = origin
            client.retry_set_at = now
            return wait, False
        accepted.append(now)
        return None, False


    def refuse_all(self, key: Any, now: float, limit: int, window: float, count: int) -> int | None:
        """Would ``count`` more requests exceed the limit? Then start a Retry-After (returned,
        seconds) and admit none of them; else None and nothing is counted (each is admitted on
        its own afterwards)."""
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = ClientWindow()
        if now < client.retry_until:
            return max(1, math.ceil(client.retry_until - now))
        accepted = client.accepted
        horizon = now - window
        while accepted and accepted[0] <= horizon:
            accepted.popleft()
        if limit <= 0 or len(accepted) + count <= limit:
            return None
        oldest = accepted[0] if accepted else now
        wait = max(1, math.ceil(oldest + window - now))
        client.retry_until = now + wait
        client.retry_origin = None
        client.retry_set_at = now
        return wait


def check_batch_throttle(world: World, claims: Claims, presence_members: int) -> int | None:
    """For a ``$batch`` refused as a whole (fault ``batch_envelope_status`` 429): the Retry-After
    when its presence members would not all fit under the limit, else None (nothing counted)."""
    if presence_members <= 0:
        return None
    wait = _windows(world).refuse_all(
        (claims.appid, claims.tid),
        world.clock.now(),
        int(world.faults.throttle_per_30s),
        float(world.faults.throttle_window),
        presence_members,
    )
    if wait is not None:
        world.stats.throttled += 1
    return wait


def _windows(world: World) -> SlidingWindow:
    windows = world.throttle_state.get(_STATE_KEY)
    if windows is None:
        windows = world.throttle_state[_STATE_KEY] = SlidingWindow()
    return windows


def check_presence_throttle(world: World, claims: Claims, origin: object = None) -> None:
    """Count one presence request of the token's (app, tenant); raise a 429 GraphError if over.

    ``origin``: the outer request of a ``$batch`` member (None for a plain request).
    """
    now = world.clock.now()
    retry_after, inside_retry = _windows(world).admit(
        (claims.appid, claims.tid),
        now,
        int(world.faults.throttle_per_30s),
        float(world.faults.throttle_window),
        origin,
    )
    if inside_retry:
        world.stats.in_retry_after_window += 1
    if retry_after is None:
        return
    world.stats.throttled += 1
    raise GraphError(
        429,
        "TooManyRequests",
        "Too many requests. The application has exceeded its presence request limit; "
        "retry after the time given in the Retry-After header.",
        headers={"Retry-After": str(retry_after)},
    )


class DroppedConnection(Exception):
    """The fault injector dropped the client's connection: no answer must be sent."""


async def inject_faults(world: World, request: Request, *, in_batch: bool = False) -> None:
    """Apply ``world.faults`` to one request: latency, a dropped connection, or a 5xx GraphError.

    A dropped connection aborts the TCP connection (the client sees a network error) and raises
    `DroppedConnection`; inside ``$batch`` (no connection of its own) drops do not apply.
    """
    faults = world.faults
    if faults.latency_ms > 0:
        await asyncio.sleep(faults.latency_ms / 1000.0)
    if not in_batch and faults.drop_rate > 0 and _fault_random.random() < faults.drop_rate:
        world.stats.faults_injected += 1
        await drop_connection(request)
        raise DroppedConnection()
    if faults.error_rate > 0 and _fault_random.random() < faults.error_rate:
        world.stats.faults_injected += 1
        status = _fault_random.choice((500, 503, 504))
        if status == 503:
            raise GraphError(
                503,
                "serviceNotAvailable",
                "The service is temporarily unavailable. Retry after the time given.",
                headers={"Retry-After": "1"},
            )
        if status == 504:
            raise GraphError(504, "gatewayTimeout", "The gateway timed out.")
        raise GraphError(500, "generalException", "An unexpected error occurred.")


async def drop_connection(request: Request) -> bool:
    """Abort the request's TCP connection under uvicorn. False if the transport is unreachable."""
    cycle = getattr(request.receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return False
    transport.abort()
    # Let the protocol see connection_lost so uvicorn sends nothing more on this cycle.
    for _ in range(5):
        await asyncio.sleep(0)
        if getattr(cycle, "disconnected", False):
            break
    return True
