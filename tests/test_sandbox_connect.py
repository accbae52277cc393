"""The sandbox's Connect REST API and change feed (SignalR, with pysignalr) over real HTTPS,
and the fault keys that switch it between the plausible answers of the real service."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pysignalr.client import SignalRClient

from presencectl.sandbox import running_sandbox
from presencectl.sandbox.connect_api import parse_ttl
from presencectl.sandbox.people import ADMIN_EMAIL

PRESENCE = "/univerge/api/messaging/v1/presence/accounts/_me/users/{id}"
SUBSCRIPTIONS = "/univerge/api/messaging/v1/subscriptions"
CONTACTS = "/univerge/api/address-book/v3/accounts/_me/contacts"
TOKEN = "/univerge/login/user/connect/token"
MESSAGING = "api.service.messaging"
ADDRESS_BOOK = "api.service.address-book"
OURS = "5b1f6d3e-2c4a-4e8b-9f7d-0a1b2c3d4e5f"  # a session resource: a GUID


@pytest.fixture
def sb() -> Iterator[Any]:
    with running_sandbox(users=25, seed=5) as sandbox:
        yield sandbox


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ask_token(sb: Any, scope: str | None) -> httpx.Response:
    profile = sb.profile_info()
    form = {
        "grant_type": "client_credentials",
        "client_id": profile["connect_client_id"],
        "client_secret": profile["connect_client_secret"],
    }
    if scope is not None:
        form["scope"] = scope
    answer: httpx.Response = sb.control.post(TOKEN, data=form)
    return answer


def token(sb: Any, scope: str = MESSAGING) -> str:
    answer = ask_token(sb, scope)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    return str(body["access_token"])


def auth(sb: Any, scope: str = MESSAGING) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sb, scope)}"}


def connect_people(sb: Any) -> list[Any]:
    return [p for p in sb.world.people if p.connect_id]


def test_token_refuses_wrong_client(sb: Any) -> None:
    profile = sb.profile_info()
    wrong = sb.control.post(
        "/univerge/login/user/connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": profile["connect_client_id"],
            "client_secret": "nope",
        },
    )
    assert wrong.status_code == 400
    assert wrong.json() == {"error": "invalid_client"}


def test_missing_or_expired_token_is_401(sb: Any) -> None:
    person = connect_people(sb)[0]
    url = PRESENCE.format(id=person.connect_id)
    assert sb.control.get(url).status_code == 401
    headers = auth(sb)
    assert sb.control.get(url, headers=headers).status_code == 200
    sb.control.post("/_sandbox/clock/advance", json={"seconds": 3601})
    assert sb.control.get(url, headers=headers).status_code == 401


def test_contacts_come_in_the_sdk_shape_with_shared_contacts_and_rooms() -> None:
    with running_sandbox(users=1200, seed=2) as sandbox:
        headers = auth(sandbox, ADDRESS_BOOK)
        contacts: list[dict[str, Any]] = []
        offset: str | None = None
        pages = 0
        while True:
            params = {"fields": "_all", "count": "500"}
            if offset:
                params["offsetToken"] = offset
            answer = sandbox.control.get(CONTACTS, params=params, headers=headers)
            assert answer.status_code == 200
            body = answer.json()
            assert set(body) == {"results", "nextPageOffsetToken"}
            contacts += body["results"]
            pages += 1
            offset = body["nextPageOffsetToken"]
            if offset is None:
                break
        assert pages == 3
        users = [c for c in contacts if c["type"] == "user"]
        others = [c for c in contacts if c["type"] != "user"]
        assert len(users) == len(connect_people(sandbox))
        assert {c["type"] for c in others} == {"sharedContact", "room"}
        assert len({c["id"] for c in contacts}) == len(contacts)
        admin = next(c for c in users if c["email"].lower() == ADMIN_EMAIL)
        assert not {"roles", "firstName", "lastName"} & set(admin)  # Contact.cs has none of them
        assert admin["pbx"]["enabled"] is True and admin["pbx"]["extension"]
        assert admin["messaging"]["enabled"] is True and admin["messaging"]["jid"]
        # without fields=_all fewer fields come back (the SDK always asks for _all)
        lean = sandbox.control.get(CONTACTS, params={"count": "5"}, headers=headers).json()
        assert all(set(c) == {"id", "type", "displayName"} for c in lean["results"])
        assert len(lean["results"]) == 5
        for bad in ({"offsetToken": "garbage!"}, {"count": "0"}, {"count": "501"}):
            assert sandbox.control.get(CONTACTS, params=bad, headers=headers).status_code == 400


def test_presence_resources_aggregate(sb: Any) -> None:
    person = connect_people(sb)[1]
    url = PRESENCE.format(id=person.connect_id)
    headers = auth(sb)
    assert sb.control.get(url, headers=headers).json() == {"presence": "offline"}
    sb.control.post(
        "/_sandbox/connect/presence",
        json={"user": person.connect_email.upper(), "status": "available"},
    )
    assert sb.control.get(url, headers=headers).json() == {"presence": "available"}
    put = sb.control.put(
        url, params={"resource": OURS}, json={"presence": "onphone"}, headers=headers
    )
    assert put.status_code == 204
    assert sb.control.get(url, headers=headers).json() == {"presence": "onphone"}
    state = sb.control.get(
        "/_sandbox/connect/presence", params={"user": person.connect_email}
    ).json()
    assert state["status"] == "onphone"
    assert {r["resource"]: r["status"] for r in state["resources"]} == {
        "app": "available",
        OURS: "onphone",
    }
    bad = sb.control.put(
        url, params={"resource": OURS}, json={"presence": "Available"}, headers=headers
    )
    assert bad.status_code == 400
    assert sb.control.delete(url, params={"resource": OURS}, headers=headers).status_code == 204
    assert sb.control.delete(url, params={"resource": OURS}, headers=headers).status_code == 404
    assert sb.control.get(url, headers=headers).json() == {"presence": "available"}
    assert sb.control.get(PRESENCE.format(id="nobody"), headers=headers).status_code == 404
    for name in ("presencectl", "not-a-guid"):  # a resource is a GUID
        refused = sb.control.put(
            url, params={"resource": name}, json={"presence": "busy"}, headers=headers
        )
        assert refused.status_code == 400 and "GUID" in refused.json()["message"]


def test_control_connect_errors(sb: Any) -> None:
    unknown = sb.control.post(
        "/_sandbox/connect/presence", json={"user": "ghost@contoso.example", "status": "busy"}
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_user"
    person = connect_people(sb)[2]
    invalid = sb.control.post(
        "/_sandbox/connect/presence", json={"user": person.connect_email, "status": "sleeping"}
    )
    assert invalid.status_code == 400
    missing = sb.control.get("/_sandbox/connect/presence", params={"user": "ghost@contoso.example"})
    assert missing.status_code == 404


def test_subscription_create_renew_delete(sb: Any) -> None:
    headers = auth(sb)
    created = sb.control.post(
        f"{SUBSCRIPTIONS}/accounts/_me/users/_all",
        json={"events": ["*"], "ttl": "00:30:00"},
        headers=headers,
    )
    assert created.status_code == 200
    sub = created.json()
    hub_base = sb.base_url.replace("127.0.0.1", "localhost")  # a host name: cookies stick
    assert (
        sub["deliveryMethod"]["uri"]
        == f"{hub_base}/univerge/hub/presence?subscriptionId={sub['id']}"
    )
    assert sub["whenExpired"].endswith("Z")
    renewed = sb.control.post(f"{SUBSCRIPTIONS}/{sub['id']}/renew", json={}, headers=headers)
    assert renewed.status_code == 200 and renewed.json()["id"] == sub["id"]
    assert sb.control.delete(f"{SUBSCRIPTIONS}/{sub['id']}", headers=headers).status_code == 204
    assert sb.control.post(f"{SUBSCRIPTIONS}/{sub['id']}/renew", headers=headers).status_code == 404
    bad_ttl = sb.control.post(
        f"{SUBSCRIPTIONS}/accounts/_me/users/_all",
        json={"events": ["*"], "ttl": "half an hour"},
        headers=headers,
    )
    assert bad_ttl.status_code == 400


def test_subscription_expires_with_the_clock(sb: Any) -> None:
    headers = auth(sb)
    sub = sb.control.post(
        f"{SUBSCRIPTIONS}/accounts/_me/users/_all",
        json={"events": ["*"], "ttl": "00:05:00"},
        headers=headers,
    ).json()
    sb.control.post("/_sandbox/clock/advance", json={"seconds": 301})
    assert sb.control.post(f"{SUBSCRIPTIONS}/{sub['id']}/renew", headers=headers).status_code == 404


@pytest.mark.parametrize(
    ("text", "seconds"), [("00:30:00", 1800), ("1.00:00:00", 86400), ("01:00:05", 3605)]
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.anyio
async def test_change_feed_delivers_on_presence_events(sb: Any) -> None:
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
    person = connect_people(sb)[3]
    try:
        await asyncio.wait_for(opened.wait(), 5)
        # The user's own app changes (control API), then our PUT raises the aggregate.
        await asyncio.to_thread(
            sb.control.post,
            "/_sandbox/connect/presence",
            json={"user": person.connect_email, "status": "available"},
        )
        await asyncio.to_thread(
            sb.control.put,
            PRESENCE.format(id=person.connect_id),
            params={"resource": OURS},
            json={"presence": "meeting"},
            headers=headers,
        )
        # A write that does not change the aggregate publishes nothing.
        await asyncio.to_thread(
            sb.control.post,
            "/_sandbox/connect/presence",
            json={"user": person.connect_email, "status": "away"},
        )
        deadline = time.monotonic() + 30
        while len(received) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert [e["presenceState"] for e in received] == ["available", "meeting"]
        assert all(e["userId"] == person.connect_id for e in received)
        assert received[0]["whenRaised"].endswith("Z")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_connect_presence_httpx_async_smoke(sb: Any) -> None:
    """One PUT through an async client: the routes are not tied to the sync control client."""

    async def main() -> int:
        ctx = ssl.create_default_context(cafile=sb.ca_bundle)
        access_token = await asyncio.to_thread(token, sb)
        person = connect_people(sb)[4]
        async with httpx.AsyncClient(base_url=sb.base_url, verify=ctx) as client:
            answer = await client.put(
                PRESENCE.format(id=person.connect_id),
                params={"resource": OURS},
                json={"presence": "busy"},
                headers={"Authorization": f"Bearer {access_token}"},
            )
            return answer.status_code

    assert asyncio.run(main()) == 204


def test_writes_are_counted_per_side_and_user(sb: Any) -> None:
    """The Connect half of what the soak checks its audit against (bench/soak.py)."""
    person = connect_people(sb)[1]
    url = PRESENCE.format(id=person.connect_id)
    mine = {"resource": OURS}
    put = sb.control.put(url, params=mine, json={"presence": "away"}, headers=auth(sb))
    assert put.status_code == 204
    assert sb.control.delete(url, params=mine, headers=auth(sb)).status_code == 204
    assert sb.control.delete(url, params=mine, headers=auth(sb)).status_code == 404
    stats = sb.control.get("/_sandbox/stats").json()
    assert stats["writes_by_user"] == {f"connect:{person.connect_id}": 2}
