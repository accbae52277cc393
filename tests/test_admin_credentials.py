"""Credentials an admin can trust (issue 15 item 2), through the CLI against the sandbox:
`sync-user validate` proves the stored password, `sync-user set` asks twice, `logout` ends the
admin's cached sign-in, and a new client secret revokes the one setup-azure made before."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from presencectl import secrets
from presencectl.config import load_profile
from presencectl.identity.msal_apps import ADMIN as ADMIN_CACHE
from presencectl.identity.msal_apps import SYNC_USER, cache_secret_name

pytestmark = pytest.mark.timeout(120)

ADMIN = "admin@contoso.example"


@pytest.fixture
def sbx(cli: Any) -> Iterator[Any]:
    """A sandbox with setup-azure done through the CLI (profile `sandbox`)."""
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=5, seed=1, auto_approve=ADMIN) as sb:
        sb.write_profile("sandbox")
        done = run(cli, "setup-azure")
        assert done.exit_code == 0, done.stderr
        yield sb


def run(cli: Any, *args: str, input: str = "") -> Any:
    return cli("--profile", "sandbox", "--no-input", *args, input=input)


def test_validate_signs_in_with_the_stored_password_not_the_cached_token(
    sbx: Any, cli: Any
) -> None:
    user, good = sbx.profile_info()["sync_user"], "N3w-Sync-Passw0rd!"
    sbx.control.post(
        f"/_sandbox/users/{user}/password", json={"password": good}
    ).raise_for_status()  # the first-login change, done
    ok = run(cli, "sync-user", "set", "--username", user, "--password-stdin", input=good + "\n")
    assert ok.exit_code == 0, ok.stderr
    assert run(cli, "sync-user", "validate").exit_code == 0
    assert secrets.get_secret("sandbox", cache_secret_name(SYNC_USER))  # a refresh token exists

    typo = run(cli, "sync-user", "set", "--username", user, "--password-stdin", input="typo\n")
    assert typo.exit_code == 0, typo.stderr
    wrong = run(cli, "-o", "json", "sync-user", "validate")
    assert wrong.exit_code == 4, wrong.stdout + wrong.stderr
    assert "sync_user" not in load_profile("sandbox").verified


def test_set_asks_twice_on_a_terminal(sbx: Any, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from presencectl.cli.context import AppContext

    user = sbx.profile_info()["sync_user"]
    answers = iter(["first-Pw1", "other-Pw2"])
    prompts: list[str] = []
    monkeypatch.setattr(AppContext, "interactive", property(lambda self: True))
    monkeypatch.setattr(
        "getpass.getpass", lambda prompt, stream=None: prompts.append(prompt) or next(answers)
    )
    differ = cli("--profile", "sandbox", "sync-user", "set", "--username", user)
    assert differ.exit_code == 2
    assert "differ" in differ.stderr
    assert len(prompts) == 2
    assert secrets.get_secret("sandbox", secrets.SYNC_PASSWORD) is None

    answers = iter(["same-Pw3", "same-Pw3"])
    same = cli("--profile", "sandbox", "sync-user", "set", "--username", user)
    assert same.exit_code == 0, same.stderr
    assert secrets.get_secret("sandbox", secrets.SYNC_PASSWORD) == "same-Pw3"


def test_logout_removes_the_admins_cached_tokens_and_says_so(sbx: Any, cli: Any) -> None:
    assert secrets.get_secret("sandbox", cache_secret_name(ADMIN_CACHE))
    out = run(cli, "-o", "json", "logout")
    assert out.exit_code == 0, out.stderr
    assert out.json() == [{"profile": "sandbox", "admin_token_cache": "removed"}]
    assert secrets.get_secret("sandbox", cache_secret_name(ADMIN_CACHE)) is None
    assert secrets.get_secret("sandbox", secrets.CLIENT_SECRET)  # the app's secret stays
    again = run(cli, "logout", "--all")
    assert again.exit_code == 0
    assert "Nothing to remove" in again.stderr
    # The next admin command has to sign in again (the device code is shown).
    consent = run(cli, "consent")
    assert consent.exit_code == 0, consent.stderr
    assert "enter the code" in consent.stderr


def test_rotate_secret_revokes_the_previous_secret_once_the_new_one_works(
    sbx: Any, cli: Any
) -> None:
    profile = load_profile("sandbox")
    old = secrets.get_secret("sandbox", secrets.CLIENT_SECRET)
    assert old and sbx.world.client_secret_ok(profile.client_id, old)
    rotated = run(cli, "-o", "json", "setup-azure", "--rotate-secret")
    assert rotated.exit_code == 0, rotated.stderr
    steps = {s["step"]: s for s in rotated.json()["steps"]}
    assert set(steps) == {"Azure sign-in", "Client secret"}  # nothing else of setup runs
    assert "revoked" in steps["Client secret"]["detail"]
    new = secrets.get_secret("sandbox", secrets.CLIENT_SECRET)
    assert new and new != old
    assert not sbx.world.client_secret_ok(profile.client_id, old)
    assert sbx.world.client_secret_ok(profile.client_id, new)
    app = sbx.world.application_by_app_id(profile.client_id)
    assert [c["keyId"] for c in app["passwordCredentials"]] == [
        load_profile("sandbox").verified["client_secret_key_id"]
    ]
    check = run(cli, "consent", "--check")
    assert check.exit_code == 0, check.stderr
    for text in (rotated.stdout, rotated.stderr):
        assert old not in text and new not in text


def test_rotate_secret_refuses_a_secret_from_the_environment(
    sbx: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = secrets.get_secret("sandbox", secrets.CLIENT_SECRET)
    assert stored
    monkeypatch.setenv("PRESENCECTL_CLIENT_SECRET", stored)
    refused = run(cli, "-o", "json", "setup-azure", "--rotate-secret")
    assert refused.exit_code == 1
    assert refused.json()["error"]["code"] == "client_secret_from_env"
    app = sbx.world.application_by_app_id(load_profile("sandbox").client_id)
    assert len(app["passwordCredentials"]) == 1


def test_setup_azure_replacing_a_lost_secret_revokes_the_old_one(sbx: Any, cli: Any) -> None:
    profile = load_profile("sandbox")
    old = secrets.get_secret("sandbox", secrets.CLIENT_SECRET)
    assert old
    secrets.delete_secret("sandbox", secrets.CLIENT_SECRET)  # lost: setup must make a new one
    again = run(cli, "-o", "json", "setup-azure")
    assert again.exit_code == 0, again.stderr
    step = next(s for s in again.json()["steps"] if s["step"] == "Client secret")
    assert step["result"] == "created" and "revoked" in step["detail"]
    assert not sbx.world.client_secret_ok(profile.client_id, old)
    app = sbx.world.application_by_app_id(profile.client_id)
    assert len(app["passwordCredentials"]) == 1


def test_an_unproven_new_secret_is_retried_then_refused_and_nothing_revoked(sbx: Any) -> None:
    import asyncio

    from presencectl.errors import AuthError
    from presencectl.identity.secret_rotation import PROOF_DELAYS_S, prove_secret

    waited: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waited.append(seconds)

    profile = load_profile("sandbox")
    with pytest.raises(AuthError) as caught:
        asyncio.run(
            prove_secret(profile, profile.client_id or "", "not-the-secret", sleep=fake_sleep)
        )
    assert caught.value.code == "client_secret_unproven"
    assert waited == [d for d in PROOF_DELAYS_S if d]  # every attempt made, none for real


def test_rotate_secret_alone(sbx: Any, cli: Any) -> None:
    mixed = run(cli, "-o", "json", "setup-azure", "--rotate-secret", "--tenant", "other.example")
    assert mixed.exit_code == 2
    assert "--tenant" in mixed.json()["error"]["message"]


def test_consent_check_without_an_admin_proves_by_use_and_satisfies_the_gate(
    sbx: Any, cli: Any
) -> None:
    from presencectl.config import save_profile

    assert run(cli, "logout").exit_code == 0  # no admin here, as in CI
    profile = load_profile("sandbox")
    profile.verified.pop("admin_consent", None)
    save_profile(profile)
    proven = run(cli, "-o", "json", "consent", "--check")
    assert proven.exit_code == 0, proven.stderr
    assert "enter the code" not in proven.stderr  # no device code: nobody would answer it
    assert "--as-app" in proven.stderr
    assert {c["permission"] for c in proven.json()} == {
        "User.Read.All", "Presence.Read.All or Presence.ReadWrite.All",
    }  # fmt: skip
    assert load_profile("sandbox").verified.get("app_permissions")

    world = sbx.world
    sp = world.service_principal_by_app_id(profile.client_id)
    for key in [k for k, a in world.app_role_assignments.items() if a["principalId"] == sp["id"]]:
        del world.app_role_assignments[key]
    refused = run(cli, "-o", "json", "consent", "--check", "--as-app")
    assert refused.exit_code == 4
    assert refused.json()["error"]["code"] == "consent_missing"
    assert "User.Read.All" in refused.json()["error"]["message"]
