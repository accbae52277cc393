"""The Connect change feed: a subscription delivered over a SignalR hub, kept alive.

Owns the subscription's life (create with a .NET TimeSpan ``ttl``; renew with body ``{}`` before
``whenExpired`` when the answer carries it, else before the ttl; a failed renewal creates a new
subscription; delete on close) and the hub connection (``pysignalr``, bearer token in the
Authorization header, TLS trusting the profile's CA bundle), with reconnection and bounded
exponential backoff.
:class:`PresenceFeed` yields :class:`PresenceEvent` from ``OnPresenceEvent`` through ``async for``
and/or an ``on_event`` callback, and exposes its :class:`FeedState` (and ``on_state``) so the
engine can fall back to polling while the feed is not connected. Events raised while the feed was
down are lost: after every reconnect (``reconnects`` grows, state returns to CONNECTED) the
engine should read presence once.

The event's user-id field is not publicly documented: the profile's ``connect_feed_user_field``
when set, else the first present of ``wire.EVENT_USER_ID_FIELDS``, where a bare ``id`` (maybe the
event's own id) counts only when ``is_known`` says it names a user. An event that cannot be
parsed is counted (``events_unparsed``) and logged once at WARNING with its keys only, never its
values; one whose user id names nobody the account knows is counted too (``events_unknown``);
when events keep arriving and none has named a known user for ``deaf_after_s`` seconds the feed
is ``deaf`` (``deaf_reason`` says why), and the engine polls Connect again as if the feed were
down. A session-scoped event (``event_scope`` ``session``, or ``auto`` and the event names a
``resource``) carries one session's state, not the user's: it comes out with ``session=True`` so
the engine reads the user's aggregate instead of trusting it.

The subscription's lifetime: a 400 to the create is asked again with each shorter lifetime of
``wire.SUBSCRIPTION_TTL_FALLBACKS_S``; the one granted (``ttl_s``) sets when it is renewed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import inspect
import itertools
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from presencectl.connect import wire
from presencectl.errors import ApiError, PresencectlError

if TYPE_CHECKING:
    from presencectl.connect.client import ConnectClient

log = logging.getLogger(__name__)


@dataclass
class Subscription:
    """A change-feed subscription as Connect returned it."""

    id: str
    uri: str
    when_expired: str | None = None
    renewed_at: float = field(default_factory=time.monotonic)
    expires_in_s: float | None = None  # from whenExpired, at the time of the answer


def parse_when(text: Any) -> float | None:
    """An ISO 8601 instant (``…Z`` or with an offset; no offset = UTC) as epoch seconds."""
    if not isinstance(text, str) or not text.strip():
        return None
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    # .NET writes 7 fractional digits; fromisoformat takes at most 6 before Python 3.11's fix
    head, dot, rest = raw.partition(".")
    if dot:
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        raw = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


@dataclass(frozen=True)
class PresenceEvent:
    """One presence change pushed by Connect."""

    user_id: str
    presence: str
    when_raised: str | None = None
    received_at: float = field(default_factory=time.time)
    session: bool = False  # one session's state, not the user's aggregate: read the user


class FeedState(enum.StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


def _loopback(host: str | None) -> bool:
    host = (host or "").lower()
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _parse_subscription(
    client: ConnectClient,
    body: Any,
    previous: Subscription | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> Subscription:
    if not isinstance(body, dict):
        body = {}
    delivery = body.get("deliveryMethod")
    uri = delivery.get("uri") if isinstance(delivery, dict) else None
    sub_id = body.get("id") or (previous.id if previous else None)
    uri = uri or (previous.uri if previous else None)
    if not sub_id or not isinstance(uri, str) or not uri:
        raise ApiError(
            "Connect answered a subscription request without id or deliveryMethod.uri",
            code="connect_bad_response",
        )
    hub = urljoin(client.api_url + "/", uri)
    parts = urlsplit(hub)
    if parts.scheme not in ("https", "wss") and not (
        parts.scheme in ("http", "ws") and _loopback(parts.hostname)
    ):
        # The hub gets our bearer token: never over plain http/ws (except to this machine, as
        # config.py allows for every URL), whatever Connect answered.
        raise ApiError(
            f"Connect named a change-feed hub that is not https or wss: "
            f"{parts.scheme}://{parts.hostname or ''}",
            code="connect_bad_response",
        )
    when_expired = body.get(wire.SUBSCRIPTION_EXPIRES)
    expires_at = parse_when(when_expired)
    return Subscription(
        id=str(sub_id),
        uri=hub,
        when_expired=str(when_expired) if expires_at is not None else None,
        expires_in_s=None if expires_at is None else expires_at - wall_clock(),
    )


async def create_subscription(
    client: ConnectClient,
    ttl_s: float = wire.SUBSCRIPTION_TTL_S,
    wall_clock: Callable[[], float] = time.time,
) -> Subscription:
    response = await client.request(
        "POST", wire.SUBSCRIPTIONS_ALL_PATH, json=wire.subscription_body(ttl_s)
    )
    body: Any = {}
    if response.content:
        with contextlib.suppress(ValueError, RecursionError):
            body = response.json()
    return _parse_subscription(client, body, wall_clock=wall_clock)


async def renew_subscription(
    client: ConnectClient,
    subscription: Subscription,
    wall_clock: Callable[[], float] = time.time,
) -> Subscription:
    """Extend the subscription's life (body ``{}``, as the SDK renews voice subscriptions);
    ApiError(status=404) when Connect no longer knows it."""
    response = await client.request(
        "POST",
        wire.subscription_renew_path(subscription.id),
        json=dict(wire.SUBSCRIPTION_RENEW_BODY),
    )
    body: Any = {}
    if response.content:
        with contextlib.suppress(ValueError):
            body = response.json()
    return _parse_subscription(client, body, subscription, wall_clock)


async def delete_subscription(client: ConnectClient, subscription_id: str) -> bool:
    """Delete it; False when it was already gone."""
    response = await client.request("DELETE", wire.subscription_path(subscription_id), allow=(404,))
    return response.status_code != 404


def _at(raw: dict[str, Any], path: str) -> str | None:
    value: Any = raw
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


def event_user_id(
    raw: dict[str, Any],
    *,
    user_field: str | None = None,
    is_known: Callable[[str], bool] | None = None,
) -> str | None:
    """The event's user id: under ``user_field`` when the profile names it; else the first
    present of ``userId``, ``unifiedUserId``, ``user.id`` (a nested object's ``id``), and a bare
    ``id`` only when ``is_known`` says it is a user's (an event may carry its own id)."""
    if user_field:
        return _at(raw, user_field)
    for name in wire.EVENT_USER_ID_FIELDS:
        value = _at(raw, name)
        if value is None:
            continue
        if name == wire.EVENT_BARE_ID and (is_known is None or not is_known(value)):
            continue
        return value
    return None


def is_session_event(raw: dict[str, Any], scope: str = "auto") -> bool:
    """Whether an event carries one session's state (``scope`` from the profile)."""
    if scope == "session":
        return True
    if scope == "user":
        return False
    return any(raw.get(name) not in (None, "") for name in wire.EVENT_RESOURCE_FIELDS)


def parse_event(
    raw: Any,
    *,
    user_field: str | None = None,
    is_known: Callable[[str], bool] | None = None,
    scope: str = "auto",
) -> PresenceEvent | None:
    """An ``OnPresenceEvent`` argument → PresenceEvent; None when it is not one."""
    if not isinstance(raw, dict):
        return None
    user_id = event_user_id(raw, user_field=user_field, is_known=is_known)
    presence = raw.get(wire.EVENT_PRESENCE)
    if presence is None:
        presence = raw.get(wire.PRESENCE_FIELD)
    if user_id is None or not isinstance(presence, str) or not presence:
        return None
    when = raw.get(wire.EVENT_WHEN_RAISED)
    return PresenceEvent(
        user_id,
        presence,
        str(when) if when is not None else None,
        session=is_session_event(raw, scope),
    )


def event_keys(raw: Any) -> str:
    """What an unparseable event looked like, without a single value: its keys, or its type."""
    if isinstance(raw, dict):
        return "keys " + (", ".join(sorted(str(k) for k in raw)[:20]) or "(none)")
    return f"a {type(raw).__name__}, not an object"


DEAF_AFTER_S = 60.0  # events arriving, none readable, this long: poll Connect instead

EventCallback = Callable[[PresenceEvent], Any]
StateCallback = Callable[["FeedState"], Any]


class PresenceFeed:
    """Presence changes of every user of the account, pushed by Connect.

    Use as ``async with PresenceFeed(client) as feed: async for event in feed: …`` or with
    ``on_event``; ``state`` / ``connected`` / ``on_state`` tell when to poll instead.
    """

    def __init__(
        self,
        client: ConnectClient,
        *,
        on_event: EventCallback | None = None,
        on_state: StateCallback | None = None,
        ttl_s: float = wire.SUBSCRIPTION_TTL_S,
        renew_margin_s: float | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        signalr_ping_interval: int = 15,
        connection_timeout: int = 10,
        queue_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        deaf_after_s: float | None = None,
        user_field: str | None = None,
        is_known: Callable[[str], bool] | None = None,
        event_scope: str | None = None,
    ) -> None:
        self.client = client
        self.on_event = on_event
        self.on_state = on_state
        self.ttl_s = ttl_s
        self.renew_margin_s = (
            renew_margin_s if renew_margin_s is not None else min(300.0, ttl_s / 5)
        )
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._ssl = ssl_context
        self.signalr_ping_interval = signalr_ping_interval
        self.connection_timeout = connection_timeout
        self._clock = clock
        self._wall_clock = wall_clock
        self.deaf_after_s = DEAF_AFTER_S if deaf_after_s is None else deaf_after_s
        # the profile's findings (connect verify --apply) ride on the client
        self.user_field = user_field or getattr(client, "feed_user_field", None) or None
        self.is_known = is_known
        self.event_scope: str = str(event_scope or getattr(client, "feed_event_scope", "auto"))
        self.ttl_requested_s = ttl_s
        self.events_unknown = 0  # events whose user id names nobody the account knows
        self._unknown_warned = False
        self._queue: asyncio.Queue[PresenceEvent | None] = asyncio.Queue(maxsize=queue_size)
        self._state = FeedState.IDLE
        self._state_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.subscription: Subscription | None = None
        self.reconnects = 0
        self.events_received = 0
        self.events_dropped = 0
        self.events_unparsed = 0
        self._unparsed_warned = False
        self._last_parsed: float | None = None
        self._first_unparsed: float | None = None  # since the last parsed event
        self.last_error: BaseException | None = None
        self._callbacks: set[asyncio.Future[Any]] = set()

    # -- state --------------------------------------------------------------------------------
    @property
    def state(self) -> FeedState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is FeedState.CONNECTED

    @property
    def deaf(self) -> bool:
        """Events arrive but none has named a known user for ``deaf_after_s``: the feed cannot
        be trusted."""
        if self._first_unparsed is None:
            return False
        return self._clock() - self._first_unparsed >= self.deaf_after_s

    @property
    def deaf_reason(self) -> str:
        """Why the feed is deaf, in words for ``status`` (empty when it is not)."""
        if not self.deaf:
            return ""
        if self.events_unknown and not self.events_unparsed:
            return (
                f"its events name nobody of the account ({self.events_unknown} so far): the "
                "user-id field is not the one presencectl reads; run `presencectl connect "
                "verify --apply`"
            )
        return f"it delivers events presencectl cannot read ({self.events_unparsed} so far)"

    def _unknown(self, event: PresenceEvent) -> None:
        self.events_unknown += 1
        if self._first_unparsed is None:
            self._first_unparsed = self._clock()
        if not self._unknown_warned:
            self._unknown_warned = True
            log.warning(
                "connect feed: an OnPresenceEvent names a user id the account does not list; "
                "such events are counted, not logged again"
            )

    def _unparsed(self, raw: Any) -> None:
        self.events_unparsed += 1
        if self._first_unparsed is None:
            self._first_unparsed = self._clock()
        if not self._unparsed_warned:
            self._unparsed_warned = True
            log.warning(
                "connect feed: an OnPresenceEvent presencectl cannot read (%s); expected a user "
                "id in one of %s and %s. Such events are counted, not logged again",
                event_keys(raw),
                ", ".join(wire.EVENT_USER_ID_FIELDS),
                wire.EVENT_PRESENCE,
            )

    def _set_state(self, state: FeedState) -> None:
        if state is self._state:
            return
        log.info("connect feed: %s → %s", self._state.value, state.value)
        self._state = state
        self._state_changed.set()
        self._state_changed = asyncio.Event()
        if self.on_state is not None:
            try:
                result = self.on_state(state)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._callbacks.add(task)
                    task.add_done_callback(self._callbacks.discard)
            except Exception:
                log.exception("connect feed: on_state callback failed")

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the feed is connected; False on timeout or when closed."""

        async def until() -> bool:
            while self._state is not FeedState.CONNECTED:
                if self._state is FeedState.CLOSED:
                    return False
                await self._state_changed.wait()
            return True

        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            return False

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the feed in the background (returns at once; see ``wait_connected``)."""
        if self._task is None:
            self._closing = False
            self._set_state(FeedState.CONNECTING)
            self._task = asyncio.create_task(self._supervise(), name="connect-presence-feed")

    async def close(self, *, delete_subscription: bool = True) -> None:
        """Stop the feed and (by default) delete the subscription at Connect."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if delete_subscription and self.subscription is not None:
            try:
                await delete_subscription_quietly(self.client, self.subscription.id)
            finally:
                self.subscription = None
        self._set_state(FeedState.CLOSED)
        if self._queue.full():
            # The end marker must get in, or a consumer of events() waits forever: like an
            # overflow, the oldest event makes room.
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
                self.events_dropped += 1
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def __aenter__(self) -> PresenceFeed:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[PresenceEvent]:
        return self.events()

    async def events(self) -> AsyncIterator[PresenceEvent]:
        """Events in arrival order, until the feed is closed."""
        while True:
            event = await self._queue.get()
            if event is None:
                return
            yield event

    # -- the supervisor -----------------------------------------------------------------------
    def _ssl_for(self, uri: str) -> ssl.SSLContext | None:
        if urlsplit(uri).scheme not in ("https", "wss"):
            return None
        if self._ssl is None:
            self._ssl = self.client.settings.ssl_context()
        return self._ssl

    def _renew_due(self) -> float:
        """From the answer's ``whenExpired`` when it carried one (and it is sooner than our
        ttl), else from our ttl."""
        sub = self.subscription
        if sub is None:
            return self._clock()
        lifetime = self.ttl_s
        if sub.expires_in_s is not None and 0 < sub.expires_in_s < lifetime:
            # Connect may grant less than we asked; it never gets more of our trust than the
            # ttl, so a server clock ahead of ours (or one behind it) cannot starve renewal.
            lifetime = sub.expires_in_s
        margin = min(self.renew_margin_s, max(0.0, lifetime) / 5)
        return sub.renewed_at + lifetime - margin

    async def _create(self) -> Subscription:
        """Create the subscription; a 400 (a service that caps the lifetime) is asked again with
        each shorter lifetime, and the one granted is kept (it sets when to renew)."""
        shorter = [t for t in wire.SUBSCRIPTION_TTL_FALLBACKS_S if t < self.ttl_s]
        while True:
            try:
                return await create_subscription(self.client, self.ttl_s, self._wall_clock)
            except ApiError as exc:
                if exc.status != 400 or not shorter:
                    raise
                log.info(
                    "connect feed: a subscription of %s was refused (%s); asking %s",
                    wire.format_ttl(self.ttl_s),
                    exc.message,
                    wire.format_ttl(shorter[0]),
                )
                self.ttl_s = shorter.pop(0)
                self.renew_margin_s = min(self.renew_margin_s, self.ttl_s / 5)

    async def _ensure_subscription(self) -> bool:
        """Create or renew as needed; True when the subscription (and its URI) changed."""
        if self.subscription is None:
            self.subscription = await self._create()
            self.subscription.renewed_at = self._clock()
            log.info("connect feed: subscription %s created", self.subscription.id)
            return True
        if self._clock() < self._renew_due():
            return False
        try:
            renewed = await renew_subscription(self.client, self.subscription, self._wall_clock)
        except ApiError as exc:
            old = self.subscription.id
            log.info(
                "connect feed: renewing subscription %s failed (%s); creating a new one",
                old,
                exc.code,
            )
            self.subscription = None
            if exc.status != 404:
                await delete_subscription_quietly(self.client, old)
            return await self._ensure_subscription()
        renewed.renewed_at = self._clock()
        changed = renewed.uri != self.subscription.uri or renewed.id != self.subscription.id
        self.subscription = renewed
        log.debug("connect feed: subscription %s renewed", renewed.id)
        return changed

    async def _supervise(self) -> None:
        failures = 0
        while not self._closing:
            was_connected = False
            try:
                await self._ensure_subscription()
                was_connected = await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = exc
                level = logging.WARNING if isinstance(exc, PresencectlError) else logging.INFO
                log.log(level, "connect feed: %s", getattr(exc, "message", None) or repr(exc))
            if self._closing:
                return
            failures = 1 if was_connected else failures + 1
            self.reconnects += 1
            self._set_state(FeedState.RECONNECTING)
            delay = min(self.backoff_max, self.backoff_initial * 2 ** (failures - 1))
            if was_connected:
                delay = min(delay, self.backoff_initial)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    async def _connect_once(self) -> bool:
        """One hub connection until it drops or the subscription changes; True if it was up."""
        from pysignalr.client import SignalRClient

        assert self.subscription is not None
        token = await self.client.access_token(wire.MESSAGING_SCOPE)
        uri = self.subscription.uri
        hub = SignalRClient(
            uri,
            headers={"Authorization": f"Bearer {token}"},
            ssl=self._ssl_for(uri),
            retry_count=1,  # we reconnect ourselves, with a fresh token and negotiate
            signalr_ping_interval=self.signalr_ping_interval,
            connection_timeout=self.connection_timeout,
        )
        opened = False
        dropped = asyncio.Event()

        async def on_open() -> None:
            nonlocal opened
            opened = True
            self._set_state(FeedState.CONNECTED)

        async def on_close() -> None:
            dropped.set()

        hub.on(wire.HUB_TARGET, self._on_invocation)
        hub.on_open(on_open)
        hub.on_close(on_close)
        run = asyncio.create_task(hub.run(), name="connect-signalr")
        drop_wait = asyncio.create_task(dropped.wait())
        try:
            while True:
                timeout = max(0.0, self._renew_due() - self._clock())
                await asyncio.wait(
                    {run, drop_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if run.done():
                    exc = run.exception()
                    if exc is not None:
                        raise exc
                    return opened
                if dropped.is_set():
                    return opened
                if await self._ensure_subscription():
                    return opened  # a new subscription: connect to its URI
        finally:
            for task in (run, drop_wait):
                task.cancel()
            await asyncio.gather(run, drop_wait, return_exceptions=True)

    async def _on_invocation(self, arguments: Any) -> None:
        """pysignalr callback: must never raise (an exception would end the connection)."""
        try:
            for raw in arguments if isinstance(arguments, list) else [arguments]:
                event = parse_event(
                    raw,
                    user_field=self.user_field,
                    is_known=self.is_known,
                    scope=self.event_scope,
                )
                if event is None:
                    self._unparsed(raw)
                    continue
                if self.is_known is not None and not self.is_known(event.user_id):
                    self._unknown(event)
                    continue
                self._first_unparsed = None
                self._last_parsed = self._clock()
                self.events_received += 1
                if self._queue.full():
                    with contextlib.suppress(asyncio.QueueEmpty):
                        self._queue.get_nowait()
                    self.events_dropped += 1
                self._queue.put_nowait(event)
                if self.on_event is not None:
                    result = self.on_event(event)
                    if inspect.isawaitable(result):
                        await result
        except Exception:
            log.exception("connect feed: event handling failed")


async def delete_subscription_quietly(client: ConnectClient, subscription_id: str) -> None:
    """Best-effort delete on shutdown: a failure is logged, never raised."""
    try:
        await delete_subscription(client, subscription_id)
    except PresencectlError as exc:
        log.warning(
            "connect feed: could not delete subscription %s: %s", subscription_id, exc.message
        )
