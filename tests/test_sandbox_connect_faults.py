"""The sandbox's Connect answers what no public source settles, one fault key at a time, and
checks scopes as the vendor's SDK uses them (one api.service.* scope per token)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pysignalr.client import SignalRClient
from test_sandbox_connect import (
    ADDRESS_BOOK,
    CONTACTS,
    MESSAGING,
    OURS,
    PRESENCE,
    SUBSCRIPTIONS,
    ask_token,
    auth,
    connect_people,
    token,
)

from presencectl.sandbox import running_sandbox


@pytest.fixture
def sb() -> Iterator[Any]:
    with running_sandbox(users=12, seed=7) as sandbox:
        yield sandbox


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def faults(sb: Any, **values: Any) -> None:
    answer = sb.control.post("/_sandbox/faults", json=values)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "scope",
    [
        "api.user.address-book",  # user sign-in scopes are refused to client credentials
        "api.user.messaging",
        "api.service.messaging api.service.address-book",  # one scope per token
        "api.service.nothing",
        None,
    ],
)
def test_the_token_endpoint_refuses_anything_but_one_service_scope(
    sb: Any, scope: str | None
) -> None:
    answer = ask_token(sb, scope)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_scope"


def test_every_route_checks_the_tokens_scope(sb: Any) -> None:
    person = connect_people(sb)[0]
    messaging, directory = auth(sb, MESSAGING), auth(sb, ADDRESS_BOOK)
    denied = sb.control.get(CONTACTS, headers=messaging)
    assert denied.status_code == 403
    assert ADDRESS_BOOK in denied.json()["message"]
    assert sb.control.get(CONTACTS, headers=directory).status_code == 200
    url = PRESENCE.format(id=person.connect_id)
    for method, target in (
        ("GET", url),
        ("PUT", url),
        ("DELETE", url),
        ("POST", f"{SUBSCRIPTIONS}/accounts/_me/users/_all"),
    ):
        answer = sb.control.request(
            method, target, params={"resource": OURS}, json={"presence": "busy"}, headers=directory
        )
        assert answer.status_code == 403, (method, target)
        assert MESSAGING in answer.json()["message"]
    assert sb.control.get(url, headers=messaging).status_code == 200


def test_unknown_values_are_refused_unless_lenient(sb: Any) -> None:
    person = connect_people(sb)[1]
    url = PRESENCE.format(id=person.connect_id)
    headers = auth(sb)

    def put(value: str) -> int:
        answer = sb.control.put(
            url, params={"resource": OURS}, json={"presence": value}, headers=headers
        )
        return int(answer.status_code)

    assert put("napping") == 400
    faults(sb, connect_lenient_values=True)
    assert put("napping") == 204
    assert sb.control.get(url, headers=headers).json() == {"presence": "napping"}  # as given


def test_a_write_shows_only_after_the_write_delay(sb: Any) -> None:
    person = connect_people(sb)[2]
    url = PRESENCE.format(id=person.connect_id)
    headers = auth(sb)
    # Long enough that the read right after the PUT comes inside it even on a loaded machine
    # (0.5 s did not always); the wait for it to show is a liveness deadline.
    faults(sb, connect_write_delay_s=3.0)
    put = sb.control.put(url, params={"resource": OURS}, json={"presence": "busy"}, headers=headers)
    assert put.status_code == 204
    assert sb.control.get(url, headers=headers).json() == {"presence": "offline"}
    faults(sb, connect_write_delay_s=0.5)
    deadline = time.monotonic() + 30
    while sb.control.get(url, headers=headers).json()["presence"] != "busy":
        assert time.monotonic() < deadline, "the delayed write never showed"
        time.sleep(0.05)
    # a delete behind a write still on its way waits its turn (no resurrected session)
    sb.control.put(url, params={"resource": OURS}, json={"presence": "onphone"}, headers=headers)
    assert sb.control.delete(url, params={"resource": OURS}, headers=headers).status_code == 204
    deadline = time.monotonic() + 30
    while OURS in {
        r["resource"]
        for r in sb.control.get(
            "/_sandbox/connect/presence", params={"user": person.connect_email}
        ).json()["resources"]
    }:
        assert time.monotonic() < deadline, "the delayed delete never showed"
        time.sleep(0.05)
    assert sb.control.get(url, headers=headers).json() == {"presence": "offline"}


@pytest.mark.parametrize(("mode", "shown"), [("rank", "onphone"), ("last_writer", "available")])
def test_aggregation_rank_or_last_writer(sb: Any, mode: str, shown: str) -> None:
    person = connect_people(sb)[3]
    url = PRESENCE.format(id=person.connect_id)
    headers = auth(sb)
    faults(sb, connect_aggregation=mode)
    sb.control.put(url, params={"resource": OURS}, json={"presence": "onphone"}, headers=headers)
    sb.control.post(
        "/_sandbox/connect/presence", json={"user": person.connect_email, "status": "available"}
    )
    assert sb.control.get(url, headers=headers).json() == {"presence": shown}


def test_throttle_per_minute_per_client(sb: Any) -> None:
    person = connect_people(sb)[4]
    url = PRESENCE.format(id=person.connect_id)
    headers = auth(sb)
    faults(sb, connect_throttle_per_min=5)
    codes = [sb.control.get(url, headers=headers).status_code for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2
    refused = sb.control.get(url, headers=headers)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    stats = sb.control.get("/_sandbox/stats").json()
    assert stats["throttled"] >= 3 and stats["in_retry_after_window"] >= 2
    sb.control.post("/_sandbox/clock/advance", json={"seconds": 61})
    assert sb.control.get(url, headers=auth(sb)).status_code == 200


async def _hub_events(sb: Any, change: Any, count: int) -> list[dict[str, Any]]:
    access_token = await asyncio.to_thread(token, sb)
    headers = {"Authorization": f"Bearer {access_token}"}
    sub = (
        await asyncio.to_thread(
            sb.control.post,
            f"{SUBSCRIPTIONS}/accounts/_me/users/_all",
            json={"events": ["*"], "ttl": "00:30:00"},
            headers=headers,
        )
    ).json()
    received: list[dict[str, Any]] = []
    opened = asyncio.Event()
    client = SignalRClient(
        sub["deliveryMethod"]["uri"],
        headers=headers,
        ssl=ssl.create_default_context(cafile=sb.ca_bundle),
        retry_count=1,
    )

    async def on_event(args: list[Any]) -> None:
        received.extend(args)

    async def on_open() -> None:
        opened.set()

    client.on("OnPresenceEvent", on_event)
    client.on_open(on_open)
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(opened.wait(), 30)
        await asyncio.to_thread(change)
        deadline = time.monotonic() + 30
        while len(received) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return received
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("field", ["userId", "unifiedUserId", "id", "user.id"])
@pytest.mark.anyio
async def test_the_events_user_id_field_is_switchable(sb: Any, field: str) -> None:
    person = connect_people(sb)[5]
    faults(sb, feed_user_field=field)

    def change() -> None:
        sb.control.post(
            "/_sandbox/connect/presence", json={"user": person.connect_email, "status": "busy"}
        )

    [event] = await _hub_events(sb, change, 1)
    head, _, tail = field.partition(".")
    got = event[head][tail] if tail else event[head]
    assert got == person.connect_id and event["presenceState"] == "busy"
    assert "userId" not in event or field == "userId"


@pytest.mark.anyio
async def test_hub_affinity_cookie_is_set_and_required(sb: Any) -> None:
    """pysignalr (>= 1.3.3) replays the negotiate cookie; a WebSocket without it is refused."""
    person = connect_people(sb)[6]
    faults(sb, hub_affinity_cookie=True)

    def change() -> None:
        sb.control.post(
            "/_sandbox/connect/presence", json={"user": person.connect_email, "status": "away"}
        )

    events = await _hub_events(sb, change, 1)
    assert [e["presenceState"] for e in events] == ["away"]
    hub = sb.world.extra["hub"]
    assert hub.affinity_refused == 0

    # Negotiate by hand, then open the WebSocket without the cookie: refused.
    access_token = await asyncio.to_thread(token, sb)
    ctx = ssl.create_default_context(cafile=sb.ca_bundle)
    async with httpx.AsyncClient(verify=ctx) as client:
        negotiated = await client.post(
            f"{sb.base_url}/univerge/hub/presence/negotiate",
            headers={"Authorization": f"Bearer {access_token}"},
        )
    assert "ARRAffinity" in negotiated.cookies
    import websockets

    ws_url = sb.base_url.replace("https://", "wss://") + (
        f"/univerge/hub/presence?id={negotiated.json()['connectionId']}&access_token={access_token}"
    )
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(ws_url, ssl=ctx):
            pass
    assert refused.value.response.status_code == 404
    assert hub.affinity_refused == 1


@pytest.mark.anyio
async def test_the_events_user_id_field_takes_any_name(sb: Any) -> None:
    person = connect_people(sb)[5]
    faults(sb, feed_user_field="subject.unifiedId")

    def change() -> None:
        sb.control.post(
            "/_sandbox/connect/presence", json={"user": person.connect_email, "status": "dnd"}
        )

    [event] = await _hub_events(sb, change, 1)
    assert event["subject"]["unifiedId"] == person.connect_id
    assert sb.control.post("/_sandbox/faults", json={"feed_user_field": ""}).status_code == 400


@pytest.mark.anyio
async def test_events_may_carry_an_id_of_their_own(sb: Any) -> None:
    person = connect_people(sb)[4]
    faults(sb, feed_event_id=True)

    def change() -> None:
        for status in ("busy", "away"):
            sb.control.post(
                "/_sandbox/connect/presence", json={"user": person.connect_email, "status": status}
            )

    events = await _hub_events(sb, change, 2)
    assert [e["userId"] for e in events] == [person.connect_id] * 2
    ids = {e["id"] for e in events}
    assert len(ids) == 2 and person.connect_id not in ids


@pytest.mark.anyio
async def test_session_scoped_events_carry_the_sessions_state_not_the_aggregate(sb: Any) -> None:
    """feed_event_scope=session: a lower write under our resource raises an event with that
    session's value (and its resource), while the user's aggregate stays higher."""
    person = connect_people(sb)[3]
    faults(sb, feed_event_scope="session")
    headers = await asyncio.to_thread(auth, sb)

    def change() -> None:
        sb.control.post(
            "/_sandbox/connect/presence", json={"user": person.connect_email, "status": "onphone"}
        )
        answer = sb.control.put(
            PRESENCE.format(id=person.connect_id),
            params={"resource": OURS},
            json={"presence": "available"},
            headers=headers,
        )
        assert answer.status_code == 204

    events = await _hub_events(sb, change, 2)
    assert [e["presenceState"] for e in events] == ["onphone", "available"]
    assert events[1]["resource"] == OURS
    shown = sb.control.get(PRESENCE.format(id=person.connect_id), headers=headers).json()
    assert shown == {"presence": "onphone"}


def test_a_subscription_longer_than_the_cap_is_refused_with_a_message(sb: Any) -> None:
    faults(sb, connect_subscription_max_ttl_s=120)
    headers = auth(sb)
    path = f"{SUBSCRIPTIONS}/accounts/_me/users/_all"
    long = sb.control.post(path, json={"events": ["*"], "ttl": "00:30:00"}, headers=headers)
    assert long.status_code == 400 and set(long.json()) == {"message"}
    short = sb.control.post(path, json={"events": ["*"], "ttl": "00:02:00"}, headers=headers)
    assert short.status_code == 200, short.text
    renewed = sb.control.post(
        f"{SUBSCRIPTIONS}/{short.json()['id']}/renew", json={}, headers=headers
    )
    assert renewed.status_code == 200


def test_a_directory_that_rejects_fields_answers_every_field_without_it(sb: Any) -> None:
    faults(sb, connect_fields_param="reject")
    headers = auth(sb, ADDRESS_BOOK)
    refused = sb.control.get(CONTACTS, params={"fields": "_all", "count": 5}, headers=headers)
    assert refused.status_code == 400
    assert refused.json() == {"message": "The given value is not supported."}
    page = sb.control.get(CONTACTS, params={"count": 5}, headers=headers)
    assert page.status_code == 200
    assert all("email" in c and "pbx" in c for c in page.json()["results"])


@pytest.mark.parametrize("kind", ["person", ""])
def test_the_type_people_have_is_switchable(sb: Any, kind: str) -> None:
    faults(sb, connect_contact_types=kind)
    headers = auth(sb, ADDRESS_BOOK)
    page = sb.control.get(CONTACTS, params={"fields": "_all", "count": 500}, headers=headers)
    people = {p.connect_id for p in connect_people(sb)}
    users = [c for c in page.json()["results"] if c["id"] in people]
    assert users and all(c.get("type") == (kind or None) for c in users)
    others = [c for c in page.json()["results"] if c["id"] not in people]
    assert {c["type"] for c in others} == {"sharedContact", "room"}


def test_the_hub_wants_its_affinity_cookie_by_default() -> None:
    from presencectl.sandbox.world import Faults

    assert Faults().hub_affinity_cookie is True
