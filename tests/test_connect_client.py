"""The Connect REST client against a fake Connect on httpx.MockTransport: one token per scope,
caching and refresh, the request budget, retries and Retry-After, the directory's page shape,
presence reads/writes/clears under our GUID resource, error bodies and their mapping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from presencectl.config import Profile
from presencectl.connect import ConnectClient, connect_client_for, wire
from presencectl.connect.directory import list_contacts
from presencectl.connect.presence import (
    clear_legacy_presence,
    clear_presence,
    get_presence,
    get_presences,
    set_presence,
)
from presencectl.errors import ApiError, AuthError, ConfigError, ExitCode, NetworkError
from presencectl.secrets import CONNECT_CLIENT_SECRET, set_secret

RESOURCE = "0f8fad5b-d9cb-469f-a165-70867728950e"
LOGIN = "https://login.example.test"
API = "https://api.example.test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class FakeConnect:
    """Just enough of Connect's REST API; ``script`` overrides answers per (method, path)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.tokens_issued = 0
        self.expires_in = 3600
        self.valid_tokens: set[str] = set()
        self.token_scopes: dict[str, str] = {}
        self.scopes_asked: list[str] = []
        self.token_error: str | None = None
        self.requests: list[httpx.Request] = []
        self.request_times: list[float] = []
        self.script: dict[tuple[str, str], list[Callable[[httpx.Request], httpx.Response]]] = {}
        self.presence: dict[str, str] = {"u1": "available", "u2": "onphone", "u3": "agent_meh"}
        self.sessions: dict[tuple[str, str], str] = {}  # (user, resource) -> value
        self.contacts: list[dict[str, Any]] = [
            {
                "id": f"c{i}",
                "type": "user",
                "displayName": f"Person {i}",
                "email": f"p{i}@contoso.example",
                "pbx": {"enabled": True, "extension": f"10{i}"},
                "messaging": {"jid": f"c{i}@xmpp.example", "enabled": True},
            }
            for i in range(6)
        ] + [{"id": "r1", "type": "room", "displayName": "Board Room", "email": "room@c.example"}]

    def answer_next(
        self, method: str, path: str, *answers: Callable[[httpx.Request], httpx.Response]
    ) -> None:
        self.script.setdefault((method, path), []).extend(answers)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.request_times.append(self.clock.now)
        path = request.url.path
        scripted = self.script.get((request.method, path))
        if scripted:
            return scripted.pop(0)(request)
        if request.url.host == "login.example.test" and path == wire.TOKEN_PATH:
            return self._token(request)
        auth = request.headers.get("authorization", "").removeprefix("Bearer ")
        if auth not in self.valid_tokens:
            return httpx.Response(401, json={"error": "invalid_token"})
        needed = "api.service.address-book" if path == wire.CONTACTS_PATH else wire.MESSAGING_SCOPE
        if self.token_scopes[auth] != needed:
            return httpx.Response(403, json={"message": f"missing scope {needed}"})
        if path == wire.CONTACTS_PATH:
            assert request.url.params["fields"] == "_all"
            size = int(request.url.params["count"])
            offset = int(request.url.params.get("offsetToken", "0"))
            page = self.contacts[offset : offset + min(size, 3)]
            token = str(offset + 3) if offset + 3 < len(self.contacts) else None
            return httpx.Response(200, json={"results": page, "nextPageOffsetToken": token})
        user = path.rsplit("/", 1)[-1]
        resource = request.url.params.get("resource", "")
        if request.method == "GET":
            if user not in self.presence:
                return httpx.Response(404, json={"error": "not found"})
            return httpx.Response(200, json={"presence": self.presence[user]})
        if request.method == "PUT":
            self.sessions[(user, resource)] = json.loads(request.content)["presence"]
            return httpx.Response(204)
        if request.method == "DELETE":
            if self.sessions.pop((user, resource), None) is None:
                return httpx.Response(404)
            return httpx.Response(204)
        return httpx.Response(405)

    def _token(self, request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        assert form["grant_type"] == "client_credentials"
        self.scopes_asked.append(form["scope"])
        if self.token_error or form["client_secret"] != "s3cret":
            return httpx.Response(400, json={"error": self.token_error or "invalid_client"})
        self.tokens_issued += 1
        token = f"tok{self.tokens_issued}"
        self.valid_tokens.add(token)
        self.token_scopes[token] = form["scope"]
        return httpx.Response(
            200, json={"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        )

    def count(self, method: str, path_suffix: str = "") -> int:
        return sum(
            1 for r in self.requests if r.method == method and r.url.path.endswith(path_suffix)
        )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> FakeConnect:
    return FakeConnect(clock)


def make_client(
    fake: FakeConnect, clock: FakeClock, secret: str = "s3cret", **kwargs: Any
) -> ConnectClient:
    kwargs.setdefault("max_attempts", 4)
    kwargs.setdefault("rate_per_min", 0)  # the budget has its own tests
    kwargs.setdefault("resource_id", RESOURCE)
    return ConnectClient(
        LOGIN,
        API,
        "client-1",
        secret,
        transport=httpx.MockTransport(fake.handler),
        sleep=clock.sleep,
        clock=clock,
        **kwargs,
    )


@pytest.mark.anyio
async def test_token_is_cached_until_a_minute_before_expiry(
    fake: FakeConnect, clock: FakeClock
) -> None:
    async with make_client(fake, clock) as client:
        assert await get_presence(client, "u1") == "available"
        assert await get_presence(client, "u2") == "onphone"
        assert fake.tokens_issued == 1
        clock.now += 3600 - 61
        await get_presence(client, "u1")
        assert fake.tokens_issued == 1
        clock.now += 2  # now inside the last minute of the token's life
        await get_presence(client, "u1")
        assert fake.tokens_issued == 2
        assert client.stats.token_requests == 2


@pytest.mark.anyio
async def test_concurrent_callers_share_one_token_request(
    fake: FakeConnect, clock: FakeClock
) -> None:
    async with make_client(fake, clock) as client:
        reads = await get_presences(client, ["u1", "u2"] * 20, concurrency=16)
    assert fake.tokens_issued == 1
    assert reads.presences == {"u1": "available", "u2": "onphone"}
    assert fake.count("GET", "/u1") == 1  # duplicates read once


@pytest.mark.anyio
async def test_a_revoked_token_is_refreshed_once_on_401(
    fake: FakeConnect, clock: FakeClock
) -> None:
    async with make_client(fake, clock) as client:
        await get_presence(client, "u1")
        fake.valid_tokens.clear()  # the service forgot our token before it expired
        assert await get_presence(client, "u2") == "onphone"
        assert fake.tokens_issued == 2
        # A token that is refused even when fresh is an auth failure, not a loop.
        fake.answer_next(
            "GET",
            wire.presence_path("u1"),
            *[lambda r: httpx.Response(401, json={"error": "invalid_token"})] * 2,
        )
        with pytest.raises(AuthError) as err:
            await get_presence(client, "u1")
        assert err.value.code == "connect_unauthorized"
        assert fake.tokens_issued == 3


@pytest.mark.anyio
async def test_429_waits_retry_after_and_blocks_every_request(
    fake: FakeConnect, clock: FakeClock
) -> None:
    throttled = httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "throttled"})
    fake.answer_next("GET", wire.presence_path("u1"), lambda r: throttled)
    async with make_client(fake, clock) as client:
        reads = await get_presences(client, ["u1", "u2", "u3"], concurrency=3)
    assert reads.presences == {"u1": "available", "u2": "onphone", "u3": "agent_meh"}
    assert 7.0 in clock.sleeps
    assert client.stats.throttled == 1
    assert client.stats.throttle_wait_s >= 7.0
    # The retry came 7 s after the 429 (fake clock), never inside the window.
    u1_times = [
        t
        for r, t in zip(fake.requests, fake.request_times, strict=True)
        if r.url.path.endswith("/u1")
    ]
    assert u1_times[1] - u1_times[0] >= 7.0


@pytest.mark.anyio
async def test_5xx_and_network_errors_are_retried_with_bounded_backoff(
    fake: FakeConnect, clock: FakeClock
) -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    fake.answer_next(
        "GET",
        wire.presence_path("u1"),
        lambda r: httpx.Response(503),
        unreachable,
        lambda r: httpx.Response(502),
    )
    async with make_client(fake, clock, backoff_base=0.5, backoff_max=1.0) as client:
        assert await get_presence(client, "u1") == "available"
        assert len(clock.sleeps) == 3
        assert all(0.25 <= s <= 1.0 for s in clock.sleeps)
        fake.answer_next("GET", wire.presence_path("u2"), *[lambda r: httpx.Response(504)] * 4)
        with pytest.raises(ApiError) as err:
            await get_presence(client, "u2")
        assert err.value.status == 504
        fake.answer_next("GET", wire.presence_path("u2"), *[unreachable] * 4)
        with pytest.raises(NetworkError) as net:
            await get_presence(client, "u2")
        assert net.value.code == "connect_unreachable"
        assert net.value.exit_code == ExitCode.ERROR


@pytest.mark.anyio
async def test_the_token_request_follows_the_same_retry_policy(
    fake: FakeConnect, clock: FakeClock
) -> None:
    fake.answer_next(
        "POST",
        wire.TOKEN_PATH,
        lambda r: httpx.Response(503),
        lambda r: httpx.Response(429, headers={"Retry-After": "7"}),
    )
    async with make_client(fake, clock, max_attempts=3) as client:
        assert await get_presence(client, "u1") == "available"
        assert 7.0 in clock.sleeps
        assert (client.stats.token_requests, client.stats.retries) == (3, 2)
        assert client.stats.throttled == 1
        client.invalidate_token()
        fake.answer_next("POST", wire.TOKEN_PATH, *[lambda r: httpx.Response(502)] * 3)
        with pytest.raises(ApiError) as err:
            await get_presence(client, "u1")
        assert err.value.status == 502 and client.stats.token_requests == 6


@pytest.mark.anyio
async def test_a_stale_token_resent_is_not_a_failed_attempt(
    fake: FakeConnect, clock: FakeClock
) -> None:
    fake.answer_next(
        "GET",
        wire.presence_path("u2"),
        lambda r: httpx.Response(503),
        lambda r: httpx.Response(401, json={"error": "invalid_token"}),
        lambda r: httpx.Response(503),
    )
    async with make_client(fake, clock, max_attempts=3) as client:
        # 503 (attempt 1), 401 (stale token: a new one, sent again), 503 (attempt 2), 200
        # (attempt 3): within three attempts only if the resend is not counted.
        assert await get_presence(client, "u2") == "onphone"
        assert fake.tokens_issued == 2


@pytest.mark.anyio
async def test_other_4xx_are_not_retried(fake: FakeConnect, clock: FakeClock) -> None:
    fake.answer_next(
        "PUT",
        wire.presence_path("u1"),
        lambda r: httpx.Response(400, json={"message": "bad presence"}),
    )
    fake.answer_next("GET", wire.presence_path("u1"), lambda r: httpx.Response(403))
    async with make_client(fake, clock) as client:
        with pytest.raises(ApiError) as err:
            await set_presence(client, "u1", "available")
        assert err.value.status == 400 and "bad presence" in err.value.message
        with pytest.raises(AuthError) as denied:
            await get_presence(client, "u1")
        assert denied.value.code == "connect_forbidden"
    assert fake.count("PUT") == 1
    assert clock.sleeps == []


@pytest.mark.anyio
async def test_directory_follows_next_page_offset_token(
    fake: FakeConnect, clock: FakeClock
) -> None:
    async with make_client(fake, clock) as client:
        users = await list_contacts(client)
        everyone = await list_contacts(client, users_only=False)
    assert [c.id for c in users] == [f"c{i}" for i in range(6)]  # the room is not a user
    assert [c.id for c in everyone] == [*(f"c{i}" for i in range(6)), "r1"]
    third = users[3]
    assert third.email == "p3@contoso.example" and third.display_name == "Person 3"
    assert (third.type, third.pbx_enabled, third.extension) == ("user", True, "103")
    assert (third.messaging_enabled, third.jid) == (True, "c3@xmpp.example")
    pages = [r for r in fake.requests if r.url.path == wire.CONTACTS_PATH]
    assert [r.url.params.get("offsetToken") for r in pages[:3]] == [None, "3", "6"]
    assert {r.url.params["count"] for r in pages} == {str(wire.PAGE_SIZE)}
    # one token per scope: the directory's and messaging's are never the same request
    assert fake.scopes_asked == ["api.service.address-book"]


@pytest.mark.parametrize(
    "body",
    [
        {"contacts": [{"id": "c1", "email": "a@b.example"}], "offsetToken": None},  # the old shape
        {"nextPageOffsetToken": None},
        {"results": None, "nextPageOffsetToken": None},
        {"results": {"id": "c1"}},
        [],
    ],
)
@pytest.mark.anyio
async def test_a_page_without_results_is_a_bad_answer_not_an_empty_directory(
    fake: FakeConnect, clock: FakeClock, body: Any
) -> None:
    fake.answer_next("GET", wire.CONTACTS_PATH, lambda r: httpx.Response(200, json=body))
    async with make_client(fake, clock) as client:
        with pytest.raises(ApiError) as err:
            await list_contacts(client)
    assert err.value.code == "connect_bad_response"
    assert "results" in err.value.message


@pytest.mark.parametrize(
    ("raw", "is_user"),
    [
        ({"id": "a", "type": "user"}, True),
        ({"id": "a", "type": "User"}, True),
        ({"id": "a"}, True),  # no type: taken for a user (the field is undocumented)
        ({"id": "a", "type": "sharedContact"}, False),
        ({"id": "a", "type": "room"}, False),
    ],
)
def test_only_user_contacts_are_users(raw: dict[str, Any], is_user: bool) -> None:
    from presencectl.connect.directory import parse_contact

    contact = parse_contact(raw)
    assert contact is not None and contact.is_user is is_user


@pytest.mark.anyio
async def test_directory_paging_loop_is_an_error(fake: FakeConnect, clock: FakeClock) -> None:
    page = httpx.Response(200, json={"results": [], "nextPageOffsetToken": "same"})
    fake.answer_next("GET", wire.CONTACTS_PATH, lambda r: page, lambda r: page)
    async with make_client(fake, clock) as client:
        with pytest.raises(ApiError, match="repeats"):
            await list_contacts(client)


@pytest.mark.anyio
async def test_set_and_clear_our_session(fake: FakeConnect, clock: FakeClock) -> None:
    async with make_client(fake, clock) as client:
        await set_presence(client, "u1", "onphone")
        put = next(r for r in fake.requests if r.method == "PUT")
        assert put.url.params["resource"] == RESOURCE
        assert json.loads(put.content) == {"presence": "onphone"}
        assert fake.sessions == {("u1", RESOURCE): "onphone"}
        assert await clear_presence(client, "u1") is True
        assert await clear_presence(client, "u1") is False  # 404: already gone
        delete = next(r for r in fake.requests if r.method == "DELETE")
        assert delete.url.params["resource"] == RESOURCE
    assert fake.scopes_asked == [wire.MESSAGING_SCOPE]


@pytest.mark.parametrize(
    ("answer", "cleared"),
    [(204, True), (404, False), (400, False)],  # 400: Connect refuses non-GUID resource names
)
@pytest.mark.anyio
async def test_the_legacy_session_is_cleared_by_its_old_name(
    fake: FakeConnect, clock: FakeClock, answer: int, cleared: bool
) -> None:
    fake.answer_next("DELETE", wire.presence_path("u1"), lambda r: httpx.Response(answer, json={}))
    async with make_client(fake, clock) as client:
        assert await clear_legacy_presence(client, "u1") is cleared
    delete = next(r for r in fake.requests if r.method == "DELETE")
    assert delete.url.params["resource"] == "presencectl"


@pytest.mark.anyio
async def test_bulk_read_reports_failures_and_keeps_unknown_values(
    fake: FakeConnect, clock: FakeClock
) -> None:
    fake.answer_next("GET", wire.presence_path("u2"), *[lambda r: httpx.Response(500)] * 2)
    async with make_client(fake, clock, max_attempts=2) as client:
        reads = await get_presences(client, ["u1", "u2", "u3", "ghost"])
    assert reads.presences == {"u1": "available", "u3": "agent_meh"}
    assert set(reads.failures) == {"u2", "ghost"}
    assert reads.failures["ghost"].code == "connect_not_found"


@pytest.mark.anyio
async def test_bulk_read_asks_no_further_once_connect_is_unreachable(
    fake: FakeConnect, clock: FakeClock
) -> None:
    """Connect down: one user's read spends the retries, the others fail with the same error
    without a request of their own (no retries, no budget spent on a service that is gone)."""

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    users = [f"u{i}" for i in range(50)]
    for user in users:
        fake.answer_next("GET", wire.presence_path(user), *[refused] * 3)
    async with make_client(fake, clock, max_attempts=3) as client:
        reads = await get_presences(client, users, concurrency=1)
    assert reads.presences == {}
    assert set(reads.failures) == set(users)
    assert {e.code for e in reads.failures.values()} == {"connect_unreachable"}
    assert fake.count("GET") == 3  # the first user's three attempts, nobody else's


@pytest.mark.anyio
async def test_bulk_read_stops_on_auth_failure(fake: FakeConnect, clock: FakeClock) -> None:
    async with make_client(fake, clock, secret="wrong") as client:
        with pytest.raises(AuthError):
            await get_presences(client, [f"u{i}" for i in range(50)], concurrency=4)
    assert fake.count("GET") == 0


@pytest.mark.anyio
async def test_invalid_client_is_an_exit_4_auth_error(fake: FakeConnect, clock: FakeClock) -> None:
    async with make_client(fake, clock, secret="wrong") as client:
        with pytest.raises(AuthError) as err:
            await get_presence(client, "u1")
    assert err.value.code == "connect_auth_failed"
    assert err.value.exit_code == ExitCode.AUTH == 4
    assert "Extend API" in err.value.hint
    assert "PRESENCECTL_CONNECT_CLIENT_SECRET" in err.value.hint
    assert "wrong" not in err.value.message + err.value.hint
    assert fake.tokens_issued == 0


@pytest.mark.anyio
async def test_invalid_scope_is_named(fake: FakeConnect, clock: FakeClock) -> None:
    fake.token_error = "invalid_scope"
    async with make_client(fake, clock) as client:
        with pytest.raises(AuthError) as err:
            await client.access_token()
    assert err.value.code == "connect_scope_denied"


@pytest.mark.anyio
async def test_profile_factory_reads_the_secret(
    monkeypatch: pytest.MonkeyPatch, fake: FakeConnect, clock: FakeClock
) -> None:
    profile = Profile(
        name="p", connect_login_url=LOGIN, connect_api_url=API, connect_client_id="client-1"
    )
    with pytest.raises(ConfigError) as missing:
        connect_client_for(profile)
    assert missing.value.code == "connect_secret_missing"
    assert "PRESENCECTL_CONNECT_CLIENT_SECRET" in missing.value.hint
    assert missing.value.exit_code == 3

    set_secret("p", CONNECT_CLIENT_SECRET, "s3cret")
    client = connect_client_for(
        profile, transport=httpx.MockTransport(fake.handler), sleep=clock.sleep, clock=clock
    )
    async with client:
        assert await get_presence(client, "u2") == "onphone"

    monkeypatch.setenv("PRESENCECTL_CONNECT_CLIENT_SECRET", "from-env")
    client = connect_client_for(profile, transport=httpx.MockTransport(fake.handler))
    async with client:
        with pytest.raises(AuthError):  # the environment wins over the keyring
            await client.access_token()

    with pytest.raises(ConfigError) as no_id:
        connect_client_for(Profile(name="p"))
    assert no_id.value.code == "config_missing"


def test_retry_after_parsing() -> None:
    from presencectl.connect.client import retry_after_seconds

    def resp(value: str) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": value})

    assert retry_after_seconds(resp("12")) == 12.0
    assert retry_after_seconds(resp("garbage")) is None
    assert retry_after_seconds(httpx.Response(429)) is None
    assert retry_after_seconds(resp("Wed, 21 Oct 2015 07:28:00 GMT"), now=1445412470.0) == 10.0


def test_wire_helpers() -> None:
    assert wire.format_ttl(1800) == "00:30:00"
    assert wire.format_ttl(120) == "00:02:00"
    assert wire.format_ttl(86399) == "23:59:59"
    assert wire.format_ttl(86400) == "1.00:00:00"  # .NET TimeSpan: days from one day on
    assert wire.format_ttl(2 * 86400 + 3723) == "2.01:02:03"
    assert wire.subscription_body() == {"events": ["*"], "ttl": "00:30:00"}
    assert wire.presence_path("a/b") == "/messaging/v1/presence/accounts/_me/users/a%2Fb"


@pytest.mark.anyio
async def test_one_token_per_scope_each_cached(fake: FakeConnect, clock: FakeClock) -> None:
    async with make_client(fake, clock) as client:
        await list_contacts(client)
        await get_presence(client, "u1")
        await list_contacts(client)
        await set_presence(client, "u2", "busy")
    assert fake.scopes_asked == ["api.service.address-book", wire.MESSAGING_SCOPE]
    assert all(len(scope.split()) == 1 for scope in fake.scopes_asked)


@pytest.mark.anyio
async def test_the_directory_scope_comes_from_the_profile_setting(
    fake: FakeConnect, clock: FakeClock
) -> None:
    async with make_client(fake, clock, directory_scope="api.service.contacts") as client:
        with pytest.raises(AuthError) as err:
            await list_contacts(client)  # the fake wants api.service.address-book: 403
    assert fake.scopes_asked == ["api.service.contacts"]
    assert err.value.code == "connect_forbidden"
    assert "missing scope api.service.address-book" in err.value.message


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ({"message": "Resource not found"}, "Resource not found"),
        (
            {
                "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
                "title": "One or more validation errors occurred.",
                "status": 400,
                "detail": "presence is invalid",
            },
            "One or more validation errors occurred.: presence is invalid",
        ),
        ({"title": "Bad Request", "status": 400}, "Bad Request"),
        ({"error": "invalid_request", "error_description": "no such user"}, "no such user"),
    ],
)
@pytest.mark.anyio
async def test_error_bodies_message_and_problem_details_are_read(
    fake: FakeConnect, clock: FakeClock, body: dict[str, Any], shown: str
) -> None:
    fake.answer_next("PUT", wire.presence_path("u1"), lambda r: httpx.Response(400, json=body))
    async with make_client(fake, clock) as client:
        with pytest.raises(ApiError) as err:
            await set_presence(client, "u1", "available")
    assert err.value.message.endswith(shown)


