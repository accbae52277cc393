"""The sandbox's Graph directory endpoints, with httpx and tokens from the sandbox's Entra."""

from __future__ import annotations

from typing import Any

import pytest
from sandbox_helpers import (
    admin_consent,
    admin_token,
    client,
    confidential_app,
    create_presence_app,
    ropc,
)

from presencectl.graph.permissions import APP_ROLES, GRAPH_APP_ID, GRAPH_DEFAULT_SCOPE


@pytest.fixture
def admin(sandbox: Any) -> Any:
    with client(sandbox, admin_token(sandbox)) as c:
        yield c


def test_me_and_the_global_administrator_role(sandbox: Any, admin: Any) -> None:
    me = admin.get("/v1.0/me").json()
    assert (
        me["userPrincipalName"] == "admin@contoso.example"
        and me["id"] == sandbox.world.admin.azure_id
    )
    roles = admin.get("/v1.0/me/transitiveMemberOf/microsoft.graph.directoryRole").json()["value"]
    assert [r["roleTemplateId"] for r in roles] == ["62e90394-69f5-4237-9190-012177145e10"]


def test_a_plain_user_has_no_directory_role(sandbox: Any) -> None:
    person = next(p for p in sandbox.world.people if p.azure_id and not p.roles and not p.flags)
    token = ropc(
        sandbox, person.email, person.password, scopes=("https://graph.microsoft.com/User.Read",)
    )
    with client(sandbox, token.json()["access_token"]) as c:
        assert (
            c.get("/v1.0/me/transitiveMemberOf/microsoft.graph.directoryRole").json()["value"] == []
        )
        denied = c.get("/v1.0/users")
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "Authorization_RequestDenied"
    assert {"date", "request-id", "client-request-id"} <= set(denied.json()["error"]["innerError"])


