"""The sandbox's Entra ID, driven by real msal (through presencectl.transport) and raw httpx."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sandbox_helpers import (
    BOOTSTRAP,
    admin_consent,
    admin_token,
    client,
    confidential_app,
    create_presence_app,
    public_app,
    ropc,
)

from presencectl.graph.permissions import ADMIN_SCOPES, GRAPH_DEFAULT_SCOPE

pytestmark = pytest.mark.filterwarnings("ignore:This API has been deprecated:DeprecationWarning")

GRAPH_USER_READ = "https://graph.microsoft.com/User.Read"
PRESENCE_READ = "https://graph.microsoft.com/Presence.Read.All"


def add_user(sb: Any, email: str, flags: list[str], password: str = "Passw0rd!long") -> None:
    response = sb.control.post(
        "/_sandbox/users", json={"email": email, "password": password, "flags": flags}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("tenant_key", ["tenant_id", "domain", "organizations"])
def test_openid_configuration_for_every_tenant_spelling(sandbox: Any, tenant_key: str) -> None:
    tenant = {
        "tenant_id": sandbox.world.tenant_id,
        "domain": "contoso.example",
        "organizations": "organizations",
    }[tenant_key]
    doc = sandbox.control.get(f"/{tenant}/v2.0/.well-known/openid-configuration").json()
    assert doc["token_endpoint"] == f"{sandbox.base_url}/{tenant}/oauth2/v2.0/token"
    assert doc["device_authorization_endpoint"].endswith("/oauth2/v2.0/devicecode")
    assert doc["issuer"] == f"{sandbox.base_url}/{sandbox.world.tenant_id}/v2.0"


def test_unknown_tenant_is_aadsts90002(sandbox: Any) -> None:
    response = sandbox.control.get("/fabrikam.example/v2.0/.well-known/openid-configuration")
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]


def test_msal_password_sign_in_for_the_admin(sandbox: Any) -> None:
    admin = sandbox.world.admin
    result = public_app(sandbox).acquire_token_by_username_password(
        admin.email, admin.password, scopes=list(ADMIN_SCOPES)
    )
    assert "access_token" in result, result
    claims = sandbox.world.verify_bearer("Bearer " + result["access_token"])
    assert claims.kind == "delegated" and claims.upn == admin.email and claims.appid == BOOTSTRAP
    assert {"Application.ReadWrite.All", "User.Read"} <= claims.scp
    assert result["id_token_claims"]["preferred_username"] == admin.email


@pytest.mark.parametrize(
    ("flags", "password_ok", "code", "error", "suberror"),
    [
        (None, True, 50034, "invalid_grant", None),
        (["disabled"], True, 50057, "invalid_grant", None),
        (["locked"], True, 50053, "invalid_grant", None),
        ([], False, 50126, "invalid_grant", None),
        (["must_change_password"], True, 50055, "invalid_grant", "user_password_expired"),
        (["mfa_required"], True, 50076, "invalid_grant", "basic_action"),
        (["disabled", "must_change_password"], False, 50057, "invalid_grant", None),
    ],
)
def test_password_sign_in_errors_are_entras(
    sandbox: Any,
    flags: list[str] | None,
    password_ok: bool,
    code: int,
    error: str,
    suberror: str | None,
) -> None:
    email = "flagged@contoso.example"
    if flags is not None:
        add_user(sandbox, email, flags)
    result = public_app(sandbox).acquire_token_by_username_password(
        email, "Passw0rd!long" if password_ok else "wrong-password", scopes=[GRAPH_USER_READ]
    )
    assert result["error_codes"] == [code]
    assert result["error"] == error
    assert result.get("suberror") == suberror
    assert result["error_description"].startswith(f"AADSTS{code}: ")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(result)


def test_sync_user_has_a_pending_password_change_until_control_api_changes_it(sandbox: Any) -> None:
    sync = sandbox.world.sync_user
    first = ropc(sandbox, sync.email, sync.password, scopes=(GRAPH_USER_READ,))
    assert first.json()["error_codes"] == [50055]
    sandbox.control.post(
        f"/_sandbox/users/{sync.email}/password", json={"password": "N3w-password!"}
    )
    assert ropc(sandbox, sync.email, "N3w-password!", scopes=(GRAPH_USER_READ,)).status_code == 200


def test_federated_user_sends_msal_down_ws_trust_and_it_fails(sandbox: Any) -> None:
    add_user(sandbox, "fed@contoso.example", ["federated"])
    realm = sandbox.control.get("/common/userrealm/fed@contoso.example?api-version=1.0").json()
    assert realm["account_type"] == "Federated"
    assert (
        sandbox.control.get("/common/userrealm/admin@contoso.example").json()["account_type"]
        == "Managed"
    )
    with pytest.raises(RuntimeError, match=r"WsTrust|RSTR"):
        public_app(sandbox).acquire_token_by_username_password(
            "fed@contoso.example", "Passw0rd!long", scopes=[GRAPH_USER_READ]
        )


def test_our_app_without_public_client_flows_gets_7000218_then_65001_without_consent(
    sandbox: Any,
) -> None:
    token = admin_token(sandbox)
    closed = create_presence_app(sandbox, token, public_client=False)
    admin = sandbox.world.admin
    result = public_app(sandbox, closed["appId"]).acquire_token_by_username_password(
        admin.email, admin.password, scopes=[PRESENCE_READ]
    )
    assert result["error_codes"] == [7000218]
    open_app = create_presence_app(sandbox, token, public_client=True)
    result = public_app(sandbox, open_app["appId"]).acquire_token_by_username_password(
        admin.email, admin.password, scopes=[PRESENCE_READ]
    )
    assert result["error_codes"] == [65001] and result["suberror"] == "consent_required"
    assert admin_consent(sandbox, open_app["appId"]).status_code == 302
    result = public_app(sandbox, open_app["appId"]).acquire_token_by_username_password(
        admin.email, admin.password, scopes=[PRESENCE_READ]
    )
    assert "access_token" in result, result
    assert sandbox.world.verify_bearer("Bearer " + result["access_token"]).scp == {
        "Presence.Read.All"
    }


def test_admin_consent_grants_roles_and_client_credentials_carry_them(sandbox: Any) -> None:
    app = create_presence_app(sandbox, admin_token(sandbox))
    before = confidential_app(sandbox, app["appId"], app["secret"]).acquire_token_for_client(
        [GRAPH_DEFAULT_SCOPE]
    )
    assert before["error_codes"] == [7000229]  # no service principal before consent
    response = admin_consent(sandbox, app["appId"])
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["admin_consent"] == ["True"] and query["tenant"] == [sandbox.world.tenant_id]
    assert query["state"] == ["st8"] and query["scope"] == [GRAPH_DEFAULT_SCOPE]
    result = confidential_app(sandbox, app["appId"], app["secret"]).acquire_token_for_client(
        [GRAPH_DEFAULT_SCOPE]
    )
    claims = sandbox.world.verify_bearer("Bearer " + result["access_token"])
    assert claims.kind == "app" and claims.roles == {"Presence.ReadWrite.All", "User.Read.All"}
    wrong = confidential_app(sandbox, app["appId"], "not-the-secret").acquire_token_for_client(
        [GRAPH_DEFAULT_SCOPE]
    )
    assert wrong["error"] == "invalid_client" and wrong["error_codes"] == [7000215]


def test_admin_consent_by_a_non_admin_redirects_with_access_denied(sandbox: Any) -> None:
    app = create_presence_app(sandbox, admin_token(sandbox))
    someone = next(p for p in sandbox.world.people if p.azure_id and not p.roles and not p.flags)
    response = admin_consent(sandbox, app["appId"], user=someone.email)
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["error"] == ["access_denied"] and "error_description" in query
    assert sandbox.world.app_roles_of(app["appId"]) == set()


def test_device_code_pending_then_approved_then_refresh(sandbox: Any) -> None:
    app = public_app(sandbox)
    flow = app.initiate_device_flow(scopes=list(ADMIN_SCOPES))
    assert flow["user_code"] and "verification_uri" in flow
    with client(sandbox) as c:
        pending = c.post(
            f"/{sandbox.world.tenant_id}/oauth2/v2.0/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "client_id": BOOTSTRAP,
                "device_code": flow["device_code"],
            },
        )
    assert pending.json()["error"] == "authorization_pending"
    approved = sandbox.control.post(
        "/_sandbox/devicecode/approve",
        json={"user_code": flow["user_code"], "user": "admin@contoso.example"},
    )
    assert approved.status_code == 200
    result = app.acquire_token_by_device_flow(flow)
    assert "access_token" in result, result
    account = app.get_accounts()[0]
    refreshed = app.acquire_token_silent(list(ADMIN_SCOPES), account=account, force_refresh=True)
    assert refreshed and refreshed["access_token"] != result["access_token"]


def test_device_code_expires_with_the_clock(sandbox: Any) -> None:
    flow = public_app(sandbox).initiate_device_flow(scopes=[GRAPH_USER_READ])
    sandbox.control.post("/_sandbox/clock/advance", json={"seconds": 901})
    with client(sandbox) as c:
        expired = c.post(
            f"/{sandbox.world.tenant_id}/oauth2/v2.0/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "client_id": BOOTSTRAP,
                "device_code": flow["device_code"],
            },
        )
    assert expired.json()["error"] == "expired_token"


def test_auto_approve_signs_device_codes_in_at_once() -> None:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(auto_approve="admin@contoso.example", users=5) as sb:
        app = public_app(sb)
        result = app.acquire_token_by_device_flow(
            app.initiate_device_flow(scopes=[GRAPH_USER_READ])
        )
        assert (
            sb.world.verify_bearer("Bearer " + result["access_token"]).upn
            == "admin@contoso.example"
        )


def test_tokens_expire_by_the_world_clock() -> None:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=5, token_lifetime=120) as sb:
        token = admin_token(sb)
        with client(sb, token) as c:
            assert c.get("/v1.0/me").status_code == 200
            sb.control.post("/_sandbox/clock/advance", json={"seconds": 121})
            response = c.get("/v1.0/me")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "InvalidAuthenticationToken"
        assert "expired" in response.json()["error"]["message"]


def test_unknown_client_and_bad_grant(sandbox: Any) -> None:
    admin = sandbox.world.admin
    unknown = ropc(
        sandbox, admin.email, admin.password, client_id="00000000-0000-0000-0000-000000000001"
    )
    assert unknown.json()["error_codes"] == [700016]
    with client(sandbox) as c:
        bad = c.post(
            f"/{sandbox.world.tenant_id}/oauth2/v2.0/token",
            data={"grant_type": "refresh_token", "client_id": BOOTSTRAP, "refresh_token": "nope"},
        )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"


def test_a_grant_without_the_sign_in_scopes_is_refused_65001(sandbox: Any) -> None:
    """msal asks for openid, profile and offline_access on every sign-in; Entra checks them
    against the grant like any delegated permission, so a grant of only the Graph scopes is
    AADSTS65001 (issue 22 item 10)."""
    token = admin_token(sandbox)
    app = create_presence_app(sandbox, token, public_client=True)
    world = sandbox.world
    graph_sp = world.graph_service_principal["id"]
    with client(sandbox, token) as c:
        sp = c.post("/v1.0/servicePrincipals", json={"appId": app["appId"]}).json()
        grant = c.post(
            "/v1.0/oauth2PermissionGrants",
            json={
                "clientId": sp["id"],
                "consentType": "AllPrincipals",
                "resourceId": graph_sp,
                "scope": "Presence.Read.All User.Read",
            },
        ).json()
        admin = world.admin
        refused = public_app(sandbox, app["appId"]).acquire_token_by_username_password(
            admin.email, admin.password, scopes=[PRESENCE_READ]
        )
        assert refused["error_codes"] == [65001], refused
        patched = c.patch(
            f"/v1.0/oauth2PermissionGrants/{grant['id']}",
            json={"scope": "Presence.Read.All User.Read openid profile offline_access"},
        )
        assert patched.status_code == 204
    result = public_app(sandbox, app["appId"]).acquire_token_by_username_password(
        admin.email, admin.password, scopes=[PRESENCE_READ]
    )
    assert "access_token" in result, result
    assert world.verify_bearer("Bearer " + result["access_token"]).scp == {"Presence.Read.All"}
