"""The Graph client against the sandbox: a real msal client-credentials token over our transport,
bulk presence reads, batched writes and clears, and throttling with no request inside a
Retry-After window.

The app registration is put into the sandbox's world directly (application, secret, admin
consent through the sandbox's own ``grant_admin_consent``), because the setup-azure flow that
creates it belongs to another package; everything after that goes over HTTPS as in production.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from presencectl.graph.client import GraphClient
from presencectl.graph.permissions import APP_ROLES, GRAPH_APP_ID, GRAPH_DEFAULT_SCOPE
from presencectl.graph.presence import (
    Outcome,
    PresenceWrite,
    clear_presences_batch,
    get_presences,
    set_presence,
    set_presences_batch,
)
from presencectl.graph.ratelimit import RateLimiter
from presencectl.graph.tokens import AccessToken, access_token_from_msal
from presencectl.transport import HttpSettings, msal_http_client


@pytest.fixture
def graph_sandbox(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The shared ``sandbox`` fixture when conftest has it, else a sandbox of our own."""
    try:
        yield request.getfixturevalue("sandbox")
        return
    except pytest.FixtureLookupError:
        pass
    from presencectl.sandbox import running_sandbox

    with running_sandbox() as sb:
        yield sb


class MsalAppToken:
    """A client-credentials TokenProvider through msal and presencectl's msal transport."""

    def __init__(self, sb: Any) -> None:
        from presencectl.sandbox.entra import grant_admin_consent

        world = sb.world
        self.client_id = str(uuid.uuid4())
        self._secret = secrets.token_urlsafe(24)
        app = world.add_application(
            {
                "id": world.new_id(),
                "appId": self.client_id,
                "displayName": "presencectl test",
                "requiredResourceAccess": [
                    {
                        "resourceAppId": GRAPH_APP_ID,
                        "resourceAccess": [{"id": i, "type": "Role"} for i in APP_ROLES.values()],
                    }
                ],
            }
        )
        world.app_secrets[self.client_id] = [self._secret]
        grant_admin_consent(world, app, world.person_by_email("admin@contoso.example"))
        info = sb.profile_info()
        self.authority = info["authority"]
        self.settings = HttpSettings(ca_bundle=sb.ca_bundle, msal_port_fixes={"127.0.0.1": sb.port})
        self.calls = 0

    def msal_token(self) -> AccessToken:
        import msal

        # A new application object has an empty cache: that is the forced refresh.
        http = msal_http_client(self.settings)
        try:
            app = msal.ConfidentialClientApplication(
                self.client_id,
                client_credential=self._secret,
                authority=self.authority,
                http_client=http,
                instance_discovery=False,
            )
            result = app.acquire_token_for_client([GRAPH_DEFAULT_SCOPE])
        finally:
            http.close()  # an idle keep-alive connection would slow the sandbox's shutdown
        if "access_token" not in result:
            raise RuntimeError(f"msal: {result.get('error')}: {result.get('error_description')}")
        return access_token_from_msal(result)

    def __call__(self, force_refresh: bool = False) -> AccessToken:
        self.calls += 1
        return self.msal_token()


def test_msal_client_credentials_against_the_sandbox(graph_sandbox: Any) -> None:
    tokens = MsalAppToken(graph_sandbox)
    token = tokens.msal_token()
    claims = graph_sandbox.world.verify_bearer(f"Bearer {token.token}")
    assert claims is not None and claims.appid == tokens.client_id
    assert "Presence.ReadWrite.All" in claims.roles
    assert token.expires_at > time.time() + 600


def _ids(sb: Any) -> list[str]:
    return [p.azure_id for p in sb.world.people if p.azure_id]


def _teams(sb: Any, email: str) -> dict[str, Any]:
    data: dict[str, Any] = sb.control.get("/_sandbox/teams/presence", params={"user": email}).json()
    return data


