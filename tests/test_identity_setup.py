"""setup-azure and consent against the sandbox: real msal, real httpx, real loopback listener."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from presencectl import secrets
from presencectl.config import config_path, load_profile
from presencectl.graph.permissions import APP_ROLES

ADMIN = "admin@contoso.example"


@pytest.fixture
def sbx() -> Iterator[Any]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=5, seed=1, auto_approve=ADMIN) as sb:
        sb.write_profile("sandbox")
        yield sb


def add_user(
    sb: Any,
    email: str,
    *,
    roles: list[str],
    on: tuple[str, ...] = ("teams", "connect"),
    flags: tuple[str, ...] = (),
) -> str:
    password = "Pw-" + email.split("@")[0] + "!9"
    r = sb.control.post(
        "/_sandbox/users",
        json={
            "email": email,
            "display_name": email.split("@")[0],
            "on": list(on),
            "password": password,
            "roles": roles,
            "flags": list(flags),
        },
    )
    assert r.status_code in (200, 201), r.text
    return password


def setup(cli: Any, *args: str) -> Any:
    return cli("--profile", "sandbox", "--no-input", *args)


def all_secrets(sb: Any, keyring_store: dict[tuple[str, str], str]) -> list[str]:
    info = sb.profile_info()
    values = [
        v for v in keyring_store.values() if len(v) >= 8 and not v.startswith(("z1:", "chunks:"))
    ]
    values += [info["admin_password"], info["sync_user_password"], info["connect_client_secret"]]
    return values


def test_setup_azure_creates_everything_then_is_idempotent(
    sbx: Any, cli: Any, isolated_env: Any
) -> None:
    first = setup(cli, "-o", "json", "setup-azure")
    assert first.exit_code == 0, first.stderr + first.stdout
    report = first.json()
    assert report["changed"] is True
    results = {s["step"]: s["result"] for s in report["steps"]}
    assert results["App registration"] == "created"
    assert results["Client secret"] == "created"
    assert results["Admin consent"] == "created"
    assert all(
        results[k] == "ok"
        for k in ("Global Administrator", "Extend API client", "Admin in Connect")
    )
    # Not visible through the API: a step the admin confirms in Control Panel, never a failure.
    assert results["Security Manager"] == "confirm"

    world = sbx.world
    profile = load_profile("sandbox")
    assert profile.client_id == report["client_id"]
    assert profile.tenant_id == world.tenant_id
    app = world.application_by_app_id(profile.client_id)
    assert app["isFallbackPublicClient"] is True
    assert world.app_roles_of(profile.client_id) == set(APP_ROLES)
    assert {"Presence.Read.All", "User.Read"} <= world.delegated_scopes_of(profile.client_id)
    assert secrets.get_secret("sandbox", secrets.CLIENT_SECRET)
    for key in ("global_admin", "admin_in_connect", "admin_consent"):
        assert key in profile.verified
    # Nothing claims to have verified what the API cannot show.
    assert not {"connect_security_manager", "same_email"} & set(profile.verified)

    counts = (
        len(world.applications),
        len(world.service_principals),
        len(world.app_role_assignments),
        len(world.permission_grants),
        len(app.get("passwordCredentials") or []),
    )
    second = setup(cli, "-o", "json", "setup-azure")
    assert second.exit_code == 0, second.stderr
    again = second.json()
    assert again["changed"] is False
    # "confirm" is information (the Security Manager step), never a change.
    assert {s["result"] for s in again["steps"]} <= {"ok", "unchanged", "confirm"}
    assert "Nothing changed" in second.stderr
    assert "enter the code" not in second.stderr  # the admin's cached token was used silently
    app = world.application_by_app_id(profile.client_id)
    assert counts == (
        len(world.applications),
        len(world.service_principals),
        len(world.app_role_assignments),
        len(world.permission_grants),
        len(app.get("passwordCredentials") or []),
    )

    check = setup(cli, "consent", "--check")
    assert check.exit_code == 0, check.stderr
    assert "Presence.ReadWrite.All" in check.stdout

    leaked = all_secrets(sbx, isolated_env.store)
    config_text = config_path().read_text()
    for out in (
        first.stdout,
        first.stderr,
        second.stdout,
        second.stderr,
        check.stdout,
        check.stderr,
        config_text,
    ):
        for secret in leaked:
            assert secret not in out


def test_device_code_message_on_stderr_and_approved_through_control_api(cli: Any) -> None:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=3, seed=2) as sb:
        sb.write_profile("sandbox")
        approved: list[str] = []

        def approver() -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not approved:
                for code in list(sb.world.device_codes.values()):
                    r = sb.control.post(
                        "/_sandbox/devicecode/approve",
                        json={"user_code": code.user_code, "user": ADMIN},
                    )
                    assert r.status_code == 200, r.text
                    approved.append(code.user_code)
                time.sleep(0.05)

        thread = threading.Thread(target=approver, daemon=True)
        thread.start()
        result = setup(cli, "setup-azure")
        thread.join(5)
    assert result.exit_code == 0, result.stderr + result.stdout
    assert approved
    shown = approved[0]
    assert "enter the code" in result.stderr and shown[:3] in result.stderr
    assert "enter the code" not in result.stdout
    assert "App registration" in result.stdout


def test_admin_sign_in_core_api_calls_back_with_the_prompt() -> None:
    from presencectl.identity.tokens import DeviceCodePrompt, admin_sign_in
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=3, seed=3) as sb:
        profile = sb.write_profile("sandbox")
        prompts: list[DeviceCodePrompt] = []

        def on_message(prompt: DeviceCodePrompt) -> None:
            prompts.append(prompt)
            sb.control.post(
                "/_sandbox/devicecode/approve", json={"user_code": prompt.user_code, "user": ADMIN}
            )

        session = admin_sign_in(profile, on_message=on_message)
    assert len(prompts) == 1 and prompts[0].verification_uri.endswith("/devicelogin")
    assert session.username == ADMIN and session.tenant_id == sb.world.tenant_id
    assert session.provider(False).token.count(".") == 2


def test_not_global_admin_is_a_failed_prerequisite(cli: Any) -> None:
    from presencectl.sandbox import running_sandbox

    helpdesk = "helpdesk@contoso.example"
    with running_sandbox(users=3, seed=4, auto_approve=helpdesk) as sb:
        add_user(sb, helpdesk, roles=["Security Manager"])
        sb.write_profile("sandbox")
        result = setup(cli, "-o", "json", "setup-azure", "--connect-account-email", helpdesk)
    assert result.exit_code == 3
    err = result.json()["error"]
    assert err["code"] == "prerequisite_global_admin"
    # A non-admin cannot consent to the directory scopes setup needs: that is the sign-in's answer.
    assert "Global Administrator" in err["message"] and "assign you the role" in err["hint"]
    assert not sb.world.applications  # nothing created


def test_admin_not_a_connect_user_is_a_warning_with_a_remedy(cli: Any) -> None:
    from presencectl.sandbox import running_sandbox

    other = "it-admin@contoso.example"
    with running_sandbox(users=3, seed=5, auto_approve=other) as sb:
        add_user(sb, other, roles=["Global Administrator"], on=("teams",))
        sb.write_profile("sandbox")
        result = setup(cli, "-o", "json", "setup-azure")
        assert sb.world.applications  # setup went on
    assert result.exit_code == 0, result.stdout + result.stderr
    steps = {s["step"]: s for s in result.json()["steps"]}
    assert steps["Admin in Connect"]["result"] == "warning"
    assert other in steps["Admin in Connect"]["detail"]
    assert "Control Panel" in steps["Admin in Connect"]["remedy"]
    assert "admin_in_connect" not in load_profile("sandbox").verified


def test_security_manager_is_a_step_to_confirm_in_control_panel(cli: Any) -> None:
    from presencectl.sandbox import running_sandbox

    boss = "boss@contoso.example"
    with running_sandbox(users=3, seed=6, auto_approve=boss) as sb:
        add_user(sb, boss, roles=["Global Administrator"])  # no Security Manager anywhere
        sb.write_profile("sandbox")
        result = setup(cli, "setup-azure", "--connect-account-email", boss)
    assert result.exit_code == 0, result.stderr
    assert f"? Security Manager: confirm in Control Panel that {boss}" in result.stderr
    assert "the API does not show roles" in result.stderr


def test_no_connect_client_yet_is_a_warning_naming_kb_63780(
    sbx: Any, cli: Any, isolated_env: Any
) -> None:
    secrets.delete_secret("sandbox", secrets.CONNECT_CLIENT_SECRET)
    result = setup(cli, "-o", "json", "setup-azure")
    assert result.exit_code == 0, result.stdout + result.stderr
    steps = {s["step"]: s for s in result.json()["steps"]}
    assert steps["Extend API client"]["result"] == "warning"
    assert "KB 63780" in steps["Extend API client"]["remedy"]
    assert "presencectl connect set" in steps["Extend API client"]["remedy"]
    assert "Admin in Connect" not in steps


def test_connect_credentials_refused(sbx: Any, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESENCECTL_CONNECT_CLIENT_SECRET", "not-the-secret")
    result = setup(cli, "-o", "json", "setup-azure")
    assert result.exit_code == 3
    assert result.json()["error"]["code"] == "prerequisite_connect"


def test_consent_check_reports_missing_roles_and_consent_regrants(sbx: Any, cli: Any) -> None:
    assert setup(cli, "setup-azure").exit_code == 0
    world = sbx.world
    client_id = load_profile("sandbox").client_id
    sp = world.service_principal_by_app_id(client_id)
    for key in [k for k, a in world.app_role_assignments.items() if a["principalId"] == sp["id"]]:
        del world.app_role_assignments[key]

    missing = setup(cli, "-o", "json", "consent", "--check")
    assert missing.exit_code == 4
    err = missing.json()["error"]
    assert err["code"] == "consent_missing"
    assert "Presence.ReadWrite.All" in err["message"] and "User.Read.All" in err["message"]
    assert "presencectl consent" in err["hint"]

    regrant = setup(cli, "-o", "json", "consent")
    assert regrant.exit_code == 0, regrant.stderr
    assert regrant.json()["result"] in ("created", "updated")
    assert setup(cli, "consent", "--check").exit_code == 0


def _follow_consent(sb: Any, url: str, *, state: str | None = None) -> httpx.Response:
    """What a browser does: open the consent URL, follow the redirect to the loopback listener."""
    answer = sb.control.get(url.replace(sb.base_url, ""))
    assert answer.status_code in (302, 303, 307), answer.text
    location = answer.headers["location"].replace("http://localhost:", "http://127.0.0.1:")
    if state is not None:
        location = location.replace("state=", f"state={state}&ignored=")
    return httpx.get(location, timeout=5)


def test_setup_with_consent_url_and_loopback_listener(sbx: Any) -> None:
    from presencectl.identity import setup as core

    profile = load_profile("sandbox")
    pages: list[int] = []

    def browser(url: str) -> None:
        assert "/v2.0/adminconsent?" in url and "state=" in url

        def go() -> None:
            forged = _follow_consent(sbx, url, state="forged")
            pages.append(forged.status_code)
            pages.append(_follow_consent(sbx, url).status_code)

        threading.Thread(target=go, daemon=True).start()

    report = core.setup_azure(
        profile,
        core.SetupOptions(consent_url=True, consent_timeout=10),
        method="device_code",
        on_message=lambda p: None,
        on_step=lambda s: None,
        on_consent_url=browser,
    )
    assert pages == [400, 200]  # a wrong state is refused, the right one answered once
    consent = next(s for s in report.steps if s.step == "Admin consent")
    assert consent.result == "created" and "consent URL" in consent.detail
    assert sbx.world.app_roles_of(report.client_id) == set(APP_ROLES)


def test_consent_url_declined_and_timeout(sbx: Any, cli: Any) -> None:
    from presencectl.errors import AuthError
    from presencectl.identity import setup as core
    from presencectl.identity.consent_listener import ConsentListener

    assert setup(cli, "setup-azure").exit_code == 0
    profile = load_profile("sandbox")
    world = sbx.world
    sp = world.service_principal_by_app_id(profile.client_id)
    for key in [k for k, a in world.app_role_assignments.items() if a["principalId"] == sp["id"]]:
        del world.app_role_assignments[key]

    listener = ConsentListener()
    with pytest.raises(AuthError) as timeout:
        listener.wait(timeout=0.3)
    assert timeout.value.code == "consent_timeout"

    redirects: list[str] = []

    def decline(url: str) -> None:
        # The admin presses Cancel: the sandbox answers with Entra's documented error redirect.
        def go() -> None:
            answer = sbx.control.get(url.replace(sbx.base_url, "") + "&sandbox_consent=decline")
            location = answer.headers["location"]
            redirects.append(location)
            httpx.get(location.replace("http://localhost:", "http://127.0.0.1:"), timeout=5)

        threading.Thread(target=go, daemon=True).start()

    import asyncio

    with pytest.raises(AuthError) as declined:
        asyncio.run(
            core.consent_by_url(
                profile, profile.client_id or "", profile.tenant_id or "", on_url=decline, timeout=5
            )
        )
    # Entra's refusal shape (entra-docs v2-admin-consent.md): admin_consent=True *and* an error.
    query = parse_qs(urlsplit(redirects[0]).query)
    assert query["admin_consent"] == ["True"]
    assert query["error"] == ["consent_required"]
    assert query["error_description"][0].startswith("AADSTS65004")
    assert declined.value.code == "consent_declined"
    assert declined.value.exit_code == 4
    assert "AADSTS65004" in declined.value.message
    assert "denied the request" in declined.value.message
    assert "Trace ID" not in declined.value.message
    assert world.app_roles_of(profile.client_id) == set()  # nothing recorded as granted


def test_consent_redirect_with_error_and_admin_consent_is_a_refusal() -> None:
    from presencectl.identity.consent_listener import ConsentListener

    listener = ConsentListener()
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(listener.wait(timeout=5)), daemon=True)
    thread.start()
    httpx.get(
        f"http://127.0.0.1:{listener.port}/",
        params={
            "admin_consent": "True",
            "error": "consent_required",
            "error_description": "AADSTS65004: The resource owner or authorization server denied "
            "the request.\r\nTrace ID: x",
            "state": listener.state,
        },
        timeout=5,
    )
    thread.join(5)
    answer = done[0]
    assert answer.granted is False
    assert answer.error == "consent_required"
    assert answer.aadsts == "AADSTS65004"


def test_consent_redirect_tenant_is_compared_never_adopted(sbx: Any, cli: Any) -> None:
    from presencectl.errors import AuthError
    from presencectl.identity import setup as core

    assert setup(cli, "setup-azure").exit_code == 0
    profile = load_profile("sandbox")
    other = "11111111-2222-3333-4444-555555555555"

    def forged(url: str) -> None:
        def go() -> None:
            state = parse_qs(urlsplit(url).query)["state"][0]
            port = urlsplit(parse_qs(urlsplit(url).query)["redirect_uri"][0]).port
            httpx.get(
                f"http://127.0.0.1:{port}/",
                params={"admin_consent": "True", "tenant": other, "state": state},
                timeout=5,
            )

        threading.Thread(target=go, daemon=True).start()

    import asyncio

    with pytest.raises(AuthError) as wrong:
        asyncio.run(
            core.consent_by_url(
                profile, profile.client_id or "", profile.tenant_id or "", on_url=forged, timeout=5
            )
        )
    assert wrong.value.code == "consent_wrong_tenant"
    assert load_profile("sandbox").tenant_id == sbx.world.tenant_id
