"""The pool of sync users (issue 20): add / sign-in / validate / list / remove, device-code members
that survive MFA, reauth after revoked sessions, and the sandbox's side of it — real msal against
the loopback sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from presencectl import secrets
from presencectl.config import config_path, load_profile, save_profile

ADMIN = "admin@contoso.example"
SYNC = "presence-sync@contoso.example"
POOL_B = "sync-b@contoso.example"
POOL_MFA = "sync-mfa@contoso.example"


def run(cli: Any, *args: str, input: str = "") -> Any:
    return cli("--profile", "sandbox", "--no-input", *args, input=input)


def add_person(sb: Any, email: str, flags: tuple[str, ...] = ()) -> str:
    password = "Pw-" + email.split("@")[0] + "!9"
    r = sb.control.post(
        "/_sandbox/users",
        json={"email": email, "display_name": email, "on": ["teams"], "password": password,
              "flags": list(flags)},
    )  # fmt: skip
    assert r.status_code in (200, 201), r.text
    return password


@pytest.fixture
def sbx(cli: Any) -> Iterator[Any]:
    """setup-azure done; the seeded sync user's first-login change done and `sync-user set`; two
    more accounts, one of them under MFA; device codes approved by the admin and the two."""
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=5, seed=1, auto_approve=[ADMIN, POOL_MFA, POOL_B]) as sb:
        sb.write_profile("sandbox")
        assert run(cli, "setup-azure").exit_code == 0
        info = sb.profile_info()
        sb.control.post(
            f"/_sandbox/users/{SYNC}/password", json={"password": info["sync_user_password"]}
        )
        done = run(cli, "sync-user", "set", "--username", SYNC, "--password-stdin",
                   input=info["sync_user_password"] + "\n")  # fmt: skip
        assert done.exit_code == 0, done.stderr
        sb.passwords = {  # type: ignore[attr-defined]
            SYNC: info["sync_user_password"],
            POOL_B: add_person(sb, POOL_B),
            POOL_MFA: add_person(sb, POOL_MFA, ("mfa_required",)),
        }
        yield sb


def pool(cli: Any) -> list[dict[str, Any]]:
    listed = run(cli, "-o", "json", "sync-user", "list")
    assert listed.exit_code == 0, listed.stderr
    return list(listed.json())


def test_a_pool_of_three_one_of_them_under_mfa_by_device_code(sbx: Any, cli: Any) -> None:
    pw = sbx.passwords
    added = run(cli, "-o", "json", "sync-user", "add", "--username", POOL_B, "--password-stdin",
                input=pw[POOL_B] + "\n")  # fmt: skip
    assert added.exit_code == 0, added.stderr
    assert added.json()["object_id"] == sbx.world.person_by_email(POOL_B).azure_id
    mfa = run(cli, "-o", "json", "sync-user", "add", "--username", POOL_MFA, "--device-code")
    assert mfa.exit_code == 0, mfa.stderr
    assert "enter the code" in mfa.stderr  # the device-code message, on stderr
    assert mfa.json()["sign_in"] == "device_code"

    rows = pool(cli)
    assert [(r["username"], r["sign_in"]) for r in rows] == [
        (SYNC, "password"), (POOL_B, "password"), (POOL_MFA, "device_code")
    ]  # fmt: skip
    # `sync-user set` stores only; `add` signs in and proves before it keeps.
    assert [bool(r["validated_at"]) for r in rows] == [False, True, True]
    assert all(r["people_covered"] is None for r in rows)  # no watch ran: not known
    table = run(cli, "sync-user", "list")
    assert POOL_MFA in table.stdout and "device_code" in table.stdout

    # Every member proves its stored credential; no secret anywhere in the config file.
    every = run(cli, "-o", "json", "sync-user", "validate")
    assert every.exit_code == 0, every.stdout + every.stderr
    assert [r["result"] for r in every.json()] == ["ok", "ok", "ok"]
    text = config_path().read_text()
    assert all(p not in text for p in pw.values())
    assert "device_code" in text and "sync_users" in text
    # The device-code member has no password, only its refresh token in the secret store.
    assert secrets.get_secret("sandbox", f"sync_password:{POOL_MFA}") is None
    assert secrets.get_secret("sandbox", f"token_cache:sync_user:{POOL_MFA}")

    # The first leaves: the next takes its place, its password moving to the first one's name.
    gone = run(cli, "-o", "json", "sync-user", "remove", "--username", SYNC)
    assert gone.exit_code == 0, gone.stderr
    assert [r["username"] for r in pool(cli)] == [POOL_B, POOL_MFA]
    assert load_profile("sandbox").sync_username == POOL_B
    assert secrets.get_secret("sandbox", secrets.SYNC_PASSWORD) == pw[POOL_B]
    assert secrets.get_secret("sandbox", f"sync_password:{POOL_B}") is None
    assert run(cli, "sync-user", "validate", "--username", POOL_B).exit_code == 0


def test_a_token_provider_per_member(sbx: Any, cli: Any) -> None:
    from presencectl.identity.sync_user import PoolMember, pool_members
    from presencectl.identity.tokens import sync_user_token_provider

    assert run(cli, "sync-user", "add", "--username", POOL_MFA, "--device-code").exit_code == 0
    profile = load_profile("sandbox")
    assert pool_members(profile)[1] == PoolMember(
        POOL_MFA, "device_code", profile.sync_users[0]["validated_at"]
    )
    first, second = sync_user_token_provider(profile), sync_user_token_provider(profile, POOL_MFA)
    assert first.username == SYNC and second.username == POOL_MFA
    world = sbx.world
    assert world.verify_bearer("Bearer " + second(False).token).upn == POOL_MFA
    assert world.verify_bearer("Bearer " + first(False).token).upn == SYNC


@pytest.mark.parametrize(
    ("case", "code", "remedy"),
    [
        ("missing", "user_not_found", "user principal name"),
        ("disabled", "account_disabled", "Account enabled"),
        ("no_consent", "consent_required", "presencectl consent"),
        ("duplicate", "sync_user_duplicate", "sync-user sign-in"),
    ],
)
def test_a_bad_member_is_refused_and_the_pool_unchanged(
    sbx: Any, cli: Any, case: str, code: str, remedy: str
) -> None:
    username, password = {
        "missing": ("nobody@contoso.example", "Whatever-123"),
        "disabled": ("sync-off@contoso.example", ""),
        "no_consent": (POOL_B, sbx.passwords[POOL_B]),
        "duplicate": (SYNC.upper(), sbx.passwords[SYNC]),
    }[case]
    if case == "disabled":
        password = add_person(sbx, username, ("disabled",))
    if case == "no_consent":
        sbx.world.permission_grants.clear()
    before = config_path().read_text()
    secrets_before = secrets.fallback_path().read_text() if secrets.fallback_path().exists() else ""
    result = run(cli, "-o", "json", "sync-user", "add", "--username", username,
                 "--password-stdin", input=password + "\n")  # fmt: skip
    error = result.json()["error"]
    assert error["code"] == code, error
    assert result.exit_code == (3 if case == "duplicate" else 4)
    assert remedy in error["hint"]
    assert config_path().read_text() == before
    assert secrets.get_secret("sandbox", f"sync_password:{username.lower()}") is None
    if secrets.fallback_path().exists():
        assert secrets.fallback_path().read_text() == secrets_before
    assert password not in result.stdout + result.stderr


def test_a_password_sign_in_under_mfa_names_device_code_first(sbx: Any, cli: Any) -> None:
    result = run(cli, "-o", "json", "sync-user", "add", "--username", POOL_MFA,
                 "--password-stdin", input=sbx.passwords[POOL_MFA] + "\n")  # fmt: skip
    assert result.exit_code == 4
    error = result.json()["error"]
    assert error["code"] == "mfa_required" and "AADSTS50076" in error["message"]
    hint = error["hint"]
    device = hint.index(f"presencectl sync-user sign-in --username {POOL_MFA} --device-code")
    assert device < hint.index("Conditional Access")
    assert "Security defaults cannot exclude an account" in hint
    assert [r["username"] for r in pool(cli)] == [SYNC]


def test_another_account_on_the_sign_in_page_is_refused(cli: Any) -> None:
    """Only the admin approves device codes here: the sync user's sign-in is made as the admin."""
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=3, seed=2, auto_approve=ADMIN) as sb:
        sb.write_profile("sandbox")
        assert run(cli, "setup-azure").exit_code == 0
        add_person(sb, POOL_B)
        result = run(cli, "-o", "json", "sync-user", "add", "--username", POOL_B, "--device-code")
        assert result.exit_code == 4
        error = result.json()["error"]
        assert error["code"] == "sync_user_mismatch" and ADMIN in error["message"]
        assert f"sign in as {POOL_B}" in error["hint"]
        assert load_profile("sandbox").sync_username is None
        assert secrets.get_secret("sandbox", "token_cache:sync_user") is None


