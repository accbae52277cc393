"""sync-user set / validate / forget and the token providers, against the sandbox with real msal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from presencectl import secrets
from presencectl.config import config_path, load_profile, save_profile
from presencectl.identity.errors import PASSWORD_CHANGE_MESSAGE

ADMIN = "admin@contoso.example"
SYNC = "presence-sync@contoso.example"


@pytest.fixture
def sbx(cli: Any) -> Iterator[Any]:
    """A sandbox with setup-azure done (app, secret, consent) through the CLI."""
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=5, seed=1, auto_approve=ADMIN) as sb:
        sb.write_profile("sandbox")
        done = run(cli, "setup-azure")
        assert done.exit_code == 0, done.stderr
        yield sb


def run(cli: Any, *args: str, input: str = "") -> Any:
    return cli("--profile", "sandbox", "--no-input", *args, input=input)


def add_user(sb: Any, email: str, flags: tuple[str, ...] = ()) -> str:
    password = "Pw-" + email.split("@")[0] + "!9"
    r = sb.control.post(
        "/_sandbox/users",
        json={
            "email": email,
            "display_name": email,
            "on": ["teams"],
            "password": password,
            "flags": list(flags),
        },
    )
    assert r.status_code in (200, 201), r.text
    return password


def set_user(cli: Any, username: str, password: str) -> None:
    result = run(
        cli, "sync-user", "set", "--username", username, "--password-stdin", input=password + "\n"
    )
    assert result.exit_code == 0, result.stderr


def test_first_login_change_then_validates_at_once(sbx: Any, cli: Any) -> None:
    info = sbx.profile_info()
    set_user(cli, SYNC, info["sync_user_password"])

    table = run(cli, "sync-user", "validate")
    assert table.exit_code == 4
    assert PASSWORD_CHANGE_MESSAGE in table.stderr
    as_json = run(cli, "-o", "json", "sync-user", "validate")
    assert as_json.exit_code == 4
    err = as_json.json()["error"]
    assert err["code"] == "password_change_required"
    assert err["message"] == "Azure login error. Has first login password change been completed?"
    assert SYNC in err["hint"]

    # The user completes the change keeping the same password: the identical token request that
    # failed a moment ago must now reach the sandbox (msal would answer it from memory for 60 s).
    r = sbx.control.post(
        f"/_sandbox/users/{SYNC}/password", json={"password": info["sync_user_password"]}
    )
    assert r.status_code == 200
    ok = run(cli, "-o", "json", "sync-user", "validate")
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    status = ok.json()
    assert status["username"] == SYNC
    assert status["object_id"] == sbx.world.person_by_email(SYNC).azure_id
    assert "/" in status["presence"] and "Presence.Read.All" in status["scopes"]
    assert "sync_user" in load_profile("sandbox").verified

    for out in (
        table.stdout,
        table.stderr,
        as_json.stdout,
        ok.stdout,
        ok.stderr,
        config_path().read_text(),
    ):
        assert info["sync_user_password"] not in out


def test_one_provider_retries_for_real_after_the_password_is_fixed(sbx: Any) -> None:
    """The long-running engine keeps one provider: msal's 60-second 400 cache must not answer."""
    from presencectl.identity.errors import PasswordChangeRequired
    from presencectl.identity.tokens import sync_user_token_provider

    info = sbx.profile_info()
    profile = load_profile("sandbox")
    profile.sync_username = SYNC
    secrets.set_secret("sandbox", secrets.SYNC_PASSWORD, info["sync_user_password"])
    provider = sync_user_token_provider(profile)
    with pytest.raises(PasswordChangeRequired):
        provider(False)
    with pytest.raises(PasswordChangeRequired):
        provider(False)
    sbx.control.post(
        f"/_sandbox/users/{SYNC}/password", json={"password": info["sync_user_password"]}
    )
    token = provider(False)
    assert token.token.count(".") == 2 and token.expires_at > 0
    again = provider(True)  # force refresh: refresh token, no password round trip needed
    assert again.token != token.token


def test_msal_alone_would_answer_the_retry_from_its_cache(sbx: Any) -> None:
    """Why the provider clears msal's http cache: the same msal app, retried, never asks again."""
    import warnings

    from presencectl.identity import msal_apps

    info = sbx.profile_info()
    profile = load_profile("sandbox")
    app = msal_apps.public_app(profile, profile.client_id or "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        first = app.acquire_token_by_username_password(
            SYNC, info["sync_user_password"], ["User.Read"]
        )
        sbx.control.post(
            f"/_sandbox/users/{SYNC}/password", json={"password": info["sync_user_password"]}
        )
        second = app.acquire_token_by_username_password(
            SYNC, info["sync_user_password"], ["User.Read"]
        )
    assert first.get("error_codes") == [50055]
    assert second.get("error_codes") == [50055]  # stale: answered from msal's memory


@pytest.mark.parametrize(
    ("flags", "password_ok", "code"),
    [
        ((), False, "bad_credentials"),
        (("locked",), True, "account_locked"),
        (("disabled",), True, "account_disabled"),
        (("mfa_required",), True, "mfa_required"),
        (("federated",), True, "federated_account_unsupported"),
        (("must_change_password",), True, "password_change_required"),
    ],
)
def test_each_sign_in_failure_is_classified(
    sbx: Any, cli: Any, flags: tuple[str, ...], password_ok: bool, code: str
) -> None:
    email = f"sync-{code.replace('_', '-')}@contoso.example"
    password = add_user(sbx, email, flags)
    set_user(cli, email, password if password_ok else "wrong-" + password)
    table = run(cli, "sync-user", "validate")
    as_json = run(cli, "-o", "json", "sync-user", "validate")
    assert table.exit_code == 4 and as_json.exit_code == 4
    err = as_json.json()["error"]
    assert err["code"] == code
    assert err["hint"]
    assert err["message"] in table.stderr
    assert password not in table.stderr + as_json.stdout


