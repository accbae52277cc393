"""Presence throttling and fault injection for the sandbox's Graph and Connect routes.

Owns:
- `SlidingWindow`: per client (app id, tenant id) a sliding window of accepted presence requests;
  over the limit (default 1,500 per 30 s, ``world.faults.throttle_per_30s`` /
  ``throttle_window``) the request gets 429 + ``Retry-After`` (whole seconds, >= 1) + a Graph error
  body ``TooManyRequests``; every request of that client is refused until the Retry-After ends.
- `RetryAfterDelivery`: the ASGI middleware that stamps each HTTP request's arrival and records
  when each 429 answer was *delivered* (its last byte handed to the connection). A request counts
  in ``world.stats.in_retry_after_window`` when it was sent after a 429 of its client had been
  delivered and before that Retry-After ended. There is no fixed grace: a request already on its
  way when the 429 went out is refused but never held against the client. "On its way" is
  observed, not assumed: at each delivery the middleware looks at every open connection, and one
  whose next request has already reached the sandbox (bytes waiting in the socket or the TLS
  layer, or parsed and not yet served — the event loop serves one thing at a time, so a request
  can wait behind a long ``$batch``) gives that request the delivery time as its arrival.
  ``$batch`` members carry the outer request's ticket: they arrived with it, and their 429s are
  delivered with its answer. Those looks read uvicorn's and h11's connection objects (not public
  API), so both are pinned in pyproject.toml to the versions the throttle tests pass on.
- `check_presence_throttle(world, claims, ticket)`: the call every presence route (and every
  ``$batch`` member, one by one) makes before doing its work.
- `inject_faults(world, request)`: latency, dropped connections and 500/503/504 answers
  (503 with Retry-After) according to ``world.faults``.

Time is the world's clock, so tests can advance past a Retry-After without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from presencectl.sandbox.errors import GraphError

if TYPE_CHECKING:
    from starlette.requests import Request

    from presencectl.sandbox.world import Claims, World

log = logging.getLogger(__name__)

_STATE_KEY = "presence_windows"
TICKET = "presencectl.throttle_ticket"  # the scope key of an HTTP request's Ticket
CONNECTIONS = "connections"  # world.extra: a WeakSet of the server's connection protocols
_fault_random = random.Random()


class Refusal:
    """One 429 answered: when its Retry-After ends, and when the answer was delivered."""

    __slots__ = ("delivered_at", "until")

    def __init__(self, until: float) -> None:
        self.until = until
        self.delivered_at: float | None = None  # None while the answer is not out yet


class Ticket:
    """One HTTP request as the throttle sees it: its arrival, and the 429s its answer carries."""

    __slots__ = ("arrived", "refusals")

    def __init__(self, arrived: float) -> None:
        self.arrived = arrived
        self.refusals: list[Refusal] = []

    def delivered(self, now: float) -> None:
        for refusal in self.refusals:
            refusal.delivered_at = now
        self.refusals.clear()


class ClientWindow:
    """Accepted request times of one client, the end of its current Retry-After, and the 429s
    it was given that may still be running."""

    __slots__ = ("accepted", "refusals", "retry_until")

    def __init__(self) -> None:
        self.accepted: deque[float] = deque()
        self.retry_until = 0.0
        self.refusals: deque[Refusal] = deque()


class SlidingWindow:
    """At most `limit` accepted requests per `window` seconds for each client key."""

    def __init__(self) -> None:
        self.clients: dict[Any, ClientWindow] = {}

    def admit(
        self, key: Any, now: float, limit: int, window: float, ticket: Ticket | None = None
    ) -> tuple[int | None, bool]:
        """(None, _) when admitted, else (Retry-After seconds, _); the flag says the request was
        sent inside a Retry-After window: it arrived after a 429 of this client had been
        delivered, and before that 429's Retry-After ended.

        ``ticket``: the HTTP request's arrival and the 429s its answer will carry (a ``$batch``
        member shares the outer request's). Without one (a direct call), the request arrives
        ``now`` and a 429 counts as delivered when it is given.
        """
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = ClientWindow()
        arrived = now if ticket is None else ticket.arrived
        refusals = client.refusals
        while refusals and refusals[0].until <= now - window:  # long over: no arrival is older
            refusals.popleft()
        sent_inside = any(
            r.delivered_at is not None and r.delivered_at < arrived < r.until for r in refusals
        )
        accepted = client.accepted
        horizon = now - window
        while accepted and accepted[0] <= horizon:
            accepted.popleft()
        if now < client.retry_until:
            return max(1, math.ceil(client.retry_until - now)), sent_inside
        if limit > 0 and len(accepted) >= limit:
            # When one more fits: once all but limit - 1 of those in the window have left (the
            # window can hold more than the limit when the limit was lowered meanwhile).
            wait = max(1, math.ceil(accepted[len(accepted) - limit] + window - now))
            client.retry_until = now + wait
            refusal = Refusal(client.retry_until)
            refusals.append(refusal)
            if ticket is None:
                refusal.delivered_at = now
            else:
                ticket.refusals.append(refusal)
            return wait, sent_inside
        accepted.append(now)
        return None, sent_inside

    def refuse_all(
        self,
        key: Any,
        now: float,
        limit: int,
        window: float,
        count: int,
        ticket: Ticket | None = None,
    ) -> tuple[int | None, bool]:
        """Would ``count`` more requests exceed the limit? Then start a Retry-After (returned,
        seconds) and admit none of them; else None and nothing is counted (each is admitted on
        its own afterwards). The flag: the batch was sent inside a Retry-After window."""
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = ClientWindow()
        arrived = now if ticket is None else ticket.arrived
        sent_inside = any(
            r.delivered_at is not None and r.delivered_at < arrived < r.until
            for r in client.refusals
        )
        if now < client.retry_until:
            return max(1, math.ceil(client.retry_until - now)), sent_inside
        accepted = client.accepted
        horizon = now - window
        while accepted and accepted[0] <= horizon:
            accepted.popleft()
        if limit <= 0 or len(accepted) + count <= limit:
            return None, sent_inside
        # When ``count`` more fit: once the first ``len + count - limit`` have left the window
        # (all of them, for a batch larger than the limit).
        leaving = min(len(accepted) + count - limit, len(accepted))
        last_to_leave = accepted[leaving - 1] if leaving > 0 else now
        wait = max(1, math.ceil(last_to_leave + window - now))
        client.retry_until = now + wait
        refusal = Refusal(client.retry_until)
        client.refusals.append(refusal)
        if ticket is None:
            refusal.delivered_at = now
        else:
            ticket.refusals.append(refusal)
        return wait, sent_inside


class RetryAfterDelivery:
    """ASGI middleware: a `Ticket` for each HTTP request (its arrival on the world's clock); once
    the last byte of the answer is handed to the connection, the 429s it carries are delivered.

    At each delivery, every open connection whose next request has already reached the sandbox,
    and every connection opened but not yet used, is noted with the delivery time; that request's
    ticket arrives then (it was sent before the client could see the 429). A ``$batch`` member
    comes back through the app with the outer request's ticket already in its scope, and keeps
    it."""

    def __init__(self, app: Any, world: World) -> None:
        self.app = app
        self.world = world
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()  # uvicorn protocols
        self._waiting_since: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or TICKET in scope:
            await self.app(scope, receive, send)
            return
        now = self.world.clock.now()
        connection = _connection_of(receive)
        if connection is not None:
            self._connections.add(connection)
            now = min(now, self._waiting_since.pop(connection, now))
        ticket = scope[TICKET] = Ticket(now)

        async def delivering(message: Any) -> None:
            await send(message)
            if (
                message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and ticket.refusals
            ):
                delivered = self.world.clock.now()
                # Every connection accepted (SandboxServer registers each at TCP accept, before
                # the TLS handshake): one that has not brought a request yet was opened for a
                # request the client had already decided on.
                every = self.world.extra.get(CONNECTIONS, ())
                for other in [*self._connections, *every]:
                    if other is connection:
                        continue
                    if other not in self._connections or _request_waiting(other):
                        self._waiting_since.setdefault(other, delivered)
                ticket.delivered(delivered)

        await self.app(scope, receive, delivering)


def _connection_of(receive: Any) -> Any:
    """The uvicorn protocol object of the connection a request came on (None outside uvicorn)."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    get_protocol = getattr(transport, "get_protocol", None)
    return get_protocol() if get_protocol is not None else None


def _request_waiting(connection: Any) -> bool:
    """Whether a request not yet served has reached this connection: parsed and waiting for the
    event loop, or bytes not yet read (in the socket, in the TLS layer, in the HTTP parser)."""
    transport = getattr(connection, "transport", None)
    if transport is None or transport.is_closing():
        return False
    cycle = getattr(connection, "cycle", None)
    if cycle is not None and not getattr(cycle, "response_complete", True):
        return TICKET not in cycle.scope  # parsed, not yet served (served: it has its ticket)
    buffered = getattr(getattr(connection, "conn", None), "trailing_data", (b"", False))[0]
    tls_in = getattr(getattr(transport, "_ssl_protocol", None), "_incoming", None)
    if buffered or getattr(tls_in, "pending", 0):
        return True
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    import fcntl
    import struct
    import termios

    with contextlib.suppress(OSError, ValueError):
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
        return bool(struct.unpack("i", raw)[0])
    return False


def check_batch_throttle(
    world: World, claims: Claims, presence_members: int, ticket: Ticket | None = None
) -> int | None:
    """For a ``$batch`` refused as a whole (fault ``batch_envelope_status`` 429): the Retry-After
    when its presence members would not all fit under the limit, else None (nothing counted).
    Sent inside a Retry-After window, each of its presence members counts there."""
    if presence_members <= 0:
        return None
    wait, inside = _windows(world).refuse_all(
        (claims.appid, claims.tid),
        world.clock.now(),
        int(world.faults.throttle_per_30s),
        float(world.faults.throttle_window),
        presence_members,
        ticket,
    )
    if inside:
        world.stats.in_retry_after_window += presence_members
    if wait is not None:
        world.stats.throttled += 1
    return wait


def _windows(world: World) -> SlidingWindow:
    windows = world.throttle_state.get(_STATE_KEY)
    if windows is None:
        windows = world.throttle_state[_STATE_KEY] = SlidingWindow()
    return windows


def check_presence_throttle(world: World, claims: Claims, ticket: Ticket | None = None) -> None:
    """Count one presence request of the token's (app, tenant); raise a 429 GraphError if over.

    ``ticket``: the request's (``scope[TICKET]``; a ``$batch`` member's is the outer request's).
    """
    now = world.clock.now()
    retry_after, inside_retry = _windows(world).admit(
        (claims.appid, claims.tid),
        now,
        int(world.faults.throttle_per_30s),
        float(world.faults.throttle_window),
        ticket,
    )
    if inside_retry:
        world.stats.in_retry_after_window += 1
        log.warning(
            "presence request of app %s sent inside a Retry-After window (arrived %.6f, now %.6f)",
            claims.appid,
            ticket.arrived if ticket is not None else now,
            now,
        )
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


def seed_faults(seed: int) -> None:
    """Make the fault draws (5xx, drops) repeatable, for a soak that must meet some."""
    _fault_random.seed(seed)


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