@pytest.mark.parametrize(("reason", "aadsts"), [("revoked", 50173), ("sign_in_frequency", 70043)])
def test_a_revoked_device_code_member_must_sign_in_again(
    sbx: Any, cli: Any, reason: str, aadsts: int
) -> None:
    from presencectl.identity.errors import SyncUserReauthRequired
    from presencectl.identity.tokens import sync_user_token_provider

    assert run(cli, "sync-user", "add", "--username", POOL_MFA, "--device-code").exit_code == 0
    r = sbx.control.post(f"/_sandbox/users/{POOL_MFA}/revoke", json={"reason": reason})
    assert r.status_code == 200 and r.json()["revoked"] >= 1

    failed = run(cli, "-o", "json", "sync-user", "validate", "--username", POOL_MFA)
    assert failed.exit_code == 4
    error = failed.json()["error"]
    assert error["code"] == "sync_user_reauth_required" and f"AADSTS{aadsts}" in error["message"]
    assert error["hint"].startswith(
        f"run `presencectl sync-user sign-in --username {POOL_MFA} --device-code`"
    )
    # The refused token was dropped: asking again costs no request to the token endpoint.
    stats = sbx.world.stats.requests
    before = stats["entra_token"]
    with pytest.raises(SyncUserReauthRequired):
        sync_user_token_provider(load_profile("sandbox"), POOL_MFA)(True)
    assert stats["entra_token"] == before

    again = run(cli, "-o", "json", "sync-user", "sign-in", "--username", POOL_MFA)
    assert again.exit_code == 0, again.stderr
    assert run(cli, "sync-user", "validate", "--username", POOL_MFA).exit_code == 0
    assert [r["sign_in"] for r in pool(cli)] == ["password", "device_code"]


