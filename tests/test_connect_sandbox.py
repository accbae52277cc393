"""The Connect adapter end to end against the sandbox (HTTPS with the sandbox's CA): directory,
presence write/clear, bad credentials, and the change feed over TLS (how soon the event arrives
is a benchmark row: bench/timings.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from presencectl.config import Profile
from presencectl.connect import PresenceFeed, connect_client_for
from presencectl.connect.directory import list_contacts
from presencectl.connect.presence import clear_presence, get_presence, get_presences, set_presence
from presencectl.errors import ApiError, AuthError
from presencectl.secrets import CONNECT_CLIENT_SECRET, set_secret

ADMIN = "admin@contoso.example"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sb() -> Iterator[Any]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=10, seed=3) as sandbox:
        yield sandbox


@pytest.fixture
def profile(sb: Any) -> Profile:
    return sb.write_profile("sandbox")


@pytest.mark.anyio
async def test_directory_presence_write_and_clear(sb: Any, profile: Profile) -> None:
    async with connect_client_for(profile) as client:
        contacts = await list_contacts(client)
        admin = next(c for c in contacts if (c.email or "").lower() == ADMIN)
        assert admin.is_user and admin.pbx_enabled and admin.jid
        assert all(c.is_user for c in contacts)  # shared contacts and rooms are left out
        everyone = await list_contacts(client, users_only=False)
        assert {c.type for c in everyone if not c.is_user} == {"sharedContact", "room"}
        assert len({c.id for c in contacts}) == len(contacts)
        ours = client.resource_id
        assert profile.connect_resource_id == ours

        await set_presence(client, admin.id, "onphone")
        assert await get_presence(client, admin.id) == "onphone"
        state = sb.control.get("/_sandbox/connect/presence", params={"user": ADMIN}).json()
        assert {"resource": ours, "status": "onphone"}.items() <= next(
            r for r in state["resources"] if r["resource"] == ours
        ).items()

        reads = await get_presences(client, [c.id for c in contacts])
        assert set(reads.presences) == {c.id for c in contacts} and not reads.failures

        assert await clear_presence(client, admin.id) is True
        assert await clear_presence(client, admin.id) is False
        state = sb.control.get("/_sandbox/connect/presence", params={"user": ADMIN}).json()
        assert all(r["resource"] != ours for r in state["resources"])


@pytest.mark.anyio
async def test_wrong_secret_is_connect_auth_failed(profile: Profile) -> None:
    set_secret(profile.name, CONNECT_CLIENT_SECRET, "not-the-secret")
    async with connect_client_for(profile) as client:
        with pytest.raises(AuthError) as err:
            await list_contacts(client)
    assert err.value.code == "connect_auth_failed"
    assert err.value.exit_code == 4


@pytest.mark.anyio
async def test_feed_over_tls_delivers_a_change(sb: Any, profile: Profile) -> None:
    async with connect_client_for(profile) as client:
        contacts = {(c.email or "").lower(): c.id for c in await list_contacts(client)}
        async with PresenceFeed(client) as feed:
            assert await feed.wait_connected(30), feed.last_error
            assert feed.subscription is not None
            assert feed.subscription.uri.startswith(sb.base_url.replace("127.0.0.1", "localhost"))
            answer = await asyncio.to_thread(
                sb.control.post,
                "/_sandbox/connect/presence",
                json={"user": ADMIN, "status": "meeting"},
            )
            assert answer.status_code < 300, answer.text
            # A generous bound only so a broken feed fails instead of hanging; the latency is
            # measured in bench/timings.py.
            event = await asyncio.wait_for(anext(aiter(feed)), 30.0)
            assert event.user_id == contacts[ADMIN]
            assert event.presence == "meeting"
            subscription_id = feed.subscription.id
        # close() deleted the subscription: renewing it now is a 404.
        with pytest.raises(ApiError) as gone:
            await client.request("POST", f"/messaging/v1/subscriptions/{subscription_id}/renew")
        assert gone.value.status == 404


@pytest.mark.anyio
async def test_feed_survives_its_subscription_expiring(sb: Any, profile: Profile) -> None:
    from presencectl.connect.feed import renew_subscription

    async with connect_client_for(profile) as client:
        contacts = {(c.email or "").lower(): c.id for c in await list_contacts(client)}
        async with PresenceFeed(
            client, ttl_s=2.0, renew_margin_s=1.5, backoff_initial=0.05
        ) as feed:
            assert await feed.wait_connected(30), feed.last_error
            assert feed.subscription is not None
            first = feed.subscription.id
            renewed = await renew_subscription(client, feed.subscription)
            assert renewed.id == first
            # The sandbox clock jumps past the ttl: the subscription expires there.
            await asyncio.to_thread(
                sb.control.post, "/_sandbox/clock/advance", json={"seconds": 120}
            )
            deadline = time.monotonic() + 30
            while not (feed.subscription and feed.subscription.id != first and feed.connected):
                assert time.monotonic() < deadline, feed.last_error
                await asyncio.sleep(0.02)
            await asyncio.to_thread(
                sb.control.post, "/_sandbox/connect/presence", json={"user": ADMIN, "status": "dnd"}
            )
            event = await asyncio.wait_for(anext(aiter(feed)), 30.0)
            assert (event.user_id, event.presence) == (contacts[ADMIN], "dnd")


@pytest.mark.parametrize("field", ["userId", "unifiedUserId", "id", "user.id"])
@pytest.mark.anyio
async def test_feed_reads_each_user_id_field_behind_a_sticky_hub(
    sb: Any, profile: Profile, field: str
) -> None:
    """The hub wants its negotiate cookie back (hub_affinity_cookie) and names the user in any
    of the plausible fields: the feed connects and reads every event."""
    answer = sb.control.post(
        "/_sandbox/faults", json={"hub_affinity_cookie": True, "feed_user_field": field}
    )
    answer.raise_for_status()
    async with connect_client_for(profile) as client:
        contacts = {(c.email or "").lower(): c.id for c in await list_contacts(client)}
        known = set(contacts.values()).__contains__  # a bare `id` counts only when it is a user's
        async with PresenceFeed(client, is_known=known) as feed:
            assert await feed.wait_connected(30), feed.last_error
            change = {"user": ADMIN, "status": "busy"}
            await asyncio.to_thread(sb.control.post, "/_sandbox/connect/presence", json=change)
            event = await asyncio.wait_for(anext(aiter(feed)), 30.0)
    assert (event.user_id, event.presence) == (contacts[ADMIN], "busy")
    assert feed.events_unparsed == 0
    assert sb.world.extra["hub"].affinity_refused == 0


async def _one_event(sb: Any, feed: PresenceFeed, user: str, status: str) -> Any:
    await asyncio.to_thread(
        sb.control.post, "/_sandbox/connect/presence", json={"user": user, "status": status}
    )
    return await asyncio.wait_for(anext(aiter(feed)), 30.0)


@pytest.mark.anyio
async def test_an_events_own_id_is_never_taken_for_the_user(sb: Any, profile: Profile) -> None:
    """Events that carry their own ``id`` beside a nested ``user.id``: the user's id is read,
    not the event's."""
    sb.control.post("/_sandbox/faults", json={"feed_user_field": "user.id", "feed_event_id": True})
    async with connect_client_for(profile) as client:
        ids = {c.id for c in await list_contacts(client)}
        admin = next(c.id for c in await list_contacts(client) if c.email == ADMIN)
        async with PresenceFeed(client, is_known=ids.__contains__) as feed:
            assert await feed.wait_connected(30), feed.last_error
            event = await _one_event(sb, feed, ADMIN, "dnd")
    assert (event.user_id, event.presence) == (admin, "dnd")
    assert feed.events_unknown == 0 and feed.events_unparsed == 0


