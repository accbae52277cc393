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
from presencectl.sandbox.people import Person
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

    def wait_for(self, check: Callable[[], bool], seconds: float = 30) -> None:
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
    assert httpx.post(receiver.url, content=b"not json").status_code == 400
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


def test_rich_notifications_are_encrypted_with_our_certificate(sb: Any, receiver: Running) -> None:
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


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Empty Payload. JSON content expected."),
        (b"{not json", "Unable to read JSON request payload."),
        (b"[]", "Invalid request body: a JSON object is expected."),
    ],
)
def test_a_subscription_body_that_is_no_json_object_gets_graphs_answer(
    sb: Any, body: bytes, message: str
) -> None:
    """The same words as every other Graph endpoint of the sandbox (one reader, errors.py)."""
    headers = {**user_token(sb, sb.world.sync_user), "Content-Type": "application/json"}
    answer = sb.control.post("/v1.0/subscriptions", content=body, headers=headers)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["code"] == "BadRequest"
    assert error["message"].startswith(message)


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
    # Graph's answer, typo and all (microsoft-graph-docs-contrib#2219, msgraph-sdk-go#596).
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "ExtensionError"
    assert again.json()["error"]["message"] == (
        "Operation: Create; Exception: [Status Code: Conflict; Reason: A subscripton already "
        "exists. It must be deleted before a another can be made.]"
    )
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


def test_subscription_list_is_per_user_and_app(sb: Any, receiver: Running) -> None:
    """subscription-list.md: a delegated token lists what this app created for the signed-in
    user, without clientState; a subscription stays until deleted or expired."""
    people = azure_people(sb)
    alice, bob = people[8], people[9]
    mine = sb.control.post(
        "/v1.0/subscriptions", json=body_for(sb, receiver.url, [people[10].azure_id]),
        headers=user_token(sb, alice),
    )  # fmt: skip
    assert mine.status_code == 201, mine.text
    theirs = sb.control.post(
        "/v1.0/subscriptions", json=body_for(sb, receiver.url, [people[11].azure_id]),
        headers=user_token(sb, bob),
    )  # fmt: skip
    assert theirs.status_code == 201, theirs.text

    def listed(person: Person, appid: str = APP_ID) -> list[dict[str, Any]]:
        answer = sb.control.get("/v1.0/subscriptions", headers=user_token(sb, person, appid))
        assert answer.status_code == 200, answer.text
        return list(answer.json()["value"])

    (only,) = listed(alice)
    assert only["id"] == mine.json()["id"] and only["clientState"] is None
    assert only["creatorId"] == alice.azure_id and only["applicationId"] == APP_ID
    assert [s["id"] for s in listed(bob)] == [theirs.json()["id"]]
    assert listed(alice, appid="0d2a57c4-0000-4000-8000-0000000000b2") == []


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

    def dropped() -> int:
        return int(sb.control.get("/_sandbox/stats").json()["notifications_dropped"])

    receiver.wait_for(lambda: dropped() >= 1)  # the change was due, and the sandbox dropped it
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

            def accept(items: list[Mapping[str, Any]]) -> None:
                if failures["left"] > 0:
                    failures["left"] -= 1
                    raise RuntimeError("receiver down")  # uvicorn answers 500
                original(items)

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


# -- the watch, end to end ------------------------------------------------------------------------

ADMIN = "admin@contoso.example"
NEW_PASSWORD = "N3w-Sync-Passw0rd!"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def org(cli: Any) -> Iterator[Any]:
    """A sandbox (http loopback notifications allowed) with a complete, enabled profile."""
    with running_sandbox(
        users=30, seed=3, auto_approve=ADMIN, allow_http_notifications=True
    ) as sandbox:
        info = sandbox.profile_info()
        from presencectl.connect.client import ensure_resource_id

        sandbox.resource = ensure_resource_id(sandbox.write_profile("sandbox"))  # type: ignore[attr-defined]
        assert cli("--profile", "sandbox", "setup-azure", "--no-input").exit_code == 0
        sandbox.control.post(
            f"/_sandbox/users/{info['sync_user']}/password", json={"password": NEW_PASSWORD}
        ).raise_for_status()
        run = cli(
            "--profile", "sandbox", "sync-user", "set", "--username", info["sync_user"],
            "--password-stdin", input=NEW_PASSWORD + "\n",
        )  # fmt: skip
        assert run.exit_code == 0, run.stderr
        assert cli("--profile", "sandbox", "sync-user", "validate").exit_code == 0
        assert cli("--profile", "sandbox", "enable").exit_code == 0
        report = cli("--profile", "sandbox", "-o", "json", "users").json()
        matched = {r["email"] for r in report if r["status"] == "matched"}
        sandbox.people = [  # type: ignore[attr-defined]
            p for p in sandbox.world.people
            if p.email in matched and p.email not in (ADMIN, info["sync_user"])
        ]  # fmt: skip
        yield sandbox


