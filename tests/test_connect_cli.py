"""`presencectl connect set` and `presencectl connect verify` end to end against the sandbox."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from presencectl import secrets

PROFILE = "sandbox"


def _connect_user(sb: Any) -> str:
    """A Connect user of the sandbox (not the admin), idle."""
    return next(p.email for p in sb.world.people if p.connect_id and "admin" not in p.email)


def _resources(sb: Any, email: str) -> list[str]:
    shown = sb.control.get("/_sandbox/connect/presence", params={"user": email}).json()
    return [r["resource"] for r in shown["resources"]]


def _live_subscriptions(sb: Any) -> int:
    feed = sb.world.extra.get("connect_feed")
    return 0 if feed is None else len(feed.live())


def _config_and_state_text(tmp_path: Path) -> str:
    return "".join(p.read_text("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file())


# -- connect set ---------------------------------------------------------------------------------


@pytest.fixture
def bare_profile(sandbox: Any) -> Any:
    """The sandbox profile without any Connect client (as a new admin starts)."""
    from presencectl.config import save_profile

    profile = sandbox.write_profile(PROFILE)
    secrets.delete_secret(PROFILE, secrets.CONNECT_CLIENT_SECRET)
    profile.connect_client_id = None
    save_profile(profile)
    return profile


def test_connect_set_stores_id_and_secret_and_gets_a_token_per_scope(
    cli: Any, sandbox: Any, bare_profile: Any, isolated_env: Any, tmp_path: Path
) -> None:
    secret = sandbox.world.connect_client_secret
    client_id = sandbox.world.connect_client_id
    result = cli(
        "--profile", PROFILE, "-o", "json", "connect", "set", "--client-id", client_id,
        "--client-secret-stdin", input=secret + "\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = result.json()
    assert doc["connect_client_id"] == client_id
    assert doc["secret_stored_in"] == "keyring"
    assert [(t["purpose"], t["scope"], t["result"]) for t in doc["tokens"]] == [
        ("messaging", "api.service.messaging", "ok"),
        ("directory", "api.service.address-book", "ok"),
    ]
    assert isolated_env.store[(f"presencectl:{PROFILE}", "connect_client_secret")] == secret
    from presencectl.config import load_profile

    assert load_profile(PROFILE).connect_client_id == client_id
    assert secret not in result.stdout + result.stderr
    assert secret not in _config_and_state_text(tmp_path)
    # The table says the same, one row per scope.
    table = cli("--profile", PROFILE, "connect", "set", "--client-id", client_id,
                "--client-secret-stdin", input=secret + "\n")  # fmt: skip
    assert table.exit_code == 0, table.stderr
    assert "api.service.messaging" in table.stdout and "api.service.address-book" in table.stdout
    assert "connect verify" in table.stderr


def test_connect_set_from_the_environment_never_writes_the_secret(
    cli: Any,
    sandbox: Any,
    bare_profile: Any,
    isolated_env: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = sandbox.world.connect_client_secret
    monkeypatch.setenv("PRESENCECTL_CONNECT_CLIENT_SECRET", secret)
    result = cli("--profile", PROFILE, "-o", "json", "connect", "set", "--client-id",
                 sandbox.world.connect_client_id)  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.json()["secret_stored_in"].startswith("environment")
    assert all(t["result"] == "ok" for t in result.json()["tokens"])
    assert not isolated_env.store
    assert secret not in _config_and_state_text(tmp_path)


def test_connect_set_wrong_secret_is_a_sign_in_error_in_one_document(
    cli: Any, sandbox: Any, bare_profile: Any
) -> None:
    result = cli(
        "--profile", PROFILE, "-o", "json", "connect", "set", "--client-id",
        sandbox.world.connect_client_id, "--client-secret-stdin", input="not-the-secret\n",
    )  # fmt: skip
    assert result.exit_code == 4
    doc = result.json()  # one JSON document: the error rides inside it
    assert doc["error"]["code"] == "connect_auth_failed"
    assert {t["result"] for t in doc["tokens"]} == {"failed"}
    assert "not-the-secret" not in result.stdout + result.stderr


def test_connect_set_without_a_secret_source_names_the_flag_and_the_variable(
    cli: Any, bare_profile: Any
) -> None:
    result = cli("--profile", PROFILE, "-o", "json", "connect", "set", "--client-id", "abc")
    assert result.exit_code == 2
    error = result.json()["error"]
    assert "--client-secret-stdin" in error["hint"]
    assert "PRESENCECTL_CONNECT_CLIENT_SECRET" in error["hint"]
    from presencectl.config import load_profile

    assert load_profile(PROFILE).connect_client_id is None  # nothing stored


@pytest.mark.parametrize(("answers", "exit_code"), [(["s3cret", "s3cret"], 0), (["a", "b"], 2)])
def test_connect_set_asks_twice_on_a_terminal(
    cli: Any,
    sandbox: Any,
    bare_profile: Any,
    isolated_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    answers: list[str],
    exit_code: int,
) -> None:
    from presencectl.cli.context import AppContext

    asked: list[str] = []
    real = sandbox.world.connect_client_secret
    replies = iter([real if a == "s3cret" else a for a in answers])

    def prompt(self: Any, what: str, *, flag: str, env: str | None = None) -> str:
        asked.append(what)
        return next(replies)

    monkeypatch.setattr(AppContext, "prompt_secret", prompt)
    result = cli("--profile", PROFILE, "connect", "set", "--client-id",
                 sandbox.world.connect_client_id)  # fmt: skip
    assert result.exit_code == exit_code, result.stderr
    assert asked == ["Connect client secret", "Connect client secret (again)"]
    stored = isolated_env.store.get((f"presencectl:{PROFILE}", "connect_client_secret"))
    if exit_code == 0:
        assert stored == real
    else:
        assert stored is None and "differ" in result.stderr


# -- connect verify ------------------------------------------------------------------------------


def test_connect_verify_all_held_against_the_sandbox_and_nothing_left(
    cli: Any, sandbox: Any, sandbox_profile: Any
) -> None:
    user = _connect_user(sandbox)
    before = sandbox.control.get("/_sandbox/connect/presence", params={"user": user}).json()
    result = cli("--profile", PROFILE, "-o", "json", "connect", "verify", "--user", user,
                 "--settle", "3")  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    report = result.json()
    rows = {r["check"]: r for r in report["rows"]}
    assert report["held"] is True and report["left_behind"] == []
    assert {r["result"] for r in report["rows"]} == {"held", "info"}
    assert rows["Rate-limit headers"]["result"] == "info"
    for value in ("available", "busy", "onphone", "meeting", "on_break"):
        observed = rows[f"Round trip {value}"]["observed"]
        assert observed["shown"] == value and observed["after_delete"] == before["status"]
    assert rows["Aggregation"]["observed"]["model"] == "rank"
    feed = rows["Change feed"]["observed"]
    assert feed["user_id_field"] == "userId" and feed["user_id_matches"] is True
    assert "presenceState" in feed["event_keys"]
    assert rows["Directory"]["observed"]["contacts_read_by_client"] > 0
    assert [t for t in ("Token messaging", "Token directory") if rows[t]["result"] == "held"]
    # Nothing left behind: the user's resources as before, no subscription alive.
    after = sandbox.control.get("/_sandbox/connect/presence", params={"user": user}).json()
    assert after["resources"] == before["resources"] and after["status"] == before["status"]
    assert _live_subscriptions(sandbox) == 0


def test_connect_verify_table_and_progress(cli: Any, sandbox: Any, sandbox_profile: Any) -> None:
    user = _connect_user(sandbox)
    result = cli("--profile", PROFILE, "connect", "verify", "--user", user, "--settle", "3")
    assert result.exit_code == 0, result.stderr
    assert "Round trip onphone" in result.stdout and "held" in result.stdout
    assert "✓ Aggregation" in result.stderr
    assert "presencectl enable" in result.stderr


def test_connect_verify_unknown_user_is_configuration(
    cli: Any, sandbox: Any, sandbox_profile: Any
) -> None:
    result = cli("--profile", PROFILE, "-o", "json", "connect", "verify", "--user",
                 "nobody@contoso.example", "--settle", "1")  # fmt: skip
    assert result.exit_code == 3
    doc = result.json()
    assert doc["error"]["code"] == "connect_user_unknown"
    assert "--user" in doc["error"]["hint"]
    assert _live_subscriptions(sandbox) == 0


def test_connect_verify_bad_secret_is_sign_in(
    cli: Any, sandbox: Any, sandbox_profile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRESENCECTL_CONNECT_CLIENT_SECRET", "wrong")
    result = cli("--profile", PROFILE, "-o", "json", "connect", "verify", "--user",
                 _connect_user(sandbox), "--settle", "1")  # fmt: skip
    assert result.exit_code == 4
    rows = {r["check"]: r["result"] for r in result.json()["rows"]}
    assert rows["Token messaging"] == "failed" and rows["Change feed"] == "skipped"


@pytest.mark.parametrize(
    "args", [("--user", "not-an-email"), ("--user", "a@b.example", "--settle", "0"), ()]
)
def test_connect_verify_usage_errors(cli: Any, sandbox_profile: Any, args: tuple[str, ...]) -> None:
    result = cli("--profile", PROFILE, "connect", "verify", *args)
    assert result.exit_code == 2


def test_connect_verify_a_hidden_value_differs_and_still_cleans_up(
    cli: Any, sandbox: Any, sandbox_profile: Any
) -> None:
    # The user is on a call in their own app: nothing we write can show (rank aggregation).
    user = _connect_user(sandbox)
    sandbox.control.post("/_sandbox/connect/presence", json={"user": user, "status": "onphone"})
    result = cli("--profile", PROFILE, "-o", "json", "connect", "verify", "--user", user,
                 "--settle", "0.3")  # fmt: skip
    assert result.exit_code == 5, result.stdout + result.stderr
    doc = result.json()
    rows = {r["check"]: r for r in doc["rows"]}
    assert rows["Round trip available"]["result"] == "differed"
    assert "may outrank it" in rows["Round trip available"]["detail"]
    assert doc["error"]["code"] == "connect_assumption_differed"
    assert rows["Aggregation"]["result"] == "skipped"  # on a call already: nothing to learn
    assert _resources(sandbox, user) == ["app"]
    assert _live_subscriptions(sandbox) == 0


# -- leaving nothing behind when interrupted ---------------------------------------------------


def test_verify_cancelled_mid_round_trip_removes_our_session(
    sandbox: Any, sandbox_profile: Any
) -> None:
    from presencectl.connect.verify import Verifier, VerifyOptions

    user = _connect_user(sandbox)
    sandbox.control.post("/_sandbox/connect/presence", json={"user": user, "status": "onphone"})

    async def go() -> None:
        task: asyncio.Task[Any] | None = None

        async def sleep(seconds: float) -> None:  # the first wait for a write to show: Ctrl-C
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)

        verifier = Verifier(sandbox_profile, VerifyOptions(user=user, settle_s=5), sleep=sleep)
        task = asyncio.create_task(verifier.run())
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert _resources(sandbox, user) == ["app"]


def test_verify_cancelled_while_the_feed_is_up_removes_session_and_subscription(
    sandbox: Any, sandbox_profile: Any
) -> None:
    from presencectl.connect.verify import Verifier, VerifyOptions

    user = _connect_user(sandbox)
    seen: dict[str, int] = {}

    class Interrupted(Verifier):
        async def _put(self, resource: str, value: str) -> int:
            status = await super()._put(resource, value)
            if self._feed is not None:  # the feed is subscribed and our session written
                seen["subscriptions"] = _live_subscriptions(sandbox)
                seen["resources"] = len(_resources(sandbox, user))
                raise asyncio.CancelledError
            return status

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(Interrupted(sandbox_profile, VerifyOptions(user=user, settle_s=5)).run())
    assert seen == {"subscriptions": 1, "resources": 1}
    assert _resources(sandbox, user) == []
    assert _live_subscriptions(sandbox) == 0


# -- the unknowns, switched in the sandbox (behaviour of issue 11's wire half) -----------------


def test_connect_verify_reports_the_feed_user_field(
    cli: Any, sandbox: Any, sandbox_profile: Any
) -> None:
    sandbox.control.post("/_sandbox/faults", json={"feed_user_field": "unifiedUserId"})
    result = cli("--profile", PROFILE, "-o", "json", "connect", "verify", "--user",
                 _connect_user(sandbox), "--settle", "3")  # fmt: skip
    rows = {r["check"]: r for r in result.json()["rows"]}
    assert rows["Change feed"]["result"] == "held", json.dumps(rows["Change feed"])
    assert rows["Change feed"]["observed"]["user_id_field"] == "unifiedUserId"
    assert "'unifiedUserId'" in rows["Change feed"]["detail"]


def test_connect_verify_reports_last_writer_aggregation(
    cli: Any, sandbox: Any, sandbox_profile: Any
) -> None:
    sandbox.control.post("/_sandbox/faults", json={"connect_aggregation": "last_writer"})
    result = cli("--profile", PROFILE, "-o", "json", "connect", "verify", "--user",
                 _connect_user(sandbox), "--settle", "3")  # fmt: skip
    assert result.exit_code == 5, result.stdout + result.stderr
    rows = {r["check"]: r for r in result.json()["rows"]}
    assert rows["Aggregation"]["result"] == "differed"
    assert rows["Aggregation"]["observed"]["model"] == "last_writer"
    assert [c for c, r in rows.items() if r["result"] == "differed"] == ["Aggregation"]


def test_connect_verify_without_a_connect_client_is_configuration(
    cli: Any, bare_profile: Any
) -> None:
    result = cli("--profile", PROFILE, "-o", "json", "connect", "verify", "--user", "a@b.example")
    assert result.exit_code == 3
    assert result.json()["error"]["code"] == "config_missing"
    assert "connect_client_id" in result.json()["error"]["message"]
    assert "presencectl connect set" in result.json()["error"]["hint"]


# -- findings: what the account does, one sandbox switch at a time (issue 22) ------------------


def _verify(cli: Any, sandbox: Any, *extra: str) -> Any:
    return cli("--profile", PROFILE, "-o", "json", "connect", "verify", "--user",
               _connect_user(sandbox), "--settle", "3", *extra)  # fmt: skip


def test_connect_verify_findings_on_the_default_sandbox(
    cli: Any, sandbox: Any, sandbox_profile: Any
) -> None:
    result = _verify(cli, sandbox)
    assert result.exit_code == 0, result.stdout + result.stderr
    found = result.json()["findings"]
    assert found["feed_user_field"] == "userId"
    assert found["feed_event_scope"] == "user"
    ttl = found["subscription_ttl"]
    assert ttl["requested_s"] == ttl["granted_s"] == 1800
    assert found["subscription_renew"] == "renewed"
    assert found["subscription_delete"] == "deleted"
    assert found["directory_fields"] == "accepted"
    assert found["contact_types"]["people"] == ["user"]
    assert set(found["contact_types"]["seen"]) == {"user", "sharedContact", "room"}
    assert found["api_host"]["answered"] is True
    assert found["api_host"]["other"] == "https://api.univerge.blue"  # the sandbox is neither
    assert found["lenient_values"] is False
    assert found["read_only_statuses"] == dict.fromkeys(
        ("agent_onphone", "agent_available", "screen_sharing"), "accepted"
    )
    assert _live_subscriptions(sandbox) == 0


@pytest.mark.parametrize(
    ("faults", "finding", "expected"),
    [
        ({"feed_user_field": "unifiedUserId"}, "feed_user_field", "unifiedUserId"),
        ({"feed_user_field": "user.id", "feed_event_id": True}, "feed_user_field", "user.id"),
        ({"feed_event_scope": "session"}, "feed_event_scope", "session"),
        ({"connect_aggregation": "last_writer"}, "feed_event_scope", "undetermined"),
        ({"connect_subscription_max_ttl_s": 300}, "subscription_ttl", 300),
        ({"connect_fields_param": "reject"}, "directory_fields", "rejected"),
        ({"connect_contact_types": "person"}, "contact_types", ["person"]),
        ({"connect_lenient_values": True}, "lenient_values", True),
    ],
    ids=[
        "user-field",
        "event-own-id",
        "session-scope",
        "last-writer",
        "ttl-cap",
        "fields-rejected",
        "contact-type",
        "lenient",
    ],
)
def test_connect_verify_reports_each_switch_in_findings(
    cli: Any,
    sandbox: Any,
    sandbox_profile: Any,
    faults: dict[str, Any],
    finding: str,
    expected: Any,
) -> None:
    sandbox.control.post("/_sandbox/faults", json=faults).raise_for_status()
    result = _verify(cli, sandbox)
    found = result.json()["findings"]
    value = found[finding]
    if finding == "subscription_ttl":
        value = value["granted_s"]
    if finding == "contact_types":
        value = value["people"]
    assert value == expected, json.dumps(found)
    assert _live_subscriptions(sandbox) == 0


def test_an_event_user_field_the_client_cannot_read_fails_and_apply_follows_it(
    cli: Any, sandbox: Any, sandbox_profile: Any
) -> None:
    from presencectl.config import load_profile

    sandbox.control.post(
        "/_sandbox/faults", json={"feed_user_field": "subject.uid", "feed_event_id": True}
    )
    result = _verify(cli, sandbox, "--apply")
    assert result.exit_code == 5, result.stdout + result.stderr
    doc = result.json()
    rows = {r["check"]: r for r in doc["rows"]}
    assert rows["Change feed"]["result"] == "failed"
    assert doc["error"]["code"] == "connect_feed_user_mismatch"
    assert doc["findings"]["feed_user_field"] == "subject.uid"
    assert doc["applied"]["connect_feed_user_field"] == "subject.uid"
    assert load_profile(PROFILE).connect_feed_user_field == "subject.uid"
    again = _verify(cli, sandbox)  # the client now reads the account's field
    assert again.exit_code == 0, again.stdout


def test_apply_lists_without_fields_when_the_directory_rejects_them(
    cli: Any, sandbox: Any, sandbox_profile: Any
) -> None:
    from presencectl.config import load_profile

    sandbox.control.post("/_sandbox/faults", json={"connect_fields_param": "reject"})
    result = _verify(cli, sandbox, "--apply")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert load_profile(PROFILE).connect_directory_fields == ""
    from presencectl.connect import connect_client_for
    from presencectl.connect.directory import list_contacts

    async def listed() -> int:
        async with connect_client_for(load_profile(PROFILE)) as client:
            return len(await list_contacts(client))

    before = sandbox.world.stats.requests.get("connect.contacts", 0)
    assert asyncio.run(listed()) > 0
    # one request for the one page, none refused first
    assert sandbox.world.stats.requests.get("connect.contacts", 0) - before == 1


def test_user_id_runs_the_presence_and_feed_rows_when_the_directory_fails(
    cli: Any, sandbox: Any, sandbox_profile: Any
) -> None:
    user = _connect_user(sandbox)
    person = sandbox.world.person_by_email(user) or next(
        p for p in sandbox.world.people if p.connect_email == user
    )
    sandbox.control.post("/_sandbox/faults", json={"connect_fields_param": "reject"})
    # a directory that fails outright: the scope the sandbox does not grant
    from presencectl.config import load_profile, save_profile

    profile = load_profile(PROFILE)
    profile.connect_directory_scope = "api.service.nothing"
    save_profile(profile)
    result = cli("--profile", PROFILE, "-o", "json", "connect", "verify", "--user", user,
                 "--user-id", str(person.connect_id), "--settle", "3")  # fmt: skip
    rows = {r["check"]: r for r in result.json()["rows"]}
    assert rows["Token directory"]["result"] == "failed"
    assert rows["Test user"]["result"] == "held"
    assert rows["Change feed"]["result"] == "held"
    assert rows["Round trip onphone"]["result"] == "held"


def test_connect_verify_on_a_host_that_answers_404_names_the_setting(
    cli: Any, sandbox: Any, sandbox_profile: Any
) -> None:
    from presencectl.config import load_profile, save_profile

    profile = load_profile(PROFILE)
    profile.connect_api_url = sandbox.base_url + "/elsewhere"
    save_profile(profile)
    result = _verify(cli, sandbox)
    doc = result.json()
    assert result.exit_code == 1, result.stdout
    rows = {r["check"]: r for r in doc["rows"]}
    assert rows["Directory"]["result"] == "failed"
    assert "connect_api_url" in rows["Directory"]["hint"]
    assert doc["findings"]["api_host"]["answered"] is False
    assert doc["findings"]["api_host"]["other"] == "https://api.univerge.blue"