def test_presence_read_write_clear_with_an_msal_token(graph_sandbox: Any) -> None:
    sb = graph_sandbox
    tokens = MsalAppToken(sb)
    people = [p for p in sb.world.people if p.azure_id]
    ids = [p.azure_id for p in people]
    sb.control.delete("/_sandbox/stats")

    async def go() -> None:
        async with GraphClient(sb.base_url + "/v1.0", tokens, tokens.settings) as client:
            before = await get_presences(client, ids)
            assert set(before) == set(ids)
            writes = [PresenceWrite(i, "Busy", "InACall") for i in ids]
            outcomes = await set_presences_batch(client, tokens.client_id, writes)
            assert {o.outcome for o in outcomes} == {Outcome.OK}
            after = await get_presences(client, ids)
            assert {(p.availability, p.activity) for p in after.values()} == {("Busy", "InACall")}
            sessions = _teams(sb, people[0].email)["sessions"]
            assert [s["session_id"] for s in sessions] == [tokens.client_id]
            cleared = await clear_presences_batch(client, tokens.client_id, ids)
            assert {o.outcome for o in cleared} == {Outcome.OK}
            again = await clear_presences_batch(client, tokens.client_id, ids[:3])
            assert {o.outcome for o in again} == {Outcome.GONE}
            assert _teams(sb, people[0].email)["sessions"] == []
            assert client.metrics.throttled == 0

    asyncio.run(go())
    stats = sb.control.get("/_sandbox/stats").json()
    assert stats["requests"]["graph.getPresencesByUserId"] == 2 * math.ceil(len(ids) / 650)
    assert tokens.calls == 1


def test_an_expired_token_is_refreshed_once(graph_sandbox: Any) -> None:
    sb = graph_sandbox
    tokens = MsalAppToken(sb)

    async def go() -> None:
        async with GraphClient(sb.base_url + "/v1.0", tokens, tokens.settings) as client:
            await get_presences(client, _ids(sb)[:5])
            sb.control.post("/_sandbox/clock/advance", json={"seconds": 4 * 3600})
            assert len(await get_presences(client, _ids(sb)[:5])) == 5

    asyncio.run(go())
    assert tokens.calls == 2


def test_writes_at_the_sandbox_ceiling_without_a_429(graph_sandbox: Any) -> None:
    sb = graph_sandbox
    tokens = MsalAppToken(sb)
    limit, window = 40, 0.5
    sb.control.post("/_sandbox/faults", json={"throttle_per_30s": limit, "throttle_window": window})
    sb.control.delete("/_sandbox/stats")
    ids = _ids(sb)
    rounds = 3
    writes = [PresenceWrite(i, "Available", "Available") for i in ids] * rounds

    async def go() -> GraphClient:
        limiter = RateLimiter(limit=limit, window=window)
        async with GraphClient(
            sb.base_url + "/v1.0", tokens, tokens.settings, limiter=limiter
        ) as client:
            for round_ in range(rounds):
                chunk = writes[round_ * len(ids) : (round_ + 1) * len(ids)]
                outcomes = await set_presences_batch(client, tokens.client_id, chunk)
                assert all(o.outcome is Outcome.OK for o in outcomes)
        return client

    client = asyncio.run(go())
    stats = sb.control.get("/_sandbox/stats").json()
    units = rounds * len(ids)
    assert units > limit  # more writes than one window allows, so the budget must hold some back
    assert stats["requests"]["graph.setPresence"] == units
    assert stats["throttled"] == 0 and stats["in_retry_after_window"] == 0
    assert client.metrics.throttled == 0
    assert client.metrics.bucket_wait_s > 0  # the budget did hold writes back


def test_a_throttled_client_never_sends_inside_the_retry_after(graph_sandbox: Any) -> None:
    sb = graph_sandbox
    tokens = MsalAppToken(sb)
    sb.control.post("/_sandbox/faults", json={"throttle_per_30s": 5, "throttle_window": 1.0})
    sb.control.delete("/_sandbox/stats")
    ids = _ids(sb)[:8]

    async def go() -> GraphClient:
        # A limiter far above the sandbox's limit, so the sandbox does throttle; one request in
        # flight at a time, so each 429 is seen before the next request leaves.
        client = GraphClient(
            sb.base_url + "/v1.0",
            tokens,
            tokens.settings,
            limiter=RateLimiter(limit=1500, window=30.0),
            max_in_flight=1,
        )
        async with client:
            await asyncio.gather(
                *(set_presence(client, i, tokens.client_id, "Available", "Available") for i in ids)
            )
        return client

    client = asyncio.run(go())
    stats = sb.control.get("/_sandbox/stats").json()
    assert stats["throttled"] >= 1 and stats["in_retry_after_window"] == 0
    assert stats["requests"]["graph.setPresence"] == 8 + stats["throttled"]
    assert client.metrics.throttled == stats["throttled"]
    assert client.metrics.retry_after_wait_s >= 1.0


def test_list_users_reads_the_whole_directory(graph_sandbox: Any) -> None:
    from presencectl.graph.users import list_users, smtp_addresses

    sb = graph_sandbox
    tokens = MsalAppToken(sb)

    async def go() -> list[Any]:
        async with GraphClient(sb.base_url + "/v1.0", tokens, tokens.settings) as client:
            return await list_users(client, page_size=7)  # several pages

    users = asyncio.run(go())
    people = {p.azure_id: p for p in sb.world.people if p.azure_id}
    assert {u.id for u in users} == set(people)
    for user in users:
        assert people[user.id].email.lower() in smtp_addresses(user)


