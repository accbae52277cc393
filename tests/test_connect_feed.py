"""The Connect change feed (PresenceFeed) against a small fake Connect: token and subscription
endpoints plus the sandbox's SignalR hub, served by uvicorn on 127.0.0.1 (plain http)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from presencectl.connect import ConnectClient, FeedState, PresenceEvent, PresenceFeed, wire
from presencectl.sandbox.signalr import SignalRHub


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeConnectServer:
    """Token + subscriptions + hub; subscriptions can be forgotten to test re-creation."""

    def __init__(self) -> None:
        self.tokens = itertools.count(1)
        self.issued: set[str] = set()
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.counter = itertools.count(1)
        self.calls: list[str] = []
        self.renew_bodies: list[Any] = []
        self.renew_status = 200  # anything else: renewal fails
        self.expires_in: float | None = None  # whenExpired this far ahead; None: far future
        self.hub = SignalRHub(
            "/hub/presence",
            authorize=lambda token: token in self.issued,
            subscription_exists=lambda sid: sid in self.subscriptions,
        )
        routes = [
            Route(wire.TOKEN_PATH, self.token, methods=["POST"]),
            Route(wire.SUBSCRIPTIONS_ALL_PATH, self.create, methods=["POST"]),
            Route(
                wire.SUBSCRIPTION_RENEW_PATH.replace("{subscription_id}", "{sid}"),
                self.renew,
                methods=["POST"],
            ),
            Route(
                wire.SUBSCRIPTION_PATH.replace("{subscription_id}", "{sid}"),
                self.delete,
                methods=["DELETE"],
            ),
            *self.hub.routes(),
        ]
        config = uvicorn.Config(
            Starlette(routes=routes), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base = ""

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization", "").removeprefix("Bearer ") in self.issued

    async def token(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode())
        if form.get("client_secret") != ["s3cret"]:
            return JSONResponse({"error": "invalid_client"}, status_code=400)
        token = f"t{next(self.tokens)}"
        self.issued.add(token)
        return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": 3600})

    def _sub_body(self, sid: str) -> dict[str, Any]:
        when = "2030-01-01T00:00:00Z"
        if self.expires_in is not None:
            when = datetime.fromtimestamp(time.time() + self.expires_in, UTC).isoformat()
        return {
            "id": sid,
            "whenExpired": when,
            "deliveryMethod": {"uri": f"{self.base}/hub/presence?subscriptionId={sid}"},
        }

    async def create(self, request: Request) -> Response:
        if not self._authorized(request):
            return Response(status_code=401)
        body = await request.json()
        assert body == {"events": ["*"], "ttl": body["ttl"]}
        sid = f"sub{next(self.counter)}"
        self.subscriptions[sid] = body
        self.calls.append(f"create {sid}")
        return JSONResponse(self._sub_body(sid))

    async def renew(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        self.calls.append(f"renew {sid}")
        self.renew_bodies.append(await request.json() if await request.body() else None)
        if self.renew_status != 200:
            return JSONResponse({"title": "boom"}, status_code=self.renew_status)
        if sid not in self.subscriptions:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse(self._sub_body(sid))

    async def delete(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        self.calls.append(f"delete {sid}")
        if self.subscriptions.pop(sid, None) is None:
            return Response(status_code=404)
        return Response(status_code=204)

    def run_on_server(self, coro: Any) -> Any:
        loop = self.hub._loop
        assert loop is not None
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def __enter__(self) -> FakeConnectServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.005)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture
def fake_connect() -> Iterator[FakeConnectServer]:
    with FakeConnectServer() as server:
        yield server


def client_for(server: FakeConnectServer) -> ConnectClient:
    return ConnectClient(server.base, server.base, "client-1", "s3cret", max_attempts=1)


async def next_event(feed: PresenceFeed, timeout: float = 30.0) -> PresenceEvent:
    return await asyncio.wait_for(anext(aiter(feed)), timeout)


def payload(user: str, presence: str) -> dict[str, str]:
    return {"userId": user, "presenceState": presence, "whenRaised": "2030-01-01T00:00:00Z"}


@pytest.mark.anyio
async def test_feed_delivers_events_and_close_deletes_the_subscription(
    fake_connect: FakeConnectServer,
) -> None:
    states: list[FeedState] = []
    seen: list[PresenceEvent] = []
    async with client_for(fake_connect) as client:
        feed = PresenceFeed(client, on_state=states.append, on_event=seen.append)
        async with feed:
            assert await feed.wait_connected(30)
            assert feed.subscription is not None and feed.subscription.id == "sub1"
            delivered = await fake_connect.run_on_server(
                fake_connect.hub.publish(
                    "OnPresenceEvent", [payload("c7", "agent_onphone")], "sub1"
                )
            )
            assert delivered == 1
            event = await next_event(feed)
            assert (event.user_id, event.presence, event.when_raised) == (
                "c7",
                "agent_onphone",
                "2030-01-01T00:00:00Z",
            )
            assert seen == [event]
            # Garbage arguments are ignored without breaking the connection.
            await fake_connect.run_on_server(
                fake_connect.hub.publish("OnPresenceEvent", ["nonsense", {"userId": "x"}])
            )
            await fake_connect.run_on_server(
                fake_connect.hub.publish("OnPresenceEvent", [payload("c8", "offline")])
            )
            assert (await next_event(feed)).user_id == "c8"
            assert feed.connected
    assert fake_connect.calls == ["create sub1", "delete sub1"]
    assert states[0] is FeedState.CONNECTING and FeedState.CONNECTED in states
    assert feed.state is FeedState.CLOSED


@pytest.mark.anyio
async def test_feed_reconnects_after_the_server_drops_it(fake_connect: FakeConnectServer) -> None:
    states: list[FeedState] = []
    async with client_for(fake_connect) as client:
        feed = PresenceFeed(client, on_state=states.append, backoff_initial=0.05)
        async with feed:
            assert await feed.wait_connected(30)
            closed = await fake_connect.run_on_server(fake_connect.hub.disconnect())
            assert closed == 1
            deadline = time.monotonic() + 30
            while not (feed.reconnects >= 1 and feed.connected):
                assert time.monotonic() < deadline, f"no reconnect: {states}"
                await asyncio.sleep(0.02)
            assert FeedState.RECONNECTING in states
            await fake_connect.run_on_server(
                fake_connect.hub.publish("OnPresenceEvent", [payload("c1", "busy")])
            )
            assert (await next_event(feed)).presence == "busy"
            assert feed.subscription is not None and feed.subscription.id == "sub1"


@pytest.mark.anyio
async def test_feed_renews_and_recreates_a_vanished_subscription(
    fake_connect: FakeConnectServer,
) -> None:
    async with client_for(fake_connect) as client:
        feed = PresenceFeed(client, ttl_s=0.6, renew_margin_s=0.3, backoff_initial=0.05)
        async with feed:
            assert await feed.wait_connected(30)
            deadline = time.monotonic() + 30
            while "renew sub1" not in fake_connect.calls:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            # The service forgets the subscription (expired, or deleted by someone else).
            fake_connect.subscriptions.clear()
            while not (feed.subscription and feed.subscription.id == "sub2" and feed.connected):
                assert time.monotonic() < deadline, fake_connect.calls
                await asyncio.sleep(0.02)
            await fake_connect.run_on_server(
                fake_connect.hub.publish("OnPresenceEvent", [payload("c2", "meeting")], "sub2")
            )
            assert (await next_event(feed)).presence == "meeting"
    assert "create sub2" in fake_connect.calls
    assert fake_connect.calls[-1] == "delete sub2"


@pytest.mark.anyio
async def test_feed_keeps_retrying_while_connect_refuses(fake_connect: FakeConnectServer) -> None:
    async with ConnectClient(fake_connect.base, fake_connect.base, "client-1", "wrong") as client:
        feed = PresenceFeed(client, backoff_initial=0.02, backoff_max=0.05)
        await feed.start()
        try:
            assert not await feed.wait_connected(0.4)
            assert feed.state is FeedState.RECONNECTING
            assert feed.last_error is not None
            assert getattr(feed.last_error, "code", "") == "connect_auth_failed"
            assert feed.reconnects >= 2
        finally:
            await feed.close()
    assert feed.state is FeedState.CLOSED


@pytest.mark.parametrize(
    "raw",
    [
        {"userId": "c9", "presenceState": "busy"},
        {"unifiedUserId": "c9", "presenceState": "busy"},
        {"id": "c9", "presenceState": "busy"},  # a bare id: taken because c9 is a known user
        {"user": {"id": "c9"}, "presenceState": "busy"},
        {"userId": "c9", "unifiedUserId": "other", "presenceState": "busy"},  # first present wins
        {"userId": None, "unifiedUserId": "c9", "presenceState": "busy"},
        {"id": "event-7", "userId": "c9", "presenceState": "busy"},  # the event's own id
        {"id": "event-7", "user": {"id": "c9"}, "presenceState": "busy"},
    ],
)
def test_the_events_user_id_is_the_first_present_field(raw: dict[str, Any]) -> None:
    from presencectl.connect.feed import parse_event

    event = parse_event(raw, is_known={"c9"}.__contains__)
    assert event is not None and (event.user_id, event.presence) == ("c9", "busy")


def test_a_bare_id_is_never_taken_for_a_user_unless_it_is_a_known_one() -> None:
    from presencectl.connect.feed import parse_event

    raw = {"id": "event-7", "presenceState": "busy"}
    assert parse_event(raw) is None
    assert parse_event(raw, is_known={"c9"}.__contains__) is None
    assert parse_event(raw, is_known={"event-7"}.__contains__) is not None


def test_the_profiles_user_field_is_read_outright() -> None:
    from presencectl.connect.feed import parse_event

    raw = {"id": "event-7", "subject": {"uid": "c9"}, "userId": "x", "presenceState": "away"}
    event = parse_event(raw, user_field="subject.uid")
    assert event is not None and event.user_id == "c9"
    assert parse_event({"userId": "c9", "presenceState": "away"}, user_field="subject.uid") is None


@pytest.mark.parametrize(
    ("raw", "scope", "session"),
    [
        ({"userId": "c9", "presenceState": "busy"}, "auto", False),
        ({"userId": "c9", "presenceState": "busy", "resource": "r1"}, "auto", True),
        ({"userId": "c9", "presenceState": "busy", "resource": "r1"}, "user", False),
        ({"userId": "c9", "presenceState": "busy"}, "session", True),
    ],
)
def test_a_session_scoped_event_is_marked(raw: dict[str, Any], scope: str, session: bool) -> None:
    from presencectl.connect.feed import parse_event

    event = parse_event(raw, scope=scope)
    assert event is not None and event.session is session


@pytest.mark.parametrize(
    "raw",
    [{"accountUser": "c9", "presenceState": "busy"}, {"userId": "c9"}, {"user": "c9"}, "text", 7],
)
def test_events_without_user_or_presence_do_not_parse(raw: Any) -> None:
    from presencectl.connect.feed import parse_event

    assert parse_event(raw) is None


@pytest.mark.anyio
async def test_unreadable_events_are_counted_warned_once_by_keys_and_make_the_feed_deaf(
    fake_connect: FakeConnectServer, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    secret_value = "a-value-that-must-not-be-logged"
    odd = {"accountUser": secret_value, "presenceState": "busy"}
    async with client_for(fake_connect) as client:
        feed = PresenceFeed(client, clock=lambda: now[0], deaf_after_s=60.0)
        async with feed:
            assert await feed.wait_connected(5)
            with caplog.at_level(logging.WARNING, logger="presencectl.connect.feed"):
                for _ in range(3):
                    await fake_connect.run_on_server(
                        fake_connect.hub.publish("OnPresenceEvent", [odd], "sub1")
                    )
                deadline = time.monotonic() + 5
                while feed.events_unparsed < 3:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1
            assert "accountUser, presenceState" in warnings[0]
            assert secret_value not in caplog.text and "busy" not in warnings[0]
            assert not feed.deaf
            now[0] += 60.0  # a minute of events, none readable
            assert feed.deaf
            # one readable event and the feed is trusted again
            await fake_connect.run_on_server(
                fake_connect.hub.publish("OnPresenceEvent", [payload("c1", "away")], "sub1")
            )
            assert (await next_event(feed)).presence == "away"
            assert not feed.deaf and feed.events_unparsed == 3


@pytest.mark.anyio
async def test_renewal_sends_an_empty_body_when_expired_says(
    fake_connect: FakeConnectServer,
) -> None:
    fake_connect.expires_in = 1.0  # Connect grants one second although we ask for 30 minutes
    async with (
        client_for(fake_connect) as client,
        PresenceFeed(client, ttl_s=1800, backoff_initial=0.05) as feed,
    ):
        assert await feed.wait_connected(5)
        deadline = time.monotonic() + 10
        while "renew sub1" not in fake_connect.calls:
            assert time.monotonic() < deadline, "renewal was not scheduled from whenExpired"
            await asyncio.sleep(0.02)
    assert fake_connect.renew_bodies[0] == {}


@pytest.mark.anyio
async def test_a_failed_renewal_creates_a_new_subscription(
    fake_connect: FakeConnectServer,
) -> None:
    fake_connect.renew_status = 500
    async with client_for(fake_connect) as client:
        feed = PresenceFeed(client, ttl_s=0.6, renew_margin_s=0.3, backoff_initial=0.05)
        async with feed:
            assert await feed.wait_connected(5)
            deadline = time.monotonic() + 5
            while not (feed.subscription and feed.subscription.id == "sub2" and feed.connected):
                assert time.monotonic() < deadline, fake_connect.calls
                await asyncio.sleep(0.02)
            fake_connect.renew_status = 200
    calls = fake_connect.calls
    assert calls.index("renew sub1") < calls.index("create sub2")
    assert "delete sub1" in calls  # the old one is not left behind


@pytest.mark.anyio
async def test_events_naming_nobody_are_counted_and_make_the_feed_deaf_with_the_reason() -> None:
    """A user-id field that holds some other id (not the directory's): every event names
    nobody; they are counted, and after ``deaf_after_s`` the feed is deaf and says why."""
    now = [0.0]
    feed = PresenceFeed(
        object(),  # type: ignore[arg-type]  # no I/O: events are handed in directly
        is_known={"c1"}.__contains__,
        clock=lambda: now[0],
        deaf_after_s=60,
    )
    await feed._on_invocation([{"userId": "legacy-7", "presenceState": "busy"}])
    assert (feed.events_unknown, feed.events_received, feed.deaf) == (1, 0, False)
    now[0] += 60
    assert feed.deaf and "name nobody" in feed.deaf_reason
    await feed._on_invocation([{"userId": "c1", "presenceState": "away"}])
    assert not feed.deaf and feed.events_received == 1