@pytest.mark.anyio
async def test_a_feed_whose_events_name_nobody_is_deaf_and_says_why(
    sb: Any, profile: Profile
) -> None:
    """A user id under a field nobody reads, and an event id under ``id``: nothing names a
    known user, every event is counted and the feed turns deaf."""
    sb.control.post("/_sandbox/faults", json={"feed_user_field": "subject", "feed_event_id": True})
    now = [0.0]
    async with connect_client_for(profile) as client:
        ids = {c.id for c in await list_contacts(client)}
        feed = PresenceFeed(
            client, is_known=ids.__contains__, clock=lambda: now[0], deaf_after_s=60
        )
        async with feed:
            assert await feed.wait_connected(30), feed.last_error
            for status in ("busy", "away"):
                await asyncio.to_thread(
                    sb.control.post,
                    "/_sandbox/connect/presence",
                    json={"user": ADMIN, "status": status},
                )
            deadline = time.monotonic() + 30
            while feed.events_unparsed + feed.events_unknown < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert feed.events_received == 0 and not feed.deaf
            now[0] += 60
            assert feed.deaf and "cannot read" in feed.deaf_reason


@pytest.mark.anyio
async def test_the_feed_asks_a_shorter_lifetime_when_the_service_caps_it(
    sb: Any, profile: Profile
) -> None:
    sb.control.post("/_sandbox/faults", json={"connect_subscription_max_ttl_s": 300})
    async with connect_client_for(profile) as client, PresenceFeed(client) as feed:
        assert await feed.wait_connected(30), feed.last_error
        assert feed.ttl_s == 300 and feed.ttl_requested_s == 1800
        event = await _one_event(sb, feed, ADMIN, "busy")
    assert event.presence == "busy"


@pytest.mark.anyio
async def test_the_directory_is_listed_without_fields_when_it_rejects_them(
    sb: Any, profile: Profile
) -> None:
    sb.control.post("/_sandbox/faults", json={"connect_fields_param": "reject"})
    async with connect_client_for(profile) as client:
        contacts = await list_contacts(client)
        assert client.directory_fields == ""
    assert any((c.email or "").lower() == ADMIN for c in contacts)
    assert len(contacts) == len([p for p in sb.world.people if p.connect_id])


@pytest.mark.parametrize("kind", ["person", "", "User"])
@pytest.mark.anyio
async def test_people_are_told_from_rooms_whatever_their_type_is_called(
    sb: Any, profile: Profile, kind: str
) -> None:
    sb.control.post("/_sandbox/faults", json={"connect_contact_types": kind})
    async with connect_client_for(profile) as client:
        contacts = await list_contacts(client)
    assert {c.id for c in contacts} == {p.connect_id for p in sb.world.people if p.connect_id}


@pytest.mark.anyio
async def test_a_wrong_api_host_says_which_setting_to_change(sb: Any, profile: Profile) -> None:
    from presencectl.errors import ApiError

    profile.connect_api_url = sb.base_url + "/elsewhere"
    async with connect_client_for(profile) as client:
        with pytest.raises(ApiError) as raised:
            await get_presence(client, "0b7a4c2e-0000-4000-8000-000000000000")
    assert raised.value.status == 404
    assert "connect_api_url" in raised.value.hint and "api.univerge.blue" in raised.value.hint
