"""The sandbox's Graph presence endpoints, $batch and presence subscriptions, over real HTTPS.

Tokens are minted by the world directly (Entra's grants are tested elsewhere); every call goes
through httpx to the running sandbox.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from presencectl.sandbox import running_sandbox
from presencectl.sandbox.people import ADMIN_EMAIL, Person

APP_ID = "6f1c0d1e-0000-4000-8000-00000000a11e"


@pytest.fixture
def sb() -> Iterator[Any]:
    with running_sandbox(users=25, seed=3, allow_http_notifications=True) as sandbox:
        yield sandbox


def app_token(
    sb: Any, roles: tuple[str, ...] = ("Presence.ReadWrite.All",), appid: str = APP_ID
) -> dict[str, str]:
    token, _ = sb.world.issue_token(kind="app", appid=appid, roles=roles)
    return {"Authorization": f"Bearer {token}"}


def user_token(
    sb: Any, person: Person, scp: tuple[str, ...] = ("Presence.Read.All",)
) -> dict[str, str]:
    token, _ = sb.world.issue_token(
        kind="delegated", appid=APP_ID, oid=person.azure_id, upn=person.upn, scp=scp
    )
    return {"Authorization": f"Bearer {token}"}


def verify_for(sb: Any) -> Any:
    import ssl

    return ssl.create_default_context(cafile=sb.ca_bundle)


def azure_people(sb: Any) -> list[Person]:
    return [p for p in sb.world.people if p.azure_id]


def set_client(
    sb: Any, email: str, availability: str, activity: str, **extra: Any
) -> dict[str, Any]:
    answer = sb.control.post(
        "/_sandbox/teams/presence",
        json={"user": email, "availability": availability, "activity": activity, **extra},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_get_presences_by_user_id_skips_unknown_ids(sb: Any) -> None:
    admin = sb.world.azure_person_by_upn(ADMIN_EMAIL)
    set_client(sb, "Admin@Contoso.example", "Busy", "InACall")
    others = [p.azure_id for p in azure_people(sb) if p is not admin][:3]
    ids = [admin.azure_id, "00000000-0000-0000-0000-000000000000", *others]
    answer = sb.control.post(
        "/v1.0/communications/getPresencesByUserId", json={"ids": ids}, headers=app_token(sb)
    )
    assert answer.status_code == 200
    values = answer.json()["value"]
    assert [v["id"] for v in values] == [admin.azure_id, *others]
    assert (values[0]["availability"], values[0]["activity"]) == ("Busy", "InACall")
    assert values[1]["availability"] == "Offline"
    assert values[0]["outOfOfficeSettings"]["isOutOfOffice"] is False
    assert isinstance(values[0]["sequenceNumber"], str)


def test_get_presences_limits_and_permissions(sb: Any) -> None:
    url = "/v1.0/communications/getPresencesByUserId"
    too_many = sb.control.post(
        url, json={"ids": [f"id-{i}" for i in range(651)]}, headers=app_token(sb)
    )
    assert too_many.status_code == 400
    assert too_many.json()["error"]["code"] == "BadRequest"
    ok = sb.control.post(url, json={"ids": [f"id-{i}" for i in range(650)]}, headers=app_token(sb))
    assert ok.status_code == 200 and ok.json()["value"] == []
    denied = sb.control.post(
        url, json={"ids": ["x"]}, headers=app_token(sb, roles=("User.Read.All",))
    )
    assert denied.status_code == 403
    assert "error" in denied.json()
    reader = sb.control.post(
        url, json={"ids": ["x"]}, headers=app_token(sb, roles=("Presence.Read.All",))
    )
    assert reader.status_code == 200
    anonymous = sb.control.post(url, json={"ids": ["x"]})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "InvalidAuthenticationToken"
    person = azure_people(sb)[1]
    delegated = sb.control.post(
        url, json={"ids": [person.azure_id]}, headers=user_token(sb, person)
    )
    assert delegated.status_code == 200
    assert delegated.json()["value"][0]["id"] == person.azure_id


def test_user_presence_and_me_presence(sb: Any) -> None:
    person = azure_people(sb)[2]
    set_client(sb, person.email, "DoNotDisturb", "Presenting")
    one = sb.control.get(f"/v1.0/users/{person.azure_id}/presence", headers=app_token(sb))
    assert one.status_code == 200
    assert (one.json()["availability"], one.json()["activity"]) == ("DoNotDisturb", "Presenting")
    missing = sb.control.get("/v1.0/users/nobody/presence", headers=app_token(sb))
    assert missing.status_code == 404
    me = sb.control.get("/v1.0/me/presence", headers=user_token(sb, person, ("Presence.Read",)))
    assert me.status_code == 200 and me.json()["id"] == person.azure_id
    app_me = sb.control.get("/v1.0/me/presence", headers=app_token(sb))
    assert app_me.status_code == 400


def test_set_presence_then_clear(sb: Any) -> None:
    person = azure_people(sb)[3]
    url = f"/v1.0/users/{person.azure_id}/presence"
    body = {
        "sessionId": APP_ID,
        "availability": "Busy",
        "activity": "InACall",
        "expirationDuration": "PT1H",
    }
    answer = sb.control.post(f"{url}/setPresence", json=body, headers=app_token(sb))
    assert answer.status_code == 200 and answer.content == b""
    state = sb.control.get("/_sandbox/teams/presence", params={"user": person.email}).json()
    assert (state["availability"], state["activity"]) == ("Busy", "InACall")
    assert state["sessions"][0]["session_id"] == APP_ID
    cleared = sb.control.post(
        f"{url}/clearPresence", json={"sessionId": APP_ID}, headers=app_token(sb)
    )
    assert cleared.status_code == 200
    again = sb.control.post(
        f"{url}/clearPresence", json={"sessionId": APP_ID}, headers=app_token(sb)
    )
    assert again.status_code == 404
    presence = sb.control.get(url, headers=app_token(sb)).json()
    assert (presence["availability"], presence["activity"]) == ("Offline", "Offline")


@pytest.mark.parametrize(
    "change",
    [
        {"availability": "Busy", "activity": "Busy"},  # valid for preferred, not for setPresence
        {"availability": "available", "activity": "available"},  # Graph is strict about case
        {"availability": "Busy", "activity": "InAMeeting"},
        {"sessionId": "someone-else"},
        {"expirationDuration": "PT4M"},
        {"expirationDuration": "PT4H1M"},
        {"expirationDuration": "soon"},
    ],
)
def test_set_presence_rejects(sb: Any, change: dict[str, str]) -> None:
    person = azure_people(sb)[4]
    body = {"sessionId": APP_ID, "availability": "Available", "activity": "Available", **change}
    answer = sb.control.post(
        f"/v1.0/users/{person.azure_id}/presence/setPresence", json=body, headers=app_token(sb)
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "BadRequest"


def test_set_presence_needs_readwrite(sb: Any) -> None:
    person = azure_people(sb)[4]
    body = {"sessionId": APP_ID, "availability": "Available", "activity": "Available"}
    url = f"/v1.0/users/{person.azure_id}/presence/setPresence"
    denied = sb.control.post(url, json=body, headers=app_token(sb, roles=("Presence.Read.All",)))
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "Forbidden"
    delegated = sb.control.post(url, json=body, headers=user_token(sb, person))
    assert delegated.status_code == 403


def test_default_session_expires_after_five_minutes_and_fades(sb: Any) -> None:
    person = azure_people(sb)[5]
    url = f"/v1.0/users/{person.azure_id}/presence"
    body = {"sessionId": APP_ID, "availability": "Available", "activity": "Available"}
    assert (
        sb.control.post(f"{url}/setPresence", json=body, headers=app_token(sb)).status_code == 200
    )
    sb.control.post("/_sandbox/clock/advance", json={"seconds": 299})
    assert sb.control.get(url, headers=app_token(sb)).json()["availability"] == "Available"
    sb.control.post("/_sandbox/clock/advance", json={"seconds": 2})
    assert sb.control.get(url, headers=app_token(sb)).json()["availability"] == "Offline"
    # A long session fades: Available → AvailableInactive (5 min) → Away (10 min).
    body["expirationDuration"] = "PT4H"
    sb.control.post(f"{url}/setPresence", json=body, headers=app_token(sb))
    seq0 = sb.control.get(url, headers=app_token(sb)).json()["sequenceNumber"]
    sb.control.post("/_sandbox/clock/advance", json={"seconds": 300})
    faded = sb.control.get(url, headers=app_token(sb)).json()
    assert (faded["availability"], faded["activity"]) == ("Available", "AvailableInactive")
    assert faded["sequenceNumber"] > seq0
    sb.control.post("/_sandbox/clock/advance", json={"seconds": 300})
    away = sb.control.get(url, headers=app_token(sb)).json()
    assert (away["availability"], away["activity"]) == ("Away", "Away")


def test_preferred_presence_wins_and_clears(sb: Any) -> None:
    person = azure_people(sb)[6]
    set_client(sb, person.email, "Available", "Available")
    url = f"/v1.0/users/{person.azure_id}/presence"
    pref = {"availability": "DoNotDisturb", "activity": "DoNotDisturb"}
    assert (
        sb.control.post(
            f"{url}/setUserPreferredPresence", json=pref, headers=app_token(sb)
        ).status_code
        == 200
    )
    assert sb.control.get(url, headers=app_token(sb)).json()["availability"] == "DoNotDisturb"
    bad = {"availability": "Busy", "activity": "InACall"}
    assert (
        sb.control.post(
            f"{url}/setUserPreferredPresence", json=bad, headers=app_token(sb)
        ).status_code
        == 400
    )
    assert (
        sb.control.post(
            f"{url}/clearUserPreferredPresence", json={}, headers=app_token(sb)
        ).status_code
        == 200
    )
    assert sb.control.get(url, headers=app_token(sb)).json()["availability"] == "Available"


def test_batch_dispatches_members(sb: Any) -> None:
    person = azure_people(sb)[7]
    requests = [
        {
            "id": "1",
            "method": "POST",
            "url": f"/users/{person.azure_id}/presence/setPresence",
            "headers": {"Content-Type": "application/json"},
            "body": {"sessionId": APP_ID, "availability": "Busy", "activity": "InAConferenceCall"},
        },
        {"id": "2", "method": "GET", "url": f"/users/{person.azure_id}/presence"},
        {
            "id": "3",
            "method": "POST",
            "url": f"/users/{person.azure_id}/presence/setPresence",
            "body": {"sessionId": APP_ID, "availability": "Busy", "activity": "Busy"},
        },
    ]
    answer = sb.control.post("/v1.0/$batch", json={"requests": requests}, headers=app_token(sb))
    assert answer.status_code == 200
    by_id = {r["id"]: r for r in answer.json()["responses"]}
    assert by_id["1"]["status"] == 200
    assert by_id["2"]["status"] == 200
    assert by_id["2"]["body"]["activity"] == "InAConferenceCall"
    assert by_id["3"]["status"] == 400
    assert by_id["3"]["body"]["error"]["code"] == "BadRequest"


def test_batch_limits(sb: Any) -> None:
    member = {"method": "GET", "url": "/me/presence"}
    too_many = [{"id": str(i), **member} for i in range(21)]
    answer = sb.control.post("/v1.0/$batch", json={"requests": too_many}, headers=app_token(sb))
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "BadRequest"
    duplicate = [{"id": "1", **member}, {"id": "1", **member}]
    assert (
        sb.control.post(
            "/v1.0/$batch", json={"requests": duplicate}, headers=app_token(sb)
        ).status_code
        == 400
    )
    assert (
        sb.control.post("/v1.0/$batch", json={"requests": [{"id": "1", **member}]}).status_code
        == 401
    )


def test_batch_members_are_throttled_one_by_one() -> None:
    with running_sandbox(users=5, throttle=5) as sandbox:
        person = azure_people(sandbox)[0]
        members = [
            {"id": str(i), "method": "GET", "url": f"/users/{person.azure_id}/presence"}
            for i in range(8)
        ]
        answer = sandbox.control.post(
            "/v1.0/$batch", json={"requests": members}, headers=app_token(sandbox)
        )
        assert answer.status_code == 200
        statuses = [r["status"] for r in answer.json()["responses"]]
        assert statuses == [200] * 5 + [429] * 3
        throttled = answer.json()["responses"][5]
        assert int(throttled["headers"]["Retry-After"]) >= 1
        assert throttled["body"]["error"]["code"] == "TooManyRequests"
        assert sandbox.world.stats.throttled == 3


# ------------------------------------------------------------------ subscriptions


class Receiver:
    """A loopback HTTP notification endpoint: answers the validation handshake, keeps posts."""

    def __init__(self, echo: bool = True) -> None:
        self.notifications: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                import json

                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                token = parse_qs(urlsplit(self.path).query).get("validationToken")
                if token:
                    text = (token[0] if echo else "nope").encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return
                outer.notifications.append(json.loads(raw))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _iso_in(sb: Any, seconds: float) -> str:
    import datetime as dt

    moment = dt.datetime.fromtimestamp(sb.world.clock.now() + seconds, tz=dt.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def subscription_body(sb: Any, url: str, ids: list[str], minutes: float = 30) -> dict[str, Any]:
    quoted = ",".join(f"'{i}'" for i in ids)
    return {
        "changeType": "updated",
        "notificationUrl": url,
        "resource": f"/communications/presences?$filter=id in ({quoted})",
        "expirationDateTime": _iso_in(sb, minutes * 60),
        "clientState": "secret-state",
    }


def test_subscription_delivers_changes_with_client_state(sb: Any, receiver: Receiver) -> None:
    sync = sb.world.sync_user
    people = azure_people(sb)[8:10]
    headers = user_token(sb, sync)
    body = subscription_body(sb, receiver.url, [p.azure_id for p in people])
    created = sb.control.post("/v1.0/subscriptions", json=body, headers=headers)
    assert created.status_code == 201, created.text
    sub = created.json()
    assert sub["clientState"] == "secret-state"
    set_client(sb, people[0].email, "Busy", "InAMeeting")
    deadline = time.monotonic() + 30
    while not receiver.notifications and time.monotonic() < deadline:
        time.sleep(0.02)
    assert receiver.notifications, "no change notification arrived"
    value = receiver.notifications[0]["value"][0]
    assert value["subscriptionId"] == sub["id"]
    assert value["clientState"] == "secret-state"
    assert value["changeType"] == "updated"
    # A basic notification carries only the id (changenotifications-for-presence.md).
    assert value["resourceData"] == {
        "@odata.id": f"users/{people[0].azure_id}/presence",
        "@odata.type": "#microsoft.graph.presence",
        "id": people[0].azure_id,
    }
    assert value["resource"] == f"communications/presences/{people[0].azure_id}"
    assert "encryptedContent" not in value
    # Time-driven changes (the fade) are notified too.
    session = {
        "sessionId": APP_ID,
        "availability": "Available",
        "activity": "Available",
        "expirationDuration": "PT4H",
    }
    url = f"/v1.0/users/{people[1].azure_id}/presence/setPresence"
    assert sb.control.post(url, json=session, headers=app_token(sb)).status_code == 200
    sb.control.post("/_sandbox/clock/advance", json={"seconds": 300})
    deadline = time.monotonic() + 30
    notified: list[dict[str, Any]] = []
    while not notified and time.monotonic() < deadline:
        time.sleep(0.02)
        notified = [
            v
            for n in list(receiver.notifications)
            for v in n["value"]
            if v["resourceData"]["id"] == people[1].azure_id
        ]
    assert notified, "the fade to AvailableInactive was not notified"
    renewed = sb.control.patch(
        f"/v1.0/subscriptions/{sub['id']}",
        json={"expirationDateTime": _iso_in(sb, 3000)},
        headers=headers,
    )
    assert renewed.status_code == 200
    too_far = sb.control.patch(
        f"/v1.0/subscriptions/{sub['id']}",
        json={"expirationDateTime": _iso_in(sb, 3700)},
        headers=headers,
    )
    assert too_far.status_code == 400
    assert sb.control.delete(f"/v1.0/subscriptions/{sub['id']}", headers=headers).status_code == 204
    assert sb.control.get(f"/v1.0/subscriptions/{sub['id']}", headers=headers).status_code == 404


def test_subscription_refusals(sb: Any, receiver: Receiver) -> None:
    person = azure_people(sb)[8]
    ids = [person.azure_id]
    sync_headers = user_token(sb, sb.world.sync_user)
    app = sb.control.post(
        "/v1.0/subscriptions", json=subscription_body(sb, receiver.url, ids), headers=app_token(sb)
    )
    assert app.status_code == 403
    many = subscription_body(sb, receiver.url, [f"id{i}" for i in range(651)])
    assert (
        sb.control.post("/v1.0/subscriptions", json=many, headers=sync_headers).status_code == 400
    )
    long = subscription_body(sb, receiver.url, ids, minutes=61)
    assert (
        sb.control.post("/v1.0/subscriptions", json=long, headers=sync_headers).status_code == 400
    )
    bad_receiver = Receiver(echo=False)
    try:
        bad = subscription_body(sb, bad_receiver.url, ids)
        answer = sb.control.post("/v1.0/subscriptions", json=bad, headers=sync_headers)
        assert answer.status_code == 400
        assert "validation" in answer.json()["error"]["message"].lower()
    finally:
        bad_receiver.close()


# ------------------------------------------------------------------ control API shapes


def test_control_teams_presence_shapes(sb: Any) -> None:
    person = azure_people(sb)[10]
    doc = set_client(sb, person.email.upper(), "Away", "Away", out_of_office=True)
    assert {"availability", "activity", "out_of_office", "sessions", "preferred"} <= set(doc)
    assert doc["out_of_office"] is True
    assert doc["activity"] == "OutOfOffice"
    pref = sb.control.post(
        "/_sandbox/teams/preferred",
        json={"user": person.email, "availability": "BeRightBack", "activity": "BeRightBack"},
    )
    assert pref.json()["preferred"]["availability"] == "BeRightBack"
    assert pref.json()["availability"] == "BeRightBack"
    cleared = sb.control.post(
        "/_sandbox/teams/preferred", json={"user": person.email, "clear": True}
    )
    assert cleared.json()["preferred"] is None
    unknown = sb.control.get("/_sandbox/teams/presence", params={"user": "nobody@contoso.example"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_user"
    invalid = sb.control.post(
        "/_sandbox/teams/presence", json={"user": person.email, "availability": "Sleeping"}
    )
    assert invalid.status_code == 400
    bad_pref = sb.control.post(
        "/_sandbox/teams/preferred",
        json={"user": person.email, "availability": "Busy", "activity": "InACall"},
    )
    assert bad_pref.status_code == 400


def test_fifty_thousand_presences_by_user_id() -> None:
    # How long the read takes (< 30 s) is a row of bench/timings.py, not an assert here.
    with running_sandbox(users=50_000, throttle=100_000) as sandbox:
        ids = [p.azure_id for p in sandbox.world.people if p.azure_id]
        now = sandbox.world.clock.now()
        people = sandbox.world.people
        for i, person in enumerate(people):  # a realistic mix, not all Offline
            if person.azure_id and i % 3:
                pair = ("Busy", "InACall") if i % 3 == 1 else ("Available", "Available")
                person.teams.set_client(*pair, None, now)
        headers = app_token(sandbox, roles=("Presence.Read.All",))
        seen: dict[str, str] = {}
        requests = 0
        with httpx.Client(
            base_url=sandbox.base_url, verify=verify_for(sandbox), timeout=60
        ) as client:
            for start in range(0, len(ids), 650):
                answer = client.post(
                    "/v1.0/communications/getPresencesByUserId",
                    json={"ids": ids[start : start + 650]},
                    headers=headers,
                )
                assert answer.status_code == 200
                for presence in answer.json()["value"]:
                    seen[presence["id"]] = presence["availability"]
                requests += 1
    assert requests == -(-len(ids) // 650)
    assert set(seen) == set(ids)  # every id answered once, none twice
    busy = sum(1 for a in seen.values() if a == "Busy")
    assert busy == sum(1 for i, p in enumerate(people) if p.azure_id and i % 3 == 1)


def test_writes_are_counted_per_side_and_user(sb: Any) -> None:
    """What the soak checks its audit against, pair by pair (bench/soak.py): each write a
    route took, under the user it was for; a clear with nothing to clear (404) is no write."""
    person = azure_people(sb)[4]
    url = f"/v1.0/users/{person.azure_id}/presence"
    body = {"sessionId": APP_ID, "availability": "Away", "activity": "Away",
            "expirationDuration": "PT1H"}  # fmt: skip
    clear = {"sessionId": APP_ID}

    def post(action: str, data: dict[str, Any]) -> int:
        return sb.control.post(f"{url}/{action}", json=data, headers=app_token(sb)).status_code

    assert [post("setPresence", body), post("clearPresence", clear)] == [200, 200]
    assert post("clearPresence", clear) == 404
    stats = sb.control.get("/_sandbox/stats").json()
    assert stats["writes_by_user"] == {f"teams:{person.azure_id}": 2}
    assert stats["writes"] == 2