def test_unknown_user(sbx: Any, cli: Any) -> None:
    set_user(cli, "nobody@contoso.example", "whatever-1")
    result = run(cli, "-o", "json", "sync-user", "validate")
    assert result.exit_code == 4 and result.json()["error"]["code"] == "user_not_found"


def test_consent_missing_and_public_client_off(sbx: Any, cli: Any) -> None:
    info = sbx.profile_info()
    sbx.control.post(
        f"/_sandbox/users/{SYNC}/password", json={"password": info["sync_user_password"]}
    )
    set_user(cli, SYNC, info["sync_user_password"])
    world = sbx.world
    client_id = load_profile("sandbox").client_id or ""
    saved = dict(world.permission_grants)
    world.permission_grants.clear()
    missing = run(cli, "-o", "json", "sync-user", "validate")
    assert missing.exit_code == 4
    assert missing.json()["error"]["code"] == "consent_required"
    assert "presencectl consent" in missing.json()["error"]["hint"]
    world.permission_grants.update(saved)

    world.application_by_app_id(client_id)["isFallbackPublicClient"] = False
    off = run(cli, "-o", "json", "sync-user", "validate")
    assert off.exit_code == 4
    assert off.json()["error"]["code"] == "public_client_disabled"
    assert "Allow public client flows" in off.json()["error"]["hint"]


def test_network_failure_is_exit_1(sbx: Any, cli: Any) -> None:
    import socket

    set_user(cli, SYNC, "x-password")
    profile = load_profile("sandbox")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    profile.authority_url = f"https://127.0.0.1:{port}"
    save_profile(profile)
    result = run(cli, "-o", "json", "sync-user", "validate")
    assert result.exit_code == 1
    assert result.json()["error"]["code"] == "network_error"


def test_set_reads_env_or_refuses_without_input_and_forget_removes(
    sbx: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = run(cli, "sync-user", "set", "--username", SYNC)
    assert refused.exit_code == 2
    assert "--password-stdin" in refused.stderr and "PRESENCECTL_SYNC_PASSWORD" in refused.stderr

    monkeypatch.setenv("PRESENCECTL_SYNC_PASSWORD", "from-env-123")
    stored = run(cli, "-o", "json", "sync-user", "set", "--username", SYNC)
    assert stored.exit_code == 0, stored.stderr
    assert "from-env-123" not in stored.stdout + stored.stderr
    assert "not stored" in stored.json()["password_stored_in"]
    monkeypatch.delenv("PRESENCECTL_SYNC_PASSWORD")
    # An environment secret is never written to disk (docs/ci.md promises it).
    assert secrets.get_secret("sandbox", secrets.SYNC_PASSWORD) is None
    assert "from-env-123" not in _files_text(secrets.fallback_path().parent)
    assert load_profile("sandbox").sync_username == SYNC
    piped = run(cli, "sync-user", "set", "--username", SYNC, "--password-stdin", input="pw-1\n")
    assert piped.exit_code == 0, piped.stderr
    assert secrets.get_secret("sandbox", secrets.SYNC_PASSWORD) == "pw-1"

    forgot = run(cli, "-o", "json", "sync-user", "forget")
    assert forgot.exit_code == 0
    assert forgot.json()["removed_password"] is True
    assert secrets.get_secret("sandbox", secrets.SYNC_PASSWORD) is None
    assert load_profile("sandbox").sync_username is None
    after = run(cli, "-o", "json", "sync-user", "validate")
    assert after.exit_code == 3 and after.json()["error"]["code"] == "sync_user_missing"


def _files_text(root: Any) -> str:
    from pathlib import Path

    return "".join(p.read_text("utf-8", "replace") for p in Path(root).rglob("*") if p.is_file())


def test_app_token_provider_and_missing_secret(sbx: Any) -> None:
    from presencectl.errors import ConfigError
    from presencectl.identity.tokens import app_token_provider

    profile = load_profile("sandbox")
    provider = app_token_provider(profile)
    token = provider(False)
    assert provider(False).token == token.token  # msal's cache, persisted through secrets
    assert provider(True).token != token.token
    # The sandbox, which issued it, reads its own token; the client never does.
    assert "Presence.ReadWrite.All" in sbx.world.verify_bearer("Bearer " + token.token).roles
    assert app_token_provider(load_profile("sandbox"))(
        False
    ).token  # a fresh process reuses the cache

    secrets.delete_secret("sandbox", secrets.CLIENT_SECRET)
    with pytest.raises(ConfigError) as missing:
        app_token_provider(profile)
    assert missing.value.code == "client_secret_missing" and "setup-azure" in missing.value.hint


def test_token_cache_survives_chunking() -> None:
    from presencectl.identity.msal_apps import PersistentTokenCache, forget_cache

    cache = PersistentTokenCache("p", "sync_user")
    big = {
        "AccessToken": {
            f"k{i}": {"secret": "x" * 50 + str(i) * 40, "credential_type": "AccessToken"}
            for i in range(300)
        }
    }
    import json
    import os

    cache.cache.deserialize(json.dumps(big))
    cache.cache.has_state_changed = True
    cache.save()
    assert (secrets.get_secret("p", "token_cache:sync_user") or "").startswith("chunks:")
    again = PersistentTokenCache("p", "sync_user")
    assert json.loads(again.cache.serialize())["AccessToken"]["k7"]["secret"].startswith("x")
    assert forget_cache("p", "sync_user") is True
    assert secrets.get_secret("p", "token_cache:sync_user:0") is None
    assert os.environ.get("PRESENCECTL_SYNC_PASSWORD") is None
