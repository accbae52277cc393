"""Graph presence change notifications: the sandbox as Graph documents it, our receiver, the
decryption of rich notifications, and the watch that follows them (sync/notify.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx
import pytest

from presencectl.graph.notifications import (
    PresenceChange,
    Untrusted,
    decrypt_content,
    new_encryption_certificate,
    read_item,
)
from presencectl.sandbox import running_sandbox
from presencectl.sandbox.graph_notifications import encrypt_resource, load_encryption_certificate
from presencectl.sandbox.world import Person
from presencectl.sync.receiver import NotificationReceiver

pytestmark = pytest.mark.timeout(120)

APP_ID = "6f1c0d1e-0000-4000-8000-00000000a11e"
STATE = "our-client-state"


@pytest.fixture
def sb() -> Iterator[Any]:
    with running_sandbox(users=25, seed=3, allow_http_notifications=True) as sandbox:
        yield sandbox


def user_token(sb: Any, person: Person, appid: str = APP_ID) -> dict[str, str]:
    token, _ = sb.world.issue_token(
        kind="delegated", appid=appid, oid=person.azure_id, upn=person.upn,
        scp=("Presence.Read.All",),
    )  # fmt: skip
    return {"Authorization": f"Bearer {token}"}


def azure_people(sb: Any) -> list[Person]:
    return [p for p in sb.world.people if p.azure_id]


def iso_in(sb: Any, seconds: float) -> str:
    import datetime as dt

    moment = dt.datetime.fromtimestamp(sb.world.clock.now() + seconds, tz=dt.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def body_for(sb: Any, url: str, ids: list[str], **extra: Any) -> dict[str, Any]:
    quoted = ",".join(f"'{i}'" for i in ids)
    return {
        "changeType": "updated",
        "notificationUrl": url,
        "resource": f"/communications/presences?$filter=id in ({quoted})",
        "expirationDateTime": iso_in(sb, 1800),
        "clientState": STATE,
        **extra,
    }


class Running:
    """Our NotificationReceiver in a background event loop, keeping what it hands on."""

    def __init__(self, listen: str = "127.0.0.1:0", **kwargs: Any) -> None:
        self.items: list[Mapping[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.receiver = NotificationReceiver(listen, STATE, self.items.extend, **kwargs)
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.receiver.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)
        self.url = self.receiver.url + "notify"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def wait_for(self, check: Callable[[], bool], seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while not check() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert check(), "nothing arrived"


@pytest.fixture
def receiver() -> Iterator[Running]:
    r = Running()
    yield r
    r.close()


def set_teams(sb: Any, email: str, availability: str, activity: str) -> None:
    sb.control.post(
        "/_sandbox/teams/presence",
        json={"user": email, "availability": availability, "activity": activity},
    ).raise_for_status()


# -- crypto as the resource-data page describes it ------------------------------------------------


def test_rich_content_round_trips_and_a_bad_signature_is_untrusted() -> None:
    cert = new_encryption_certificate("p")
    public_key, thumbprint = load_encryption_certificate(cert.graph_value())
    resource = {"id": "u1", "availability": "Busy", "activity": "InACall"}
    content = encrypt_resource(public_key, thumbprint, cert.cert_id, resource)
    assert decrypt_content(content, cert.key_pem) == resource
    # The signature covers the encrypted bytes: one flipped bit and nothing is decrypted.
    data = bytearray(base64.b64decode(content["data"]))
    data[0] ^= 1
    tampered = {**content, "data": base64.b64encode(bytes(data)).decode()}
    with pytest.raises(Untrusted, match="dataSignature"):
        decrypt_content(tampered, cert.key_pem)
    other = new_encryption_certificate("q")
    with pytest.raises(Untrusted):
        decrypt_content(content, other.key_pem)
    item = {"subscriptionId": "s", "resourceData": {"id": "u1"}, "encryptedContent": content}
    assert read_item(item, {cert.cert_id: cert.key_pem}) == PresenceChange(
        "s", "u1", "Busy", "InACall"
    )
    with pytest.raises(Untrusted, match="certificate we do not hold"):
        read_item(item, {})


# -- the receiver ---------------------------------------------------------------------------------


def test_receiver_answers_the_handshake_and_drops_a_wrong_client_state(receiver: Running) -> None:
    token = "Validation: Testing client application reachability <a>&"
    answer = httpx.post(receiver.url, params={"validationToken": token})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text == token
    good = {"subscriptionId": "s", "clientState": STATE, "resourceData": {"id": "u1"}}
    bad = {**good, "clientState": "guess"}
    answer = httpx.post(receiver.url, json={"value": [good, bad]})
    assert answer.status_code == 202
    assert httpx.post(receiver.url, content=b"not json").status_code == 202
    receiver.wait_for(lambda: len(receiver.items) == 1)
    assert receiver.items == [good]
    counts = receiver.receiver.counts
    assert (counts.received, counts.dropped_client_state, counts.dropped_untrusted) == (2, 1, 1)


# -- the sandbox, as Graph documents it -----------------------------------------------------------


def test_basic_notifications_carry_only_the_id(sb: Any, receiver: Running) -> None:
    sync, person = sb.world.sync_user, azure_people(sb)[8]
    created = sb.control.post(
        "/v1.0/subscriptions", json=body_for(sb, receiver.url, [person.azure_id]),
        headers=user_token(sb, sync),
    )  # fmt: skip
    assert created.status_code == 201, created.text
    set_teams(sb, person.email, "Busy", "InACall")
    receiver.wait_for(lambda: bool(receiver.items))
    item = receiver.items[0]
    assert item["resourceData"] == {
        "@odata.id": f"users/{person.azure_id}/presence",
        "@odata.type": "#microsoft.graph.presence",
        "id": person.azure_id,
    }
    assert "encryptedContent" not in item
    stats = sb.control.get("/_sandbox/stats").json()
    assert stats["subscriptions_active"] == 1 and stats["notifications_delivered"] >= 1


def test_rich_notifications_are_encrypted_with_our_certificate(
    sb: Any, receiver: Running
) -> None:
    cert = new_encryption_certificate("sandbox")
    sync, person = sb.world.sync_user, azure_people(sb)[9]
    body = body_for(
        sb, receiver.url, [person.azure_id], includeResourceData=True,
        encryptionCertificate=cert.graph_value(), encryptionCertificateId=cert.cert_id,
    )  # fmt: skip
    created = sb.control.post("/v1.0/subscriptions", json=body, headers=user_token(sb, sync))
    assert created.status_code == 201, created.text
    assert created.json()["includeResourceData"] is True
    set_teams(sb, person.email, "Busy", "InAConferenceCall")
    receiver.wait_for(lambda: bool(receiver.items))
    item = receiver.items[-1]
    assert set(item["resourceData"]) == {"@odata.id", "@odata.type", "id"}
    assert "Busy" not in json.dumps(item)  # the presence travels only encrypted
    assert item["encryptedContent"]["encryptionCertificateId"] == cert.cert_id
    change = read_item(item, {cert.cert_id: cert.key_pem})
    assert change == PresenceChange(item["subscriptionId"], person.azure_id, "Busy",
                                    "InAConferenceCall")  # fmt: skip
    # includeResourceData without a certificate is refused.
    other = azure_people(sb)[10]
    bare = body_for(sb, receiver.url, [other.azure_id], includeResourceData=True)
    answer = sb.control.post("/v1.0/subscriptions", json=bare, headers=user_token(sb, other))
    assert answer.status_code == 400 and "encryptionCertificate" in answer.text


def test_subscription_limits(sb: Any, receiver: Running) -> None:
    people = azure_people(sb)
    sync, second = sb.world.sync_user, people[11]
    ids = [people[8].azure_id, people[9].azure_id]
    first = sb.control.post(
        "/v1.0/subscriptions", json=body_for(sb, receiver.url, ids), headers=user_token(sb, sync)
    )
    assert first.status_code == 201, first.text
    # One presence subscription per user per application (learn.microsoft.com).
    again = sb.control.post(
        "/v1.0/subscriptions", json=body_for(sb, receiver.url, [people[12].azure_id]),
        headers=user_token(sb, sync),
    )  # fmt: skip
    assert again.status_code == 400 and first.json()["id"] in again.text
    # Another user of the same app may not take an id already subscribed: 400 naming it.
    overlap = sb.control.post(
        "/v1.0/subscriptions", json=body_for(sb, receiver.url, [people[12].azure_id, ids[1]]),
        headers=user_token(sb, second),
    )  # fmt: skip
    assert overlap.status_code == 400 and ids[1] in overlap.text
    # Another application may.
    other_app = sb.control.post(
        "/v1.0/subscriptions", json=body_for(sb, receiver.url, ids),
        headers=user_token(sb, second, appid="0d2a57c4-0000-4000-8000-0000000000b2"),
    )  # fmt: skip
    assert other_app.status_code == 201, other_app.text
    # Reauthorize and delete.
    sub_id = first.json()["id"]
    headers = user_token(sb, sync)
    assert sb.control.post(f"/v1.0/subscriptions/{sub_id}/reauthorize", headers=headers
                           ).status_code == 204  # fmt: skip
    assert sb.control.delete(f"/v1.0/subscriptions/{sub_id}", headers=headers).status_code == 204


def test_http_notification_urls_need_the_documented_switch(receiver: Running) -> None:
    with running_sandbox(users=12, seed=2) as strict:
        person = azure_people(strict)[5]
        answer = strict.control.post(
            "/v1.0/subscriptions", json=body_for(strict, receiver.url, [person.azure_id]),
            headers=user_token(strict, strict.world.sync_user),
        )  # fmt: skip
        assert answer.status_code == 400 and "https" in answer.text


def test_https_receiver_with_a_sandbox_certificate(sb: Any, tmp_path: Any) -> None:
    pems = sb.control.post("/_sandbox/certs", json={"hostname": "127.0.0.1"}).json()
    (tmp_path / "cert.pem").write_text(pems["cert_pem"])
    (tmp_path / "key.pem").write_text(pems["key_pem"])
    secure = Running(certfile=str(tmp_path / "cert.pem"), keyfile=str(tmp_path / "key.pem"))
    try:
        assert secure.url.startswith("https://")
        person = azure_people(sb)[13]
        answer = sb.control.post(
            "/v1.0/subscriptions", json=body_for(sb, secure.url, [person.azure_id]),
            headers=user_token(sb, sb.world.sync_user),
        )  # fmt: skip
        assert answer.status_code == 201, answer.text
        set_teams(sb, person.email, "DoNotDisturb", "Presenting")
        secure.wait_for(lambda: bool(secure.items))
    finally:
        secure.close()


def test_faults_drop_delay_and_reauthorize(sb: Any, receiver: Running) -> None:
    sync, people = sb.world.sync_user, azure_people(sb)[8:10]
    body = body_for(sb, receiver.url, [p.azure_id for p in people],
                    lifecycleNotificationUrl=receiver.url)  # fmt: skip
    created = sb.control.post("/v1.0/subscriptions", json=body, headers=user_token(sb, sync))
    assert created.status_code == 201, created.text
    sb.control.post("/_sandbox/faults", json={"notify_drop_rate": 1.0}).raise_for_status()
    set_teams(sb, people[0].email, "Busy", "InACall")
    time.sleep(1.5)  # two delivery ticks: the change was due and was dropped
    assert not [i for i in receiver.items if "lifecycleEvent" not in i]
    sb.control.post("/_sandbox/faults", json={"notify_drop_rate": 0.0}).raise_for_status()
    sb.control.post("/_sandbox/faults", json={"lifecycle_reauthorize": True}).raise_for_status()
    receiver.wait_for(lambda: any("lifecycleEvent" in i for i in receiver.items))
    event = next(i for i in receiver.items if "lifecycleEvent" in i)
    assert event["lifecycleEvent"] == "reauthorizationRequired"
    assert event["subscriptionId"] == created.json()["id"] and event["clientState"] == STATE
    assert sb.control.get("/_sandbox/faults").json()["lifecycle_reauthorize"] is False


def test_delivery_is_retried_when_the_receiver_fails(sb: Any) -> None:
    failures = {"left": 2}

    class Flaky(Running):
        def __init__(self) -> None:
            super().__init__()
            original = self.receiver.accept

            def accept(raw: bytes) -> None:
                if failures["left"] > 0:
                    failures["left"] -= 1
                    raise RuntimeError("receiver down")  # uvicorn answers 500
                original(raw)

            self.receiver.accept = accept  # type: ignore[method-assign]

    flaky = Flaky()
    try:
        person = azure_people(sb)[14]
        created = sb.control.post(
            "/v1.0/subscriptions", json=body_for(sb, flaky.url, [person.azure_id]),
            headers=user_token(sb, sb.world.sync_user),
        )  # fmt: skip
        assert created.status_code == 201, created.text
        set_teams(sb, person.email, "Busy", "InACall")
        flaky.wait_for(lambda: bool(flaky.items), seconds=20)
        assert failures["left"] == 0
        notifier = sb.world.extra["graph_presence_notifier"]
        assert notifier.retried >= 2
    finally:
        flaky.close()