@pytest.mark.parametrize("envelope", [0, 424, 429])
def test_a_batch_throttled_as_a_whole_loses_no_write_and_repeats_none(
    graph_sandbox: Any, envelope: int
) -> None:
    """concepts/throttling.md: a throttled batch may fail whole with 424 (members keep their own
    429 and Retry-After); json-batching.md: 200 with 429 members; or 429 for the whole batch."""
    sb = graph_sandbox
    tokens = MsalAppToken(sb)
    sb.control.post(
        "/_sandbox/faults",
        json={"throttle_per_30s": 15, "throttle_window": 1.0, "batch_envelope_status": envelope},
    ).raise_for_status()
    sb.control.delete("/_sandbox/stats")
    people = [p for p in sb.world.people if p.azure_id][:12]
    envelopes: list[int] = []

    async def go() -> list[Any]:
        async with GraphClient(
            sb.base_url + "/v1.0",
            tokens,
            tokens.settings,
            limiter=RateLimiter(limit=1500, window=30.0),  # far above: the sandbox throttles
        ) as client:
            original = client._send

            async def spy(method: str, url: str, **kw: Any) -> Any:
                response = await original(method, url, **kw)
                if url == "/$batch":
                    envelopes.append(response.status_code)
                return response

            client._send = spy  # type: ignore[method-assign]
            first = [PresenceWrite(p.azure_id or "", "Busy", "InACall") for p in people]
            assert {
                o.outcome for o in await set_presences_batch(client, tokens.client_id, first)
            } == {Outcome.OK}
            # 12 more presence requests within the second: 9 of them over the limit of 15.
            second = [PresenceWrite(p.azure_id or "", "Available", "Available") for p in people]
            return await set_presences_batch(client, tokens.client_id, second)

    outcomes = asyncio.run(go())
    assert [o.outcome for o in outcomes] == [Outcome.OK] * len(people)
    stats = sb.control.get("/_sandbox/stats").json()
    assert envelopes[0] == 200 and envelopes[1] == {0: 200, 424: 424, 429: 429}[envelope]
    assert envelopes[-1] == 200 and stats["throttled"] >= 1
    # Every write landed exactly once: none lost, none sent again after it had landed.
    assert stats["writes"] == 2 * len(people)
    for person in people:
        teams = _teams(sb, person.email)
        assert [s["session_id"] for s in teams["sessions"]] == [tokens.client_id]
        assert (teams["availability"], teams["activity"]) == ("Available", "Available")
    assert stats["in_retry_after_window"] == 0


@pytest.mark.parametrize("clients", [1, 2])
def test_concurrent_chunked_reads_never_send_inside_a_retry_after(
    graph_sandbox: Any, clients: int
) -> None:
    """getPresencesByUserId chunks read side by side (as the engine reads 10,000 users) meet a
    server whose limit is far below the client's: once a 429 has reached the client, no other
    chunk may leave before its Retry-After is over, and every user is read in the end. With two
    clients sharing one limiter (the engine's app-token writer and delegated reader), the same
    holds across them."""
    sb = graph_sandbox
    tokens = MsalAppToken(sb)
    sb.control.post(
        "/_sandbox/faults", json={"throttle_per_30s": 3, "throttle_window": 1.0}
    ).raise_for_status()
    sb.control.delete("/_sandbox/stats")
    ids = _ids(sb)[:16]
    halves = [ids[i::clients] for i in range(clients)]

    async def go() -> list[dict[str, Any]]:
        limiter = RateLimiter(limit=1500, window=30.0)  # far above: the sandbox throttles
        graphs = [
            GraphClient(sb.base_url + "/v1.0", tokens, tokens.settings, limiter=limiter)
            for _ in range(clients)
        ]
        try:
            # One id a chunk, four chunks at a time per client: 16 reads against 3 a second.
            return await asyncio.gather(
                *(get_presences(g, part, chunk_size=1, concurrency=4)
                  for g, part in zip(graphs, halves, strict=True))
            )  # fmt: skip
        finally:
            for g in graphs:
                await g.aclose()

    read = {user for part in asyncio.run(go()) for user in part}
    stats = sb.control.get("/_sandbox/stats").json()
    assert read == set(ids)
    assert stats["throttled"] >= 1  # the sandbox did throttle: the next line can fail
    assert stats["requests"]["graph.getPresencesByUserId"] == len(ids) + stats["throttled"]
    assert stats["in_retry_after_window"] == 0