def connect_session(sb: Any, email: str) -> str | None:
    shown = sb.control.get("/_sandbox/connect/presence", params={"user": email}).json()
    ours = [r["status"] for r in shown["resources"] if r["resource"] == sb.resource]
    return ours[0] if ours else None


def watch_with_notifications(
    sb: Any,
    scenario: Callable[[Any], Any],
    *,
    rich: bool = True,
    interval: float = 3600,
    notify_url: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Run the engine's watch (Teams polled only once: interval and reconcile of an hour) while
    ``scenario(engine)`` (a coroutine function) acts; returns the result and the status."""
    from presencectl.config import load_profile
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.model import Direction
    from presencectl.sync.notify import NotifyOptions, notifications_summary
    from presencectl.sync.service import engine_for

    profile = load_profile("sandbox")
    port = free_port()
    notify = NotifyOptions(
        notify_url=notify_url or f"http://127.0.0.1:{port}/presencectl",
        profile="sandbox",
        listen=f"127.0.0.1:{port}",
        reconcile_interval=3600,
        rich=rich,
    )
    options = EngineOptions(direction=Direction.BOTH, interval=interval, notify=notify)

    async def go() -> tuple[Any, dict[str, Any]]:
        stop = asyncio.Event()
        async with engine_for(profile, options) as engine:
            watching = asyncio.create_task(engine.watch(stop=stop))
            try:
                await asyncio.wait_for(scenario(engine), 60)
            finally:
                stop.set()
                result = await watching
            summary = notifications_summary(engine.store)
        return result, summary or {}

    return asyncio.run(go())


async def until(check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def presence_reads(sb: Any) -> int:
    return int(sb.control.get("/_sandbox/stats").json()["requests"].get(
        "graph.getPresencesByUserId", 0))  # fmt: skip


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "basic"])
def test_teams_change_reaches_connect_by_notification_not_by_poll(org: Any, rich: bool) -> None:
    person = org.people[3]
    reads: dict[str, int] = {}

    async def scenario(engine: Any) -> None:
        await until(lambda: engine.notifications is not None and engine.notifications.active)
        assert engine.notifications.poll_interval() == 3600  # everyone covered: reconcile only
        (sub,) = org.world.extra["graph_presence_notifier"].live()
        assert sub.creator_id == org.world.sync_user.azure_id  # the sync user owns it
        await until(lambda: bool(engine.states))  # the watch's first (and only) poll is done
        reads["before"] = await asyncio.to_thread(presence_reads, org)
        await asyncio.to_thread(set_teams, org, person.email, "Busy", "InACall")
        await until(lambda: connect_session(org, person.email) == "onphone")
        reads["after"] = await asyncio.to_thread(presence_reads, org)

    result, summary = watch_with_notifications(org, scenario, rich=rich)
    assert result.cycles == 1  # one poll at the start: the change came by notification
    # Rich notifications carry the presence; basic ones cost one bulk read of the notified ids.
    assert reads["after"] - reads["before"] == (0 if rich else 1)
    assert summary["received"] >= 1 and summary["dropped"] == 0
    assert summary["last_notification"] is not None
    # A clean stop deletes the subscriptions, in Graph and in the state database.
    stats = org.control.get("/_sandbox/stats").json()
    assert stats["subscriptions_active"] == 0 and stats["notifications_delivered"] >= 1
    from presencectl.sync.state import StateStore

    with StateStore.for_profile("sandbox") as store:
        assert [s for s in store.subscriptions() if s.side == "graph"] == []


def test_reauthorization_required_renews_and_status_reports(org: Any, cli: Any) -> None:
    renewals: dict[str, int] = {}

    async def scenario(engine: Any) -> None:
        await until(lambda: engine.notifications is not None and engine.notifications.active)
        await asyncio.to_thread(
            org.control.post, "/_sandbox/faults", json={"lifecycle_reauthorize": True}
        )

        def renewed() -> bool:
            stats = org.control.get("/_sandbox/stats").json()["requests"]
            renewals["count"] = stats.get("graph.subscriptions.renew", 0)
            return renewals["count"] >= 1

        await until(renewed)
        status = await asyncio.to_thread(cli, "--profile", "sandbox", "-o", "json", "status")
        renewals["status"] = status.json()

    watch_with_notifications(org, scenario)
    assert renewals["count"] >= 1
    teams = renewals["status"]["teams_notifications"]
    assert teams["mode"] == "notifications" and teams["subscriptions"] == 1
    assert teams["next_renewal"] is not None


def test_unreachable_receiver_falls_back_to_polling_and_says_why(org: Any) -> None:
    seen: dict[str, Any] = {}

    async def scenario(engine: Any) -> None:
        await until(lambda: engine.notifications is not None
                    and "refused" in engine.notifications.reason)  # fmt: skip
        seen["interval"] = engine.notifications.poll_interval()
        seen["reason"] = engine.notifications.reason

    # Graph is told a URL where nothing answers: the handshake fails, no subscription.
    watch_with_notifications(
        org, scenario, interval=7, notify_url=f"http://127.0.0.1:{free_port()}/nobody"
    )
    assert seen["interval"] == 7
    assert "validation" in seen["reason"].lower()


def _loopback_options() -> tuple[Any, Any]:
    """The sandbox profile, and engine options with Teams notifications to a loopback receiver."""
    from presencectl.config import load_profile
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.model import Direction
    from presencectl.sync.notify import NotifyOptions

    port = free_port()
    notify = NotifyOptions(
        notify_url=f"http://127.0.0.1:{port}/", profile="sandbox", listen=f"127.0.0.1:{port}"
    )
    return load_profile("sandbox"), EngineOptions(direction=Direction.BOTH, notify=notify)


def test_disable_deletes_subscriptions_a_crash_left_behind(org: Any, cli: Any) -> None:
    from presencectl.sync.service import engine_for

    profile, options = _loopback_options()

    async def crash() -> None:
        async with engine_for(profile, options) as engine:
            await engine.refresh_directory(force=True)
            await engine._start_notifications(asyncio.Queue())
            await engine._follow_directory_with_notifications()
            assert engine.notifications is not None and engine.notifications.active
            await engine.notifications.receiver.close()  # the process dies: nothing deleted

    asyncio.run(crash())
    assert org.control.get("/_sandbox/stats").json()["subscriptions_active"] == 1
    result = cli("--profile", "sandbox", "-o", "json", "disable", "--yes")
    assert result.exit_code == 0, result.stderr
    assert org.control.get("/_sandbox/stats").json()["subscriptions_active"] == 0


def test_cli_watch_with_notify_url_and_bad_flags(org: Any, cli: Any) -> None:
    port = free_port()
    result = cli(
        "--profile", "sandbox", "-o", "json", "sync", "--watch", "--interval", "0.5",
        "--reconcile-interval", "1", "--max-cycles", "2",
        "--notify-url", f"http://127.0.0.1:{port}/", "--listen", f"127.0.0.1:{port}",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    note = next(e for e in events if e["event"] == "notifications")
    assert note["listen"] == f"http://127.0.0.1:{port}/"
    assert org.control.get("/_sandbox/stats").json()["subscriptions_active"] == 0
    bad = cli("--profile", "sandbox", "sync", "--watch", "--notify-url", "http://example.com/x")
    assert bad.exit_code == 2 and "https" in bad.stderr
    bad = cli("--profile", "sandbox", "sync", "--watch", "--notify-url", "https://example.com/",
              "--listen", "nowhere")  # fmt: skip
    assert bad.exit_code == 2 and "HOST:PORT" in bad.stderr


def test_our_own_write_notified_back_is_an_echo(org: Any) -> None:
    """Connect agent_onphone → Teams Busy/InACall (ours); Graph notifies that change, and the
    echo rule must not write onphone back over agent_onphone; when the call ends, Teams follows."""
    person = org.people[5]

    def teams_pair() -> str:
        shown = org.control.get("/_sandbox/teams/presence", params={"user": person.email}).json()
        return f"{shown['availability']}/{shown['activity']}"

    set_teams(org, person.email, "Away", "Away")  # their own client: idle

    async def scenario(engine: Any) -> None:
        await until(lambda: engine.notifications is not None and engine.notifications.active)
        received = engine.notifications.receiver.counts
        before = received.received
        await asyncio.to_thread(
            org.control.post, "/_sandbox/connect/presence",
            json={"user": person.email, "status": "agent_onphone"},
        )  # fmt: skip
        await until(lambda: teams_pair() == "Busy/InACall")
        await until(lambda: received.received > before)  # Graph told us about our own write
        await asyncio.sleep(0.5)
        assert connect_session(org, person.email) is None  # nothing written back to Connect
        await asyncio.to_thread(
            org.control.post, "/_sandbox/connect/presence",
            json={"user": person.email, "status": "available"},
        )  # fmt: skip
        await until(lambda: teams_pair() == "Available/Available")

    watch_with_notifications(org, scenario)
    assert connect_session(org, person.email) is None


# -- the hand-off and the certificate, without a network ------------------------------------------


def _notes(tmp_path: Any, **kwargs: Any) -> Any:
    from presencectl.sync.notify import NotifyOptions, TeamsNotifications
    from presencectl.sync.state import StateStore

    store = StateStore(tmp_path / "state.db")
    return TeamsNotifications(
        NotifyOptions(notify_url="https://sync.example.com/", profile="p"),
        graph=None, store=store, profile="p", interval=5.0, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def test_overflow_asks_for_a_full_poll_and_never_blocks(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import presencectl.sync.notify as notify

    monkeypatch.setattr(notify, "QUEUE_MAX", 2)
    wake: asyncio.Queue[Any] = asyncio.Queue()
    notes = _notes(tmp_path, wake=wake)
    notes.subscriptions["s"] = object()
    items = [{"subscriptionId": "s", "resourceData": {"id": f"u{i}"}} for i in range(5)]
    notes._accept(items)
    notes._accept(items[:1])
    assert wake.qsize() == 1  # one wake-up, however many items
    changes, full = notes.drain()
    assert full and [c.user_id for c in changes] == ["u0", "u1"]
    assert notes.drain() == ([], False)


def test_untrusted_rich_notification_is_dropped_without_its_content(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cert = new_encryption_certificate("p")
    public_key, thumbprint = load_encryption_certificate(cert.graph_value())
    content = encrypt_resource(
        public_key,
        thumbprint,
        cert.cert_id,
        {"id": "u1", "availability": "Busy", "activity": "InACall"},
    )
    forged = {**content, "dataSignature": base64.b64encode(b"x" * 32).decode()}
    notes = _notes(tmp_path)
    notes._keys[cert.cert_id] = cert.key_pem
    notes.receiver = NotificationReceiver("127.0.0.1:0", STATE, lambda items: None)
    notes.subscriptions["s"] = object()
    good = {"subscriptionId": "s", "resourceData": {"id": "u1"}, "encryptedContent": content}
    notes._accept([good, {**good, "encryptedContent": forged}])
    with caplog.at_level("WARNING"):
        changes, full = notes.drain()
    assert changes == [PresenceChange("s", "u1", "Busy", "InACall")] and not full
    assert notes.receiver.counts.dropped_untrusted == 1
    assert "dataSignature" in caplog.text and "InACall" not in caplog.text


def test_certificate_is_kept_in_the_secret_store_and_rotated_before_expiry(tmp_path: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from presencectl import secrets as secret_store
    from presencectl.graph.notifications import EncryptionCertificate

    notes = _notes(tmp_path)
    notes._load_certificate()
    first = notes.certificate
    assert first is not None
    stored = EncryptionCertificate.from_json(secret_store.get_secret("p", "notify_certificate"))
    assert stored == first
    again = _notes(tmp_path)
    again._load_certificate()
    assert again.certificate == first  # reused, not remade
    old = new_encryption_certificate("p", now=datetime.now(UTC) - timedelta(days=25))
    secret_store.set_secret("p", "notify_certificate", old.to_json())
    rotated = _notes(tmp_path)
    rotated._load_certificate()
    assert rotated.certificate is not None and rotated.certificate.cert_id != old.cert_id
    assert set(rotated._keys) == {old.cert_id, rotated.certificate.cert_id}  # old still opens
    previous = secret_store.get_secret("p", "notify_certificate_previous")
    assert EncryptionCertificate.from_json(previous) == old


def test_a_busy_listen_port_means_polling_with_the_reason(tmp_path: Any) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        notes = _notes(tmp_path)
        notes.options.listen = f"127.0.0.1:{port}"
        asyncio.run(notes.start([]))
    assert notes.receiver is None and not notes.active
    assert notes.poll_interval() == 5.0
    assert f"cannot listen on 127.0.0.1:{port}" in notes.reason


def test_subscriptions_follow_the_directory(org: Any) -> None:
    from presencectl.sync.service import engine_for

    profile, options = _loopback_options()
    notifier = org.world.extra

    def subscribed() -> list[set[str]]:
        return [set(s.user_ids) for s in notifier["graph_presence_notifier"].live()]

    async def go() -> None:
        async with engine_for(profile, options) as engine:
            await engine.refresh_directory(force=True)
            await engine._start_notifications(asyncio.Queue())
            await engine._follow_directory_with_notifications()
            first = {p.azure_id for p in engine.pairs.values()}
            assert await asyncio.to_thread(subscribed) == [first]
            await asyncio.to_thread(
                org.control.post, "/_sandbox/users",
                json={"email": "new.person@contoso.example", "display_name": "New Person",
                      "on": ["teams", "connect"]},
            )  # fmt: skip
            await engine.refresh_directory(force=True)
            await engine._follow_directory_with_notifications()
            second = {p.azure_id for p in engine.pairs.values()}
            assert len(second) == len(first) + 1
            assert await asyncio.to_thread(subscribed) == [second]  # still one, each user once
            await engine._stop_notifications()
        assert await asyncio.to_thread(subscribed) == []

    asyncio.run(go())


def test_a_subscription_gone_from_graph_is_recreated(org: Any) -> None:
    from presencectl.sync.service import engine_for

    profile, options = _loopback_options()

    async def go() -> None:
        async with engine_for(profile, options) as engine:
            await engine.refresh_directory(force=True)
            await engine._start_notifications(asyncio.Queue())
            await engine._follow_directory_with_notifications()
            notes = engine.notifications
            (old,) = list(notes.subscriptions)
            # Graph forgets it (expired while we were away); Graph then asks to reauthorize.
            notifier = org.world.extra["graph_presence_notifier"]
            await asyncio.to_thread(notifier.remove, old)
            notes._reauth.add(old)
            await notes.maintain()
            (new,) = list(notes.subscriptions)
            assert new != old and notes.covered == notes.wanted
            assert [s.id for s in notifier.live()] == [new]
            recorded = [s.id for s in engine.store.subscriptions() if s.side == "graph"]
            assert recorded == [new]
            await engine._stop_notifications()

    asyncio.run(go())


# ------------------------------------------------------------------ validation tokens (issue 20)


@pytest.mark.parametrize("tokens", ["valid", "invalid", "missing"])
def test_only_notifications_with_verified_validation_tokens_are_trusted(
    org: Any, tokens: str
) -> None:
    """The sandbox signs its validationTokens with its own keys (at its metadata's jwks_uri); a
    batch with a bad or missing token is answered 202, dropped whole and counted."""
    org.control.post("/_sandbox/faults", json={"notify_validation_tokens": tokens})
    person = org.people[3]
    seen: dict[str, Any] = {}

    async def scenario(engine: Any) -> None:
        await until(lambda: engine.notifications is not None and engine.notifications.active)
        await until(lambda: bool(engine.states))
        await asyncio.to_thread(set_teams, org, person.email, "Busy", "InACall")
        counts = engine.notifications.receiver.counts
        if tokens == "valid":
            await until(lambda: connect_session(org, person.email) == "onphone")
        else:
            await until(lambda: counts.dropped_untrusted >= 1)
        seen["dropped_untrusted"] = counts.dropped_untrusted
        seen["connect"] = await asyncio.to_thread(connect_session, org, person.email)

    result, summary = watch_with_notifications(org, scenario)
    assert result.cycles == 1  # only the first poll: nothing else could carry the change
    if tokens == "valid":
        assert seen["dropped_untrusted"] == 0 and summary["dropped_untrusted"] == 0
        assert seen["connect"] == "onphone"
    else:
        assert seen["dropped_untrusted"] >= 1 and summary["dropped_untrusted"] >= 1
        assert seen["connect"] != "onphone"  # the untrusted change was not written


def _checker_and_token(claims: dict[str, Any], *, kid: str = "k1", key: Any = None) -> Any:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    from presencectl.graph.notifications import ValidationTokenChecker

    tenant = "0c5b8b8e-2f0e-4b8e-9a3c-1d2e3f4a5b6c"
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(signing.public_key(), as_dict=True)
    fetched: list[str] = []

    async def fetch(url: str) -> Any:
        fetched.append(url)
        if url.endswith("openid-configuration"):
            return {
                "issuer": f"https://login.example/{tenant}/v2.0",
                "jwks_uri": "https://login.example/keys",
            }
        return {"keys": [{**public, "kid": "k1"}]}

    now = int(time.time())
    base = {
        "aud": APP_ID,
        "iss": f"https://sts.windows.net/{tenant}/",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "appid": "0bf30f3b-4a52-48df-9a82-234910c4a086",
        "tid": tenant,
        "ver": "1.0",
    }
    token = jwt.encode({**base, **claims}, key or signing, algorithm="RS256",
                       headers={"kid": kid})  # fmt: skip
    checker = ValidationTokenChecker(f"https://login.example/{tenant}", APP_ID, fetch)
    return checker, token, fetched


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({}, None),
        ({"aud": "someone-else"}, "does not verify"),
        ({"exp": int(time.time()) - 600}, "does not verify"),
        ({"iss": "https://sts.windows.net/another-tenant/"}, "does not verify"),
        ({"appid": "a-different-publisher"}, "not to Graph"),
        ({"appid": None, "azp": "0bf30f3b-4a52-48df-9a82-234910c4a086"}, None),  # a v2 token
    ],
)
def test_each_validation_token_rule_can_fail(claims: dict[str, Any], why: str | None) -> None:
    checker, token, _ = _checker_and_token(claims)
    batch = {"value": [{"encryptedContent": {"data": "x"}}], "validationTokens": [token]}
    if why is None:
        asyncio.run(checker.check(batch))
    else:
        with pytest.raises(Untrusted, match=why):
            asyncio.run(checker.check(batch))


def test_a_forged_signature_an_unknown_key_and_no_tokens_are_untrusted() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    checker, forged, _ = _checker_and_token({}, key=other)
    with pytest.raises(Untrusted, match="does not verify"):
        asyncio.run(checker.check({"value": [], "validationTokens": [forged]}))

    checker, unknown, fetched = _checker_and_token({}, kid="rotated")
    with pytest.raises(Untrusted, match="unknown signing key"):
        asyncio.run(checker.check({"value": [], "validationTokens": [unknown]}))
    assert fetched.count("https://login.example/keys") == 1  # fetched for the unknown kid
    with pytest.raises(Untrusted):
        asyncio.run(checker.check({"value": [], "validationTokens": [unknown]}))
    assert fetched.count("https://login.example/keys") == 1  # not again within a minute
    assert checker.key_fetches == 1

    checker, _, _ = _checker_and_token({})
    with pytest.raises(Untrusted, match="without validationTokens"):
        asyncio.run(checker.check({"value": [{"encryptedContent": {"data": "x"}}]}))
    asyncio.run(checker.check({"value": [{"resourceData": {"id": "x"}}]}))  # basic: no tokens


def test_status_shows_notification_figures_of_the_last_run_only() -> None:
    """Issue 24 item 10: after a watch with notifications (the demo's, on an earlier sandbox),
    a later run that had none must not be shown with that watch's figures."""
    from datetime import UTC, datetime

    from presencectl.sync.notify import META_KEY
    from presencectl.sync.service import state_summary
    from presencectl.sync.state import RunCounts, StateStore

    then = time.time() - 600
    with StateStore.for_profile("p") as store:
        watch = store.start_run(mode="watch", direction="both", dry_run=False, now=then)
        figures = {"mode": "notifications", "received": 7, "users_covered": 13,
                   "updated": datetime.fromtimestamp(then + 30, UTC).isoformat()}  # fmt: skip
        store.set_meta(META_KEY, json.dumps(figures))
        store.finish_run(watch, RunCounts(cycles=3), outcome="ok", now=then + 60)
    assert state_summary("p")["teams_notifications"]["received"] == 7  # that watch's own
    with StateStore.for_profile("p") as store:
        later = store.start_run(mode="once", direction="both", dry_run=False, now=then + 300)
        store.finish_run(later, RunCounts(cycles=1), outcome="ok", now=then + 301)
    assert state_summary("p")["teams_notifications"] is None