def test_users_paging_follows_next_link_to_every_azure_user(sandbox: Any, admin: Any) -> None:
    seen: list[str] = []
    url: str | None = "/v1.0/users?$top=7&$select=id,mail"
    pages = 0
    while url:
        body = admin.get(url).json()
        pages += 1
        assert all(set(u) <= {"id", "mail"} for u in body["value"])
        seen += [u["id"] for u in body["value"]]
        url = body.get("@odata.nextLink")
    expected = [p.azure_id for p in sandbox.world.people if p.azure_id]
    assert seen == expected and pages == -(-len(expected) // 7)


@pytest.mark.parametrize("top", ["0", "1000", "x"])
def test_top_out_of_range_is_400(admin: Any, top: str) -> None:
    response = admin.get("/v1.0/users", params={"$top": top})
    assert response.status_code == 400 and "error" in response.json()


def test_filters_on_mail_upn_and_proxy_addresses(sandbox: Any, admin: Any) -> None:
    def find(flt: str) -> list[str]:
        response = admin.get("/v1.0/users", params={"$filter": flt})
        assert response.status_code == 200, response.text
        return [u["userPrincipalName"] for u in response.json()["value"]]

    assert find("mail eq 'ADMIN@contoso.example'") == ["admin@contoso.example"]
    assert find("userPrincipalName eq 'presence-sync@contoso.example'") == [
        "presence-sync@contoso.example"
    ]
    renamed = next(
        p
        for p in sandbox.world.people
        if p.azure_id and any(a.startswith("smtp:") and ".old@" in a for a in p.proxy_addresses)
    )
    alias = next(a for a in renamed.proxy_addresses if a.startswith("smtp:"))
    assert find(f"proxyAddresses/any(x:x eq '{alias.upper().replace('SMTP:', 'smtp:')}')") == [
        renamed.upn
    ]
    assert find(f"mail eq '{alias[5:]}'") == []
    # The conflict: one address, two Azure users.
    conflicted = next(
        p.mail
        for p in sandbox.world.people
        if p.mail and len(sandbox.world.azure_people_by_address(p.mail)) == 2
    )
    both = find(f"mail eq '{conflicted}' or proxyAddresses/any(p:p eq 'smtp:{conflicted}')")
    assert len(both) == 2
    assert admin.get("/v1.0/users", params={"$filter": "startswith(mail,'a')"}).status_code == 400


def test_missing_or_forged_tokens_are_401(sandbox: Any) -> None:
    with client(sandbox) as c:
        missing = c.get("/v1.0/users")
        forged = c.get("/v1.0/users", headers={"Authorization": "Bearer a.b.c"})
    for response in (missing, forged):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_setup_azure_story_applications_service_principals_roles_grants(
    sandbox: Any, admin: Any
) -> None:
    app = admin.post("/v1.0/applications", json={"displayName": "presencectl sync"}).json()
    assert (
        admin.get("/v1.0/applications", params={"$filter": f"appId eq '{app['appId']}'"}).json()[
            "value"
        ][0]["id"]
        == app["id"]
    )
    assert admin.get(f"/v1.0/applications(appId='{app['appId']}')").json()["id"] == app["id"]
    patched = admin.patch(f"/v1.0/applications/{app['id']}", json={"isFallbackPublicClient": True})
    assert patched.status_code == 204
    assert admin.get(f"/v1.0/applications/{app['id']}").json()["isFallbackPublicClient"] is True
    password = admin.post(
        f"/v1.0/applications/{app['id']}/addPassword", json={"passwordCredential": {}}
    ).json()
    assert password["secretText"] and password["hint"] == password["secretText"][:3]
    stored = admin.get(f"/v1.0/applications/{app['id']}").json()["passwordCredentials"]
    assert [c["secretText"] for c in stored] == [None]

    sp = admin.post("/v1.0/servicePrincipals", json={"appId": app["appId"]})
    assert sp.status_code == 201
    assert admin.post("/v1.0/servicePrincipals", json={"appId": app["appId"]}).status_code == 409
    graph = admin.get(
        "/v1.0/servicePrincipals", params={"$filter": f"appId eq '{GRAPH_APP_ID}'"}
    ).json()["value"][0]
    role_id = APP_ROLES["Presence.ReadWrite.All"]
    assert role_id in {r["id"] for r in graph["appRoles"]}
    body = {"principalId": sp.json()["id"], "resourceId": graph["id"], "appRoleId": role_id}
    assigned = admin.post(f"/v1.0/servicePrincipals/{graph['id']}/appRoleAssignedTo", json=body)
    assert assigned.status_code == 201
    assert (
        admin.post(
            f"/v1.0/servicePrincipals/{graph['id']}/appRoleAssignedTo", json=body
        ).status_code
        == 400
    )
    listed = admin.get(f"/v1.0/servicePrincipals/{graph['id']}/appRoleAssignedTo").json()["value"]
    assert [a["appRoleId"] for a in listed if a["principalId"] == sp.json()["id"]] == [role_id]

    grant = admin.post(
        "/v1.0/oauth2PermissionGrants",
        json={
            "clientId": sp.json()["id"],
            "consentType": "AllPrincipals",
            "resourceId": graph["id"],
            "scope": "User.Read",
        },
    )
    assert grant.status_code == 201
    found = admin.get(
        "/v1.0/oauth2PermissionGrants", params={"$filter": f"clientId eq '{sp.json()['id']}'"}
    )
    assert [g["id"] for g in found.json()["value"]] == [grant.json()["id"]]
    assert (
        admin.patch(
            f"/v1.0/oauth2PermissionGrants/{grant.json()['id']}",
            json={"scope": "User.Read Presence.Read.All"},
        ).status_code
        == 204
    )
    assert sandbox.world.delegated_scopes_of(app["appId"]) == {"User.Read", "Presence.Read.All"}
    assert (
        admin.patch(
            f"/v1.0/oauth2PermissionGrants/{grant.json()['id']}", json={"scope": "No.Such.Scope"}
        ).status_code
        == 400
    )

    token = confidential_app(
        sandbox, app["appId"], password["secretText"]
    ).acquire_token_for_client([GRAPH_DEFAULT_SCOPE])
    assert sandbox.world.verify_bearer("Bearer " + token["access_token"]).roles == {
        "Presence.ReadWrite.All"
    }


def test_app_token_needs_user_read_all_for_users(sandbox: Any, admin: Any) -> None:
    app = create_presence_app(sandbox, admin.headers["Authorization"][7:])
    admin_consent(sandbox, app["appId"])
    token = confidential_app(sandbox, app["appId"], app["secret"]).acquire_token_for_client(
        [GRAPH_DEFAULT_SCOPE]
    )
    with client(sandbox, token["access_token"]) as c:
        assert c.get("/v1.0/users", params={"$top": 1}).status_code == 200
        me = c.get("/v1.0/me")
        assert me.status_code == 400
        denied = c.post("/v1.0/applications", json={"displayName": "x"})
        assert denied.status_code == 403


def test_a_non_admin_cannot_grant_consent_by_api(sandbox: Any, admin: Any) -> None:
    person = next(p for p in sandbox.world.people if p.azure_id and not p.roles and not p.flags)
    response = ropc(
        sandbox,
        person.email,
        person.password,
        scopes=("https://graph.microsoft.com/DelegatedPermissionGrant.ReadWrite.All",),
    )
    assert response.json()["error_codes"] == [65001]