def test_a_password_member_whose_cached_token_is_refused_signs_in_once_more(sbx: Any) -> None:
    from presencectl.identity.tokens import sync_user_token_provider

    profile = load_profile("sandbox")
    provider = sync_user_token_provider(profile)
    provider(False)  # signed in: a refresh token in the cache
    sbx.control.post(f"/_sandbox/users/{SYNC}/revoke", json={"reason": "revoked"})
    stats = sbx.world.stats.requests
    before = stats["entra_token"]
    token = sync_user_token_provider(load_profile("sandbox"))(True)  # refresh refused → password
    assert sbx.world.verify_bearer("Bearer " + token.token).upn == SYNC
    assert stats["entra_token"] == before + 2  # the refused refresh, then one password sign-in


def test_the_last_member_leaves_only_with_yes_while_teams_to_connect_is_on(
    sbx: Any, cli: Any
) -> None:
    profile = load_profile("sandbox")
    profile.enabled_direction = "both"
    save_profile(profile)
    refused = run(cli, "-o", "json", "sync-user", "remove", "--username", SYNC)
    assert refused.exit_code == 2
    assert "--yes" in refused.json()["error"]["hint"]
    assert [r["username"] for r in pool(cli)] == [SYNC]
    assert secrets.get_secret("sandbox", secrets.SYNC_PASSWORD)

    gone = run(cli, "-o", "json", "sync-user", "remove", "--username", SYNC, "--yes")
    assert gone.exit_code == 0, gone.stderr
    assert gone.json()["teams_to_connect"] == "polling-only"
    assert pool(cli) == [] and secrets.get_secret("sandbox", secrets.SYNC_PASSWORD) is None


