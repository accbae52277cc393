"""Presence reads (chunks of 650, odd records), setPresence / clearPresence and their $batch forms;
users (paging, addresses) and presence subscriptions."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fakes import FakeClock

from presencectl.errors import AuthError
from presencectl.graph.client import GraphClient
from presencectl.graph.presence import (
    Outcome,
    PresenceWrite,
    clear_presence,
    clear_presences_batch,
    get_presences,
    iso_duration,
    parse_presence,
    set_presence,
    set_presences_batch,
)
from presencectl.graph.ratelimit import RateLimiter
from presencectl.graph.subscriptions import (
    chunk_ids,
    create_presence_subscription,
    delete_subscription,
    presence_resource,
    renew_subscription,
)
from presencectl.graph.tokens import AccessToken
from presencectl.graph.users import DirectoryUser, list_users, smtp_addresses


def client_for(handler: Any) -> GraphClient:
    clock = FakeClock()
    return GraphClient(
        "https://graph.test/v1.0",
        lambda force_refresh=False: AccessToken("t", 4_000_000_000.0),
        transport=httpx.MockTransport(handler),
        limiter=RateLimiter(clock=clock, sleep=clock.sleep),
        now=clock,
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_get_presences_reads_1301_ids_in_three_requests() -> None:
    bodies: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1.0/communications/getPresencesByUserId"
        ids = json.loads(request.content)["ids"]
        bodies.append(ids)
        return httpx.Response(
            200,
            json={
                "value": [
                    {
                        "id": i,
                        "availability": "Available",
                        "activity": "Available",
                        "sequenceNumber": "7",
                    }
                    for i in ids
                ]
            },
        )

    ids = [f"user-{i}" for i in range(1301)] + ["user-0", ""]  # a duplicate and an empty id
    result = run(get_presences(client_for(handler), ids))
    assert sorted(len(b) for b in bodies) == [1, 650, 650]
    assert len(result) == 1301 and result["user-1300"].sequence == "7"


def test_get_presences_keeps_the_rest_when_records_are_odd(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "value": [
                    {
                        "id": "a",
                        "availability": "busy",
                        "activity": "inACall",
                        "outOfOfficeSettings": {"isOutOfOffice": True, "message": "x"},
                    },
                    {
                        "id": "b",
                        "availability": "AvailableIdle",
                    },  # no activity: falls back on availability
                    {"id": "c"},  # no availability: skipped
                    {"availability": "Away", "activity": "Away"},  # no id: skipped
                    "junk",
                    {
                        "id": "e",
                        "availability": "Away",
                        "activity": "Away",
                        "outOfOfficeSettings": None,
                    },
                ]
            },
        )

    result = run(get_presences(client_for(handler), ["a", "b", "c", "d", "e"]))
    assert set(result) == {"a", "b", "e"}
    assert result["a"].availability == "busy" and result["a"].activity == "inACall"
    assert result["a"].out_of_office is True and result["e"].out_of_office is False
    assert result["b"].activity == "AvailableIdle"
    assert "skipping a presence record" in caplog.text


def test_parse_presence_rejects_non_string_fields() -> None:
    assert parse_presence({"id": 5, "availability": "Available"}) is None
    assert parse_presence({"id": "x", "availability": None}) is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (timedelta(minutes=1), "PT5M"),
        (300, "PT5M"),
        (timedelta(hours=1, minutes=30), "PT1H30M"),
        (timedelta(hours=9), "PT4H"),
        (timedelta(minutes=7, seconds=5), "PT7M5S"),
    ],
)
def test_iso_duration_clamps_to_the_accepted_range(given: Any, expected: str) -> None:
    assert iso_duration(given) == expected


def test_set_presence_sends_our_session() -> None:
    seen: list[tuple[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200)

    run(set_presence(client_for(handler), "u1", "app-id", "Busy", "InACall", timedelta(hours=1)))
    assert seen == [
        (
            "/v1.0/users/u1/presence/setPresence",
            {
                "sessionId": "app-id",
                "availability": "Busy",
                "activity": "InACall",
                "expirationDuration": "PT1H",
            },
        )
    ]


def test_clear_presence_404_means_already_gone() -> None:
    statuses = iter([200, 404])

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {"sessionId": "app-id"}
        status = next(statuses)
        body = {"error": {"code": "NotFound", "message": "no session"}} if status == 404 else None
        return httpx.Response(status, json=body)

    client = client_for(handler)
    assert run(clear_presence(client, "u1", "app-id")) is True
    assert run(clear_presence(client, "u1", "app-id")) is False


def test_clear_presence_403_raises() -> None:
    client = client_for(lambda r: httpx.Response(403, json={"error": {"code": "Forbidden"}}))
    with pytest.raises(AuthError):
        run(clear_presence(client, "u1", "app-id"))


def _batch_server(status_for: dict[str, int]) -> tuple[Any, list[dict[str, Any]]]:
    members: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        out = []
        for m in json.loads(request.content)["requests"]:
            members.append(m)
            user = m["url"].split("/")[2]
            status = status_for.get(user, 200)
            body = (
                {"error": {"code": "Code" + str(status), "message": "m"}} if status >= 400 else None
            )
            out.append({"id": m["id"], "status": status, "body": body})
        return httpx.Response(200, json={"responses": out})

    return handler, members


def test_set_presences_batch_outcomes_per_user() -> None:
    handler, members = _batch_server({"gone": 404, "denied": 403})
    writes = [
        PresenceWrite("ok1", "Available", "Available"),
        PresenceWrite("gone", "Busy", "InACall"),
        PresenceWrite("denied", "Busy", "InACall", timedelta(minutes=30)),
        PresenceWrite("ok1", "Busy", "InACall"),  # the later write for the same user wins
    ]
    outcomes = run(set_presences_batch(client_for(handler), "app-id", writes))
    assert [o.outcome for o in outcomes] == [Outcome.OK, Outcome.GONE, Outcome.FAILED, Outcome.OK]
    assert outcomes[2].error is not None and outcomes[2].error.code == "graph_forbidden"
    assert len(members) == 3
    ok1 = next(m for m in members if "/ok1/" in m["url"])
    assert ok1["body"]["activity"] == "InACall" and ok1["method"] == "POST"
    assert ok1["headers"] == {"Content-Type": "application/json"}


def test_clear_presences_batch_outcomes() -> None:
    handler, members = _batch_server({"b": 404, "c": 500})
    outcomes = run(clear_presences_batch(client_for(handler), "app-id", ["a", "b", "c"]))
    assert [(o.user_id, o.outcome) for o in outcomes] == [
        ("a", Outcome.OK),
        ("b", Outcome.GONE),
        ("c", Outcome.FAILED),
    ]
    assert outcomes[1].ok and not outcomes[2].ok
    assert all(m["url"].endswith("/presence/clearPresence") for m in members)


# -- users -------------------------------------------------------------------------------------
def test_list_users_selects_fields_and_follows_pages() -> None:
    urls: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(request.url)
        if len(urls) == 1:
            return httpx.Response(
                200,
                json={
                    "value": [
                        {
                            "id": "1",
                            "displayName": "Ann",
                            "mail": "Ann@Contoso.example",
                            "userPrincipalName": "ann@contoso.example",
                            "proxyAddresses": [
                                "SMTP:Ann@Contoso.example",
                                "smtp:a.b@alias.example",
                                "SIP:ann@contoso.example",
                                "X500:/o=x",
                            ],
                            "accountEnabled": True,
                        }
                    ],
                    "@odata.nextLink": "https://graph.test/v1.0/users?$skiptoken=abc",
                },
            )
        return httpx.Response(
            200,
            json={
                "value": [
                    {
                        "id": "2",
                        "displayName": None,
                        "mail": None,
                        "userPrincipalName": "bob@contoso.example",
                        "proxyAddresses": None,
                        "accountEnabled": False,
                    },
                    {"displayName": "no id"},
                ]
            },
        )

    users = run(list_users(client_for(handler)))
    assert [u.id for u in users] == ["1", "2"]
    assert urls[0].params["$select"] == (
        "id,displayName,mail,userPrincipalName,proxyAddresses,accountEnabled"
    )
    assert urls[0].params["$top"] == "999"
    assert smtp_addresses(users[0]) == ["ann@contoso.example", "a.b@alias.example"]
    assert smtp_addresses(users[1]) == ["bob@contoso.example"]
    assert users[1].account_enabled is False and users[1].proxy_addresses == ()


def test_smtp_addresses_ignores_non_email_values() -> None:
    user = DirectoryUser(
        "x",
        mail="",
        user_principal_name="not-an-email",
        proxy_addresses=("smtp:", "SMTP:Z@Y.example "),
    )
    assert smtp_addresses(user) == ["z@y.example"]


# -- subscriptions -----------------------------------------------------------------------------
def test_presence_resource_and_limits() -> None:
    assert presence_resource(["a", "b"]) == "/communications/presences?$filter=id in ('a','b')"
    with pytest.raises(ValueError):
        presence_resource([str(i) for i in range(651)])
    assert [len(c) for c in chunk_ids([str(i) for i in range(1301)])] == [650, 650, 1]


def test_subscription_create_renew_delete() -> None:
    seen: list[tuple[str, str, Any]] = []
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, body))
        if request.method == "POST":
            return httpx.Response(
                201,
                json={**body, "id": "sub-1", "expirationDateTime": "2025-01-01T13:00:00.0000000Z"},
            )
        if request.method == "PATCH":
            return httpx.Response(
                200, json={"id": "sub-1", "expirationDateTime": body["expirationDateTime"]}
            )
        return httpx.Response(404 if len(seen) > 3 else 204)

    client = client_for(handler)
    sub = run(
        create_presence_subscription(
            client,
            ["a", "b"],
            "https://hook.example/n",
            client_state="s3cret",
            lifetime=timedelta(hours=3),
            now=now,
        )
    )
    method, path, body = seen[0]
    assert (method, path) == ("POST", "/v1.0/subscriptions")
    assert body["resource"] == "/communications/presences?$filter=id in ('a','b')"
    assert body["expirationDateTime"] == "2025-01-01T13:00:00.000Z"  # capped at 60 min
    assert body["changeType"] == "updated" and body["clientState"] == "s3cret"
    assert sub.id == "sub-1" and sub.expires_at == datetime(2025, 1, 1, 13, tzinfo=UTC)
    new_expiry = run(renew_subscription(client, "sub-1", lifetime=timedelta(minutes=30), now=now))
    assert new_expiry == datetime(2025, 1, 1, 12, 30, tzinfo=UTC)
    assert seen[1][:2] == ("PATCH", "/v1.0/subscriptions/sub-1")
    assert run(delete_subscription(client, "sub-1")) is True
    assert run(delete_subscription(client, "sub-1")) is False
