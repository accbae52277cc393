"""Helpers shared by the sandbox tests: msal apps and raw token requests against a running
sandbox."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from presencectl.graph.permissions import ADMIN_SCOPES, GRAPH_APP_ID
from presencectl.transport import HttpSettings, msal_http_client

BOOTSTRAP = "14d82eec-204b-4c2f-b7e8-296a70dab67e"


def settings(sb: Any) -> HttpSettings:
    return HttpSettings(ca_bundle=sb.ca_bundle, msal_port_fixes={"127.0.0.1": sb.port})


def authority(sb: Any) -> str:
    return f"{sb.base_url}/{sb.world.tenant_id}"


def public_app(sb: Any, client_id: str = BOOTSTRAP) -> Any:
    import msal

    return msal.PublicClientApplication(
        client_id,
        authority=authority(sb),
        instance_discovery=False,
        http_client=msal_http_client(settings(sb)),
    )


def confidential_app(sb: Any, client_id: str, secret: str) -> Any:
    import msal

    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=secret,
        authority=authority(sb),
        instance_discovery=False,
        http_client=msal_http_client(settings(sb)),
    )


def client(sb: Any, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=sb.base_url,
        verify=ssl.create_default_context(cafile=sb.ca_bundle),
        headers=headers,
    )


def ropc(
    sb: Any,
    email: str,
    password: str,
    scopes: tuple[str, ...] = ADMIN_SCOPES,
    client_id: str = BOOTSTRAP,
) -> httpx.Response:
    with client(sb) as c:
        return c.post(
            f"/{sb.world.tenant_id}/oauth2/v2.0/token",
            data={
                "grant_type": "password",
                "client_id": client_id,
                "username": email,
                "password": password,
                "scope": " ".join([*scopes, "offline_access", "openid", "profile"]),
            },
        )


def admin_token(sb: Any) -> str:
    admin = sb.world.admin
    response = ropc(sb, admin.email, admin.password)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def create_presence_app(sb: Any, token: str, public_client: bool = False) -> dict[str, Any]:
    """An app registration like setup-azure makes (Presence.ReadWrite.All role + delegated
    scopes, the sign-in ones included)."""
    with client(sb, token) as c:
        app = c.post(
            "/v1.0/applications",
            json={
                "displayName": "presencectl",
                "isFallbackPublicClient": public_client,
                "web": {"redirectUris": ["http://localhost:8400/consent"]},
                "requiredResourceAccess": [
                    {
                        "resourceAppId": GRAPH_APP_ID,
                        "resourceAccess": [
                            {"id": "83cded22-8297-4ff6-a7fa-e97e9545a259", "type": "Role"},
                            {"id": "df021288-bdef-4463-88db-98f22de89214", "type": "Role"},
                            {"id": "9c7a330d-35b3-4aa1-963d-cb2b9f927841", "type": "Scope"},
                            {"id": "e1fe6dd8-ba31-4d61-89e7-88639da4683d", "type": "Scope"},
                            # openid, profile, offline_access: msal asks for them on every sign-in
                            {"id": "37f7f235-527c-4136-accd-4a02d197296e", "type": "Scope"},
                            {"id": "14dad69e-099b-42c9-810b-d002981feec1", "type": "Scope"},
                            {"id": "7427e0e9-2fba-42fe-b0c0-848c9e6a8182", "type": "Scope"},
                        ],
                    }
                ],
            },
        )
        assert app.status_code == 201, app.text
        body: dict[str, Any] = app.json()
        secret = c.post(
            f"/v1.0/applications/{body['id']}/addPassword",
            json={"passwordCredential": {"displayName": "presencectl"}},
        )
        body["secret"] = secret.json()["secretText"]
    return body


def admin_consent(sb: Any, app_id: str, user: str | None = None) -> httpx.Response:
    params = {
        "client_id": app_id,
        "redirect_uri": "http://localhost:8400/consent",
        "state": "st8",
        "scope": "https://graph.microsoft.com/.default",
    }
    if user:
        params["sandbox_user"] = user
    with client(sb) as c:
        return c.get(f"/{sb.world.tenant_id}/v2.0/adminconsent", params=params)


def our_sessions(control: httpx.Client, session_id: str, resource: str | None) -> dict[str, Any]:
    """The sessions of ours the sandbox holds anywhere: Teams application sessions with our
    ``session_id``, Connect resources named ``resource`` (``GET /_sandbox/sessions``): ``count``,
    and each one (``teams``, ``connect``) for a failure to show."""
    params = {"session_id": session_id, **({"resource": resource} if resource else {})}
    response = control.get("/_sandbox/sessions", params=params)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data