def test_list_shows_whom_each_member_covers_from_the_state(sbx: Any, cli: Any) -> None:
    import json
    import sqlite3
    import time

    from presencectl.sync.state import StateStore, database_path

    assert run(cli, "sync-user", "add", "--username", POOL_MFA, "--device-code").exit_code == 0
    StateStore(database_path("sandbox")).close()
    db = sqlite3.connect(database_path("sandbox"))
    columns = {row[1] for row in db.execute("PRAGMA table_info(subscriptions)")}
    if "owner" not in columns:  # the pool's owner column (sync/state.py, schema 3)
        db.execute("ALTER TABLE subscriptions ADD COLUMN owner TEXT")
    for sub_id, owner, users in (("s1", SYNC, 650), ("s2", POOL_MFA, 120), ("c1", None, 0)):
        db.execute(
            "INSERT INTO subscriptions (id, side, created_at, resource, detail, owner) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (sub_id, "graph" if owner else "connect", time.time(), "r",
             json.dumps({"users": users}), owner),
        )  # fmt: skip
    db.commit()
    db.close()
    assert [r["people_covered"] for r in pool(cli)] == [650, 120]


def doctor_rows(cli: Any) -> dict[str, dict[str, Any]]:
    result = run(cli, "-o", "json", "doctor")
    return {c["name"]: c for c in result.json()["checks"]}


def test_doctor_proves_a_stored_wrong_password_not_the_cached_token(sbx: Any, cli: Any) -> None:
    """issue 24 #4: a cached token used to make doctor say "signed in" for a wrong password."""
    assert run(cli, "sync-user", "validate").exit_code == 0  # tokens now cached
    assert doctor_rows(cli)["Sync user"]["status"] == "ok"
    secrets.set_secret("sandbox", secrets.SYNC_PASSWORD, "a-wrong-password-1")
    row = doctor_rows(cli)["Sync user"]
    assert row["status"] == "fail" and "AADSTS50126" in row["detail"], row


def test_doctor_has_a_row_per_member_and_redeems_refresh_tokens(sbx: Any, cli: Any) -> None:
    assert run(cli, "sync-user", "add", "--username", POOL_MFA, "--device-code").exit_code == 0
    rows = doctor_rows(cli)
    first, second = rows[f"Sync user {SYNC}"], rows[f"Sync user {POOL_MFA}"]
    assert first["status"] == "ok" and "password" in first["detail"]
    assert second["status"] == "ok" and "refresh token" in second["detail"]
    stats = sbx.world.stats.requests
    before = stats["entra_token"]
    doctor_rows(cli)
    assert stats["entra_token"] >= before + 2  # neither member was served from the cache
    sbx.control.post(f"/_sandbox/users/{POOL_MFA}/revoke", json={"reason": "revoked"})
    row = doctor_rows(cli)[f"Sync user {POOL_MFA}"]
    assert row["status"] == "fail" and "AADSTS50173" in row["detail"], row