@pytest.mark.anyio
async def test_the_budget_paces_requests_to_the_rate_per_minute(
    fake: FakeConnect, clock: FakeClock
) -> None:
    fake.presence.update({f"x{i}": "available" for i in range(120)})
    async with make_client(fake, clock, rate_per_min=60) as client:
        assert client.budget.max_in_flight == 2
        reads = await get_presences(client, [f"x{i}" for i in range(120)], concurrency=32)
    assert len(reads.presences) == 120
    gets = [t for r, t in zip(fake.requests, fake.request_times, strict=True) if r.method == "GET"]
    # never more than 60 started in any minute (sliding), on the injected clock
    for i, start in enumerate(gets):
        assert sum(1 for t in gets[i:] if t < start + 60.0) <= 60
    assert client.stats.budget_wait_s > 0


@pytest.mark.anyio
async def test_no_budget_when_the_rate_is_zero(fake: FakeConnect, clock: FakeClock) -> None:
    fake.presence.update({f"x{i}": "available" for i in range(100)})
    async with make_client(fake, clock, rate_per_min=0) as client:
        await get_presences(client, [f"x{i}" for i in range(100)])
    assert clock.sleeps == [] and client.stats.budget_wait_s == 0


def test_the_resource_id_is_made_once_and_kept_in_the_profile() -> None:
    from presencectl.config import load_profile, save_profile
    from presencectl.connect.client import ensure_resource_id

    save_profile(Profile(name="p", connect_client_id="client-1"))
    first = ensure_resource_id(load_profile("p"))
    assert wire.is_guid(first)
    assert load_profile("p").connect_resource_id == first
    assert ensure_resource_id(load_profile("p")) == first
    set_secret("p", CONNECT_CLIENT_SECRET, "s3cret")
    assert connect_client_for(load_profile("p")).resource_id == first