def test_a_browser_member_needs_a_mobile_and_desktop_redirect(
    sbx: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """msal's browser sign-in through our app: refused while the only localhost redirect is the
    Web platform's (Entra's 7000218), then working once one is under Mobile and desktop."""
    from tests.test_admin_sign_in import FakeBrowser, _use

    monkeypatch.setenv("DISPLAY", ":0")
    browser = FakeBrowser(sbx)
    _use(monkeypatch, browser)
    refused = run(cli, "-o", "json", "sync-user", "add", "--username", POOL_MFA, "--browser")
    assert refused.exit_code == 4, refused.stderr
    error = refused.json()["error"]
    assert "AADSTS7000218" in error["message"] and "--device-code" in error["hint"]
    assert [r["username"] for r in pool(cli)] == [SYNC]

    app = sbx.world.application_by_app_id(load_profile("sandbox").client_id or "")
    app["publicClient"] = {"redirectUris": ["http://localhost:8400"]}
    added = run(cli, "-o", "json", "sync-user", "add", "--username", POOL_MFA, "--browser")
    assert added.exit_code == 0, added.stderr
    assert added.json()["sign_in"] == "browser" and len(browser.opened) == 2
    assert f"login_hint={POOL_MFA.replace('@', '%40')}" in browser.opened[-1]
    assert [r["sign_in"] for r in pool(cli)] == ["password", "browser"]


def test_validate_proves_every_member_and_exits_with_the_first_failure(sbx: Any, cli: Any) -> None:
    assert run(cli, "sync-user", "add", "--username", POOL_MFA, "--device-code").exit_code == 0
    sbx.control.post(f"/_sandbox/users/{POOL_MFA}/revoke", json={"reason": "sign_in_frequency"})
    result = run(cli, "-o", "json", "sync-user", "validate")
    assert result.exit_code == 4
    rows = {r["username"]: r for r in result.json()}
    assert rows[SYNC]["result"] == "ok"
    assert rows[POOL_MFA]["result"] == "failed"
    assert rows[POOL_MFA]["code"] == "sync_user_reauth_required"
    assert "AADSTS70043" in rows[POOL_MFA]["detail"]


def test_set_makes_the_pool_exactly_that_one_again(sbx: Any, cli: Any) -> None:
    assert run(cli, "sync-user", "add", "--username", POOL_MFA, "--device-code").exit_code == 0
    again = run(cli, "sync-user", "set", "--username", SYNC, "--password-stdin",
                input=sbx.passwords[SYNC] + "\n")  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert POOL_MFA in again.stderr  # said who left the pool
    assert [r["username"] for r in pool(cli)] == [SYNC]
    assert secrets.get_secret("sandbox", f"token_cache:sync_user:{POOL_MFA}") is None


def test_create_makes_unlicensed_accounts_and_delete_removes_them(sbx: Any, cli: Any) -> None:
    world = sbx.world
    people = len(world.people)
    asked = run(cli, "sync-user", "add", "--create", "--count", "2")
    assert asked.exit_code == 2 and "--yes" in asked.stderr  # a confirmation, refused by --no-input
    assert len(world.people) == people

    made = run(cli, "-o", "json", "sync-user", "add", "--create", "--count", "2", "--yes")
    assert made.exit_code == 0, made.stderr
    names = [r["username"] for r in made.json()]
    assert names == ["presencectl-sync-1@contoso.example", "presencectl-sync-2@contoso.example"]
    assert "User.ReadWrite.All" in made.stderr  # the permission it needs, explained
    for name in names:
        person = world.person_by_email(name)
        assert person is not None and person.display_name.startswith("presencectl sync ")
        assert "must_change_password" not in person.flags
        stored = secrets.get_secret("sandbox", f"sync_password:{name}")
        assert stored == person.password and len(stored) == 32
        assert stored not in made.stdout + made.stderr + config_path().read_text()
    assert [r["username"] for r in pool(cli)] == [SYNC, *names]

    gone = run(cli, "-o", "json", "sync-user", "remove", "--username", names[1], "--delete",
               "--yes")  # fmt: skip
    assert gone.exit_code == 0, gone.stderr
    assert world.person_by_email(names[1]) is None
    assert [r["username"] for r in pool(cli)] == [SYNC, names[0]]
    again = run(cli, "-o", "json", "sync-user", "add", "--create", "--yes")
    assert [r["username"] for r in again.json()] == [names[1]]  # the free number is used again


def test_the_sandbox_creates_users_as_graph_documents_it(sandbox: Any) -> None:
    from tests.sandbox_helpers import ADMIN_SCOPES as SCOPES
    from tests.sandbox_helpers import client, ropc

    write = (*SCOPES, "https://graph.microsoft.com/User.ReadWrite.All")
    admin = sandbox.world.admin
    token = ropc(sandbox, admin.email, admin.password, write).json()["access_token"]
    reader = ropc(sandbox, admin.email, admin.password).json()["access_token"]
    body = {
        "accountEnabled": True,
        "displayName": "x",
        "mailNickname": "x",
        "userPrincipalName": "x@contoso.example",
        "passwordProfile": {"forceChangePasswordNextSignIn": True, "password": "Aa1!aaaa"},
    }
    with client(sandbox, reader) as c:
        assert c.post("/v1.0/users", json=body).status_code == 403  # no User.ReadWrite.All
    with client(sandbox, token) as c:
        weak = c.post("/v1.0/users", json={**body, "passwordProfile": {"password": "aaaaaaaa"}})
        assert weak.status_code == 400 and "complexity" in weak.json()["error"]["message"]
        other = c.post("/v1.0/users", json={**body, "userPrincipalName": "x@elsewhere.example"})
        assert other.status_code == 400 and "verified domain" in other.json()["error"]["message"]
        lacking = c.post("/v1.0/users", json={k: v for k, v in body.items() if k != "mailNickname"})
        assert lacking.status_code == 400 and "mailNickname" in lacking.json()["error"]["message"]
        made = c.post("/v1.0/users", json=body)
        assert made.status_code == 201 and made.json()["userPrincipalName"] == "x@contoso.example"
        assert "must_change_password" in sandbox.world.person_by_email("x@contoso.example").flags
        assert c.post("/v1.0/users", json=body).status_code == 400  # already exists
        assert c.delete(f"/v1.0/users/{made.json()['id']}").status_code == 204
        assert c.delete(f"/v1.0/users/{made.json()['id']}").status_code == 404
    assert sandbox.world.person_by_email("x@contoso.example") is None


def test_serve_takes_auto_approve_several_times(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sandbox serve --auto-approve A --auto-approve B` hands both to the sandbox's world."""
    import contextlib

    from presencectl.sandbox import server
    from presencectl.sandbox.world import World

    seen: list[World] = []

    @contextlib.contextmanager
    def capture(**kwargs: Any) -> Iterator[Any]:
        seen.append(World(users=3, auto_approve=kwargs["auto_approve"]))
        raise KeyboardInterrupt  # stop before serving: the arguments are what this test is about
        yield  # pragma: no cover

    monkeypatch.setattr(server, "running_sandbox", capture)
    cli("sandbox", "serve", "--auto-approve", ADMIN, "--auto-approve", POOL_B)
    assert seen and seen[0].auto_approve_all == (ADMIN, POOL_B)
    assert seen[0].auto_approve == ADMIN


def test_a_members_changed_password_is_stored_by_sign_in_keeping_the_pool(
    sbx: Any, cli: Any
) -> None:
    pw = sbx.passwords
    assert run(cli, "sync-user", "add", "--username", POOL_B, "--password-stdin",
               input=pw[POOL_B] + "\n").exit_code == 0  # fmt: skip
    sbx.control.post(f"/_sandbox/users/{POOL_B}/password", json={"password": "New-Pass-42!"})
    stale = run(cli, "-o", "json", "sync-user", "validate", "--username", POOL_B)
    assert stale.exit_code == 4 and stale.json()["error"]["code"] == "bad_credentials"
    fix = f"presencectl sync-user sign-in --username {POOL_B} --password-stdin"
    assert fix in stale.json()["error"]["hint"]
    wrong = run(cli, "sync-user", "sign-in", "--username", POOL_B, "--password-stdin",
                input="Not-It-42!\n")  # fmt: skip
    assert wrong.exit_code == 4  # proven before kept: the stored one is untouched
    assert secrets.get_secret("sandbox", f"sync_password:{POOL_B}") == pw[POOL_B]
    fixed = run(cli, "sync-user", "sign-in", "--username", POOL_B, "--password-stdin",
                input="New-Pass-42!\n")  # fmt: skip
    assert fixed.exit_code == 0, fixed.stderr
    assert secrets.get_secret("sandbox", f"sync_password:{POOL_B}") == "New-Pass-42!"
    assert [r["username"] for r in pool(cli)] == [SYNC, POOL_B]


def test_a_first_sync_user_from_the_environment_keeps_its_place(
    sbx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presencectl.identity import sync_pool

    profile = load_profile("sandbox")
    profile.sync_username = None
    monkeypatch.setenv("PRESENCECTL_SYNC_USERNAME", SYNC)
    sync_pool.add_member(profile, POOL_B, sync_pool.PASSWORD)
    save_profile(profile)
    members = [m.username for m in sync_pool.pool_members(load_profile("sandbox"))]
    assert members == [SYNC, POOL_B]
