"""Entra ID emulation: what msal and a browser see of ``login.microsoftonline.com``.

Owns: OpenID metadata (``/{tenant}/v2.0/.well-known/openid-configuration``), the token endpoint
(grants ``client_credentials``, ``password``, ``refresh_token``, ``device_code``,
``authorization_code``), the devicecode endpoint, ``authorize`` (signs in without a page and
redirects with a code), ``adminconsent`` (v1 and v2 paths), ``/common/userrealm/{user}`` (Managed,
or Federated with an AD FS endpoint that fails as AD FS does) and the error bodies Entra sends
(``AADSTS…`` codes, ``error_codes``, trace and correlation ids, ``suberror``).

Who "signs in" where a browser would: ``?sandbox_user=``, else ``login_hint``, else the
``--auto-approve`` user, else ``admin@contoso.example``. ``?sandbox_consent=decline`` on the
admin-consent URL plays an admin who presses Cancel (Entra's documented error redirect).

Delegated scopes: the bootstrap client (Microsoft Graph Command Line Tools) gets what it asks for
(Microsoft pre-consents it; admin-only scopes need a Global Administrator); any other client gets
what oauth2PermissionGrants grant it on Graph.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import BaseRoute, Route

from presencectl.sandbox.client_assertions import OIDC_PATH, client_auth_of
from presencectl.sandbox.errors import entra_error
from presencectl.sandbox.microsoft_ids import GRAPH_APP_ID, GRAPH_RESOURCE
from presencectl.sandbox.people import ADMIN_EMAIL, GLOBAL_ADMIN, Person
from presencectl.sandbox.world import (
    BOOTSTRAP_CLIENT_ID,
    GRAPH_SCOPES,
    OIDC_SCOPES,
    World,
    b64url_json,
)

GRANT_DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
ADFS_PATH = "/adfs/services/trust/2005/usernamemixed"
# Scopes a user may not consent to alone (type "Admin" on the Graph service principal).
NO_STORE = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str
    oid: str
    scopes: list[str]
    code_challenge: str | None
    expires_at: float
    nonce: str | None = None  # OpenID Connect: echoed in the id token of this code's redemption


def _split_scopes(raw: str | None) -> list[str]:
    return [s for s in (raw or "").split() if s]


def _graph_scope_name(scope: str) -> str | None:
    """``https://graph.microsoft.com/User.Read`` / ``User.Read`` → ``User.Read``; other
    resources → None."""
    for prefix in (GRAPH_RESOURCE + "/", "https://graph.microsoft.com//", GRAPH_APP_ID + "/"):
        if scope.lower().startswith(prefix.lower()):
            return scope[len(prefix) :]
    if "://" in scope or scope.startswith("api://"):
        return None
    return scope


class EntraEndpoints:
    """The Entra routes for one world."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.auth_codes: dict[str, AuthCode] = {}

    # ------------------------------------------------------------------ helpers
    def tenant_ok(self, tenant: str) -> bool:
        t = tenant.lower()
        return t in (self.world.tenant_id, self.world.domain, "organizations", "common")

    def bad_tenant(self, tenant: str) -> Response:
        return entra_error("invalid_request", 90002, tenant=tenant)

    def issuer(self) -> str:
        return f"{self.world.base_url}/{self.world.tenant_id}/v2.0"

    def signing_in_user(self, request: Request) -> Person | None:
        q = request.query_params
        email = (
            q.get("sandbox_user") or q.get("login_hint") or self.world.auto_approve or ADMIN_EMAIL
        )
        person = self.world.person_by_email(email)
        return person if person is not None and person.azure_id else None

    def client_kind(self, client_id: str) -> tuple[str, dict[str, Any] | None]:
        """("bootstrap"|"app"|"unknown", application object)."""
        if client_id == BOOTSTRAP_CLIENT_ID:
            return "bootstrap", None
        app = self.world.application_by_app_id(client_id)
        if app is not None:
            return "app", app
        return "unknown", None

    def unknown_client(self, client_id: str) -> Response:
        return entra_error(
            "unauthorized_client", 700016, client_id=client_id, tenant=self.world.tenant_id
        )

    def client_secret_error(self, client_id: str, secret: str | None) -> Response | None:
        if not secret:
            return entra_error("invalid_client", 7000218, status=401)
        if not self.world.client_secret_ok(client_id, secret):
            return entra_error("invalid_client", 7000215, status=401, client_id=client_id)
        return None

    def delegated_grant(
        self,
        client_id: str,
        kind: str,
        app: dict[str, Any] | None,
        person: Person,
        requested: list[str],
    ) -> tuple[set[str], Response | None]:
        """The Graph scopes to put in ``scp``, or the 65001 answer when consent is missing."""
        wanted = {n for s in requested if (n := _graph_scope_name(s)) and n not in OIDC_SCOPES}
        if kind == "bootstrap":
            if ".default" in wanted:
                wanted = (wanted - {".default"}) | {"User.Read"}
            unknown = {s for s in wanted if s not in GRAPH_SCOPES}
            if unknown:
                return set(), entra_error(
                    "invalid_scope",
                    70011,
                    description=f"The provided value for the input parameter 'scope' is not valid. "
                    f"The scope '{' '.join(sorted(unknown))}' does not exist.",
                )
            admin_only = {s for s in wanted if s.endswith(".All")}
            if admin_only and GLOBAL_ADMIN not in person.roles:
                return set(), self.consent_required(client_id, "Microsoft Graph Command Line Tools")
            return wanted, None
        granted = self.world.delegated_scopes_of(client_id, person.azure_id)
        if ".default" in wanted:
            wanted = (wanted - {".default"}) | granted
            if not wanted:
                return set(), self.consent_required(
                    client_id, str((app or {}).get("displayName", ""))
                )
        if not wanted <= granted:
            return set(), self.consent_required(client_id, str((app or {}).get("displayName", "")))
        return wanted, None

    @staticmethod
    def consent_required(client_id: str, app_name: str) -> Response:
        return entra_error(
            "invalid_grant",
            65001,
            suberror="consent_required",
            client_id=client_id,
            app_name=app_name,
        )

    def user_token_response(
        self,
        client_id: str,
        person: Person,
        scopes: set[str],
        form: dict[str, str],
        requested: list[str],
        nonce: str | None = None,
    ) -> Response:
        world = self.world
        access, claims = world.issue_token(
            kind="delegated", appid=client_id, oid=person.azure_id, upn=person.upn, scp=scopes
        )
        lifetime = int(claims.exp - world.clock.now())
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(
                [
                    *(f"{GRAPH_RESOURCE}/{s}" for s in sorted(scopes)),
                    *(s for s in ("openid", "profile", "email") if s in requested),
                ]
            ),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access,
        }
        if "offline_access" in requested:
            body["refresh_token"] = world.new_refresh_token(
                client_id, str(person.azure_id), scopes, GRAPH_RESOURCE
            )
        if "openid" in requested or "profile" in requested:
            body["id_token"] = self.id_token(client_id, person, nonce)
        if form.get("client_info") == "1":
            body["client_info"] = b64url_json({"uid": person.azure_id, "utid": world.tenant_id})
        return JSONResponse(body, headers=NO_STORE)

    def id_token(self, client_id: str, person: Person, nonce: str | None = None) -> str:
        import time

        real_now = time.time()
        now = max(real_now, self.world.clock.now())
        payload = {
            "aud": client_id,
            "iss": self.issuer(),
            "iat": int(real_now),
            "nbf": int(real_now),
            "exp": int(now + self.world.token_lifetime),
            "name": person.display_name,
            "oid": person.azure_id,
            "preferred_username": person.upn,
            "sub": hashlib.sha256(f"{person.azure_id}:{client_id}".encode()).hexdigest()[:43],
            "tid": self.world.tenant_id,
            "ver": "2.0",
        }
        if nonce:
            payload["nonce"] = nonce
        return self.world.encode_jwt(payload)

    # ------------------------------------------------------------------ metadata
    async def openid_configuration(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if not self.tenant_ok(tenant):
            return self.bad_tenant(tenant)
        base = f"{self.world.base_url}/{tenant}"
        tid = self.world.tenant_id
        return JSONResponse(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{self.world.base_url}/{tid}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": self.issuer(),
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": [
                    "sub",
                    "iss",
                    "aud",
                    "exp",
                    "iat",
                    "nbf",
                    "name",
                    "oid",
                    "tid",
                    "preferred_username",
                    "ver",
                ],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
            }
        )

    async def keys(self, request: Request) -> Response:
        return JSONResponse({"keys": []})

    async def userrealm(self, request: Request) -> Response:
        user = request.path_params["user"]
        person = self.world.person_by_email(user)
        domain = user.rsplit("@", 1)[-1] if "@" in user else self.world.domain
        body: dict[str, Any] = {
            "ver": "1.0",
            "account_type": "Managed",
            "domain_name": domain,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_audience_urn": "urn:federation:MicrosoftOnline",
        }
        if person is not None and "federated" in person.flags:
            body.update(
                {
                    "account_type": "Federated",
                    "federation_protocol": "WSTrust",
                    "federation_active_auth_url": f"{self.world.base_url}{ADFS_PATH}",
                    "federation_global_version": -1,
                }
            )
        return JSONResponse(body)

    async def adfs_usernamemixed(self, request: Request) -> Response:
        """AD FS refusing the WS-Trust request (what msal meets for a federated user)."""
        fault = (
            '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            'xmlns:a="http://www.w3.org/2005/08/addressing"><s:Header>'
            '<a:Action s:mustUnderstand="1">http://www.w3.org/2005/08/addressing/soap/fault</a:Action>'
            "</s:Header><s:Body><s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode>"
            '<s:Value xmlns:a="http://docs.oasis-open.org/ws-sx/ws-trust/200512">a:FailedAuthentication</s:Value>'
            '</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">ID3242: The security token '
            "could "
            "not be authenticated or "
            "authorized.</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"
        )
        return Response(fault, status_code=500, media_type="application/soap+xml; charset=utf-8")

    # ------------------------------------------------------------------ device code
    async def devicecode(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if not self.tenant_ok(tenant):
            return self.bad_tenant(tenant)
        form = dict(await request.form())
        client_id = str(form.get("client_id") or "")
        kind, app = self.client_kind(client_id)
        if kind == "unknown":
            return self.unknown_client(client_id)
        if kind == "app" and not (app or {}).get("isFallbackPublicClient"):
            return entra_error("invalid_client", 7000218, status=401)
        scopes = _split_scopes(str(form.get("scope") or ""))
        if not scopes:
            return entra_error("invalid_request", 900144, parameter="scope")
        code = self.world.new_device_code(client_id, scopes)
        uri = f"{self.world.base_url}/devicelogin"
        display = f"{code.user_code[:3]}{code.user_code[3:]}"
        return JSONResponse(
            {
                "user_code": display,
                "device_code": code.device_code,
                "verification_uri": uri,
                "expires_in": int(code.expires_at - self.world.clock.now()),
                "interval": code.interval,
                "message": f"To sign in, use a web browser to open the page {uri} and enter the "
                "code "
                f"{display} to authenticate.",
            },
            headers=NO_STORE,
        )

    async def devicelogin(self, request: Request) -> Response:
        return HTMLResponse(
            "<html><body><h1>presencectl sandbox</h1><p>There is no sign-in page here. Approve the "
            'code with <code>POST /_sandbox/devicecode/approve {"user_code": …, "user": …}</code> '
            "or serve with <code>--auto-approve EMAIL</code>.</p></body></html>"
        )

    # ------------------------------------------------------------------ authorize (browser)
    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        client_id = q.get("client_id", "")
        redirect_uri = q.get("redirect_uri", "")
        kind, app = self.client_kind(client_id)
        if kind == "unknown":
            return PlainTextResponse(
                f"AADSTS700016: Application with identifier '{client_id}' was not found",
                status_code=400,
            )
        if kind == "app" and not redirect_uri_registered(redirect_uri, _redirect_uris(app or {})):
            return PlainTextResponse(
                f"AADSTS50011: The redirect URI '{redirect_uri}' specified in the request does "
                "not match the "
                f"redirect URIs configured for the application '{client_id}'.",
                status_code=400,
            )
        person = self.signing_in_user(request)
        state = q.get("state")
        if person is None or {"disabled", "locked"} & person.flags:
            # The error comes back the way the answer was asked for (msal refuses a query answer
            # to a form_post request and would wait for its timeout).
            return (_form_post if q.get("response_mode") == "form_post" else _redirect)(
                redirect_uri,
                {
                    "error": "access_denied",
                    "error_description": "AADSTS50057: The user account is disabled.",
                    "state": state,
                },
            )
        code = "sbxac." + secrets.token_urlsafe(32)
        self.auth_codes[code] = AuthCode(
            client_id,
            redirect_uri,
            str(person.azure_id),
            _split_scopes(q.get("scope")),
            q.get("code_challenge"),
            self.world.clock.now() + 600,
            q.get("nonce"),
        )
        answer = {"code": code, "state": state, "session_state": str(uuid.uuid4())}
        if q.get("response_mode") == "form_post":
            return _form_post(redirect_uri, answer)
        return _redirect(redirect_uri, answer)

    # ------------------------------------------------------------------ admin consent
    async def adminconsent(self, request: Request) -> Response:
        world = self.world
        tenant = request.path_params["tenant"]
        q = request.query_params
        client_id = q.get("client_id", "")
        redirect_uri = q.get("redirect_uri", "")
        state = q.get("state")
        scope = q.get("scope") or f"{GRAPH_RESOURCE}/.default"
        if not self.tenant_ok(tenant):
            return PlainTextResponse(f"AADSTS90002: Tenant '{tenant}' not found.", status_code=400)
        app = world.application_by_app_id(client_id)
        if app is None:
            return PlainTextResponse(
                f"AADSTS700016: Application with identifier '{client_id}' was not found in the "
                "directory "
                f"'{world.tenant_id}'.",
                status_code=400,
            )
        if not redirect_uri_registered(redirect_uri, _redirect_uris(app)):
            return PlainTextResponse(
                f"AADSTS50011: The redirect URI '{redirect_uri}' specified in the request does "
                "not match the "
                f"redirect URIs configured for the application '{client_id}'.",
                status_code=400,
            )
        person = self.signing_in_user(request)
        # Error redirects carry admin_consent=True as well ("to indicate that this response
        # occurred on an admin consent flow"), entra-docs v2-admin-consent.md "Error response".
        if q.get("sandbox_consent") == "decline":
            # The admin pressed Cancel on the consent page: the documented example, verbatim in
            # shape (error=consent_required, AADSTS65004, trace/correlation ids on further lines).
            return _redirect(
                redirect_uri,
                {
                    "admin_consent": "True",
                    "error": "consent_required",
                    "error_description": "AADSTS65004: The resource owner or authorization server "
                    f"denied the request.\r\nTrace ID: {uuid.uuid4()}\r\n"
                    f"Correlation ID: {uuid.uuid4()}\r\nTimestamp: {_entra_timestamp()}",
                    "state": state,
                },
            )
        if (
            person is None
            or GLOBAL_ADMIN not in person.roles
            or {"disabled", "locked"} & person.flags
        ):
            who = person.upn if person is not None else "the signed-in user"
            return _redirect(
                redirect_uri,
                {
                    "admin_consent": "True",
                    "error": "access_denied",
                    "error_description": "AADSTS90094: Admin consent is required for the "
                    "permissions requested "
                    f"by this application. {who} is not a Global Administrator.",
                    "error_subcode": "cancel" if person is None else None,
                    "state": state,
                },
            )
        grant_admin_consent(world, app, person)
        return _redirect(
            redirect_uri,
            {"admin_consent": "True", "tenant": world.tenant_id, "scope": scope, "state": state},
        )

    # ------------------------------------------------------------------ token
    async def token(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if not self.tenant_ok(tenant):
            return self.bad_tenant(tenant)
        form = {k: str(v) for k, v in (await request.form()).items()}
        _basic_auth(request, form)
        grant = form.get("grant_type", "")
        client_id = form.get("client_id", "")
        if not client_id:
            return entra_error("invalid_request", 900144, parameter="client_id")
        kind, app = self.client_kind(client_id)
        if kind == "unknown":
            return self.unknown_client(client_id)
        if grant == "client_credentials":
            return self.client_credentials(client_id, kind, form, request)
        if grant == "password":
            return self.password(client_id, kind, app, form)
        if grant == "refresh_token":
            return self.refresh(client_id, kind, app, form)
        if grant in (GRANT_DEVICE_CODE, "device_code"):
            return self.device_code(client_id, kind, app, form)
        if grant == "authorization_code":
            return self.authorization_code(client_id, kind, app, form)
        return entra_error("unsupported_grant_type", 70003, grant_type=grant)

    def client_credentials(
        self, client_id: str, kind: str, form: dict[str, str], request: Request
    ) -> Response:
        world = self.world
        if kind != "app":
            return entra_error("invalid_client", 7000218, status=401)
        if form.get("client_assertion") or form.get("client_assertion_type"):
            # a certificate or a federated token instead of a secret (sandbox/client_assertions.py)
            app = world.application_by_app_id(client_id) or {}
            base = f"{request.url.scheme}://{request.url.netloc}"
            token_urls = [str(request.url).split("?")[0],
                          f"{base}/{world.tenant_id}/oauth2/v2.0/token"]  # fmt: skip
            error = client_auth_of(world).check(app, form, token_urls, f"{base}{OIDC_PATH}")
        else:
            error = self.client_secret_error(client_id, form.get("client_secret"))
            if error is None:
                client_auth_of(world).count_secret()
        if error is not None:
            return error
        scopes = _split_scopes(form.get("scope"))
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return entra_error(
                "invalid_scope",
                1002012,
                description=f"The provided value for scope {' '.join(scopes)} is not valid. "
                "Client credential "
                "flows must have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).",
            )
        if _graph_scope_name(scopes[0]) is None:
            return entra_error(
                "invalid_resource",
                500011,
                description=(
                    f"The resource principal named {scopes[0][: -len('/.default')]} was not "
                    "found in the tenant "
                    f"named {world.tenant_id}."
                ),
            )
        sp = world.service_principal_by_app_id(client_id)
        if sp is None:
            return entra_error(
                "invalid_client",
                7000229,
                description=(
                    f"The client application {client_id} is missing service principal in the "
                    "tenant "
                    f"{world.tenant_id}."
                ),
            )
        access, claims = world.issue_token(
            kind="app", appid=client_id, oid=sp["id"], roles=world.app_roles_of(client_id)
        )
        lifetime = int(claims.exp - world.clock.now())
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": access,
            },
            headers=NO_STORE,
        )

    def password(
        self, client_id: str, kind: str, app: dict[str, Any] | None, form: dict[str, str]
    ) -> Response:
        world = self.world
        username = form.get("username", "")
        person = world.person_by_email(username) if username else None
        if person is None or person.azure_id is None:
            return entra_error("invalid_grant", 50034, user=username, tenant=world.domain)
        if "disabled" in person.flags:
            return entra_error("invalid_grant", 50057)
        if "locked" in person.flags:
            return entra_error("invalid_grant", 50053)
        if "federated" in person.flags or form.get("password", "") != person.password:
            return entra_error("invalid_grant", 50126)
        if "must_change_password" in person.flags:
            # A pending first-login password change: invalid_grant, and the suberror MSAL.NET
            # classifies (InvalidGrantClassification.UserPasswordExpired).
            return entra_error("invalid_grant", 50055, suberror="user_password_expired")
        if "mfa_required" in person.flags:
            return entra_error(
                "invalid_grant", 50076, suberror="basic_action", resource=GRAPH_APP_ID
            )
        if (
            kind == "app"
            and not form.get("client_secret")
            and not (app or {}).get("isFallbackPublicClient")
        ):
            return entra_error("invalid_client", 7000218, status=401)
        if kind == "app" and form.get("client_secret"):
            error = self.client_secret_error(client_id, form.get("client_secret"))
            if error is not None:
                return error
        requested = _split_scopes(form.get("scope"))
        scopes, error = self.delegated_grant(client_id, kind, app, person, requested)
        if error is not None:
            return error
        return self.user_token_response(client_id, person, scopes, form, requested)

    def refresh(
        self, client_id: str, kind: str, app: dict[str, Any] | None, form: dict[str, str]
    ) -> Response:
        world = self.world
        grant = world.refresh_tokens.get(form.get("refresh_token", ""))
        if grant is None or grant.client_id != client_id or grant.exp <= world.clock.now():
            return entra_error("invalid_grant", 70000)
        if grant.revoked:
            return entra_error("invalid_grant", grant.revoked)
        person = world.person_by_azure_id(grant.oid)
        if person is None:
            return entra_error("invalid_grant", 50034, user=grant.oid, tenant=world.domain)
        if "disabled" in person.flags:
            return entra_error("invalid_grant", 50057)
        if kind == "app" and form.get("client_secret"):
            error = self.client_secret_error(client_id, form.get("client_secret"))
            if error is not None:
                return error
        requested = _split_scopes(form.get("scope")) or [
            f"{GRAPH_RESOURCE}/{s}" for s in grant.scopes
        ]
        scopes, error = self.delegated_grant(client_id, kind, app, person, requested)
        if error is not None:
            return error
        if "offline_access" not in requested:
            requested.append("offline_access")
        return self.user_token_response(client_id, person, scopes, form, requested)

    def device_code(
        self, client_id: str, kind: str, app: dict[str, Any] | None, form: dict[str, str]
    ) -> Response:
        world = self.world
        code = world.device_codes.get(form.get("device_code") or form.get("code") or "")
        if code is None or code.client_id != client_id or code.redeemed:
            return entra_error("invalid_grant", 70000)
        if code.expires_at <= world.clock.now():
            return entra_error("expired_token", 70019)
        if code.denied:
            return entra_error(
                "authorization_declined",
                70000,
                description="The end user denied the authorization request.",
            )
        if code.approved_by is None:
            return entra_error("authorization_pending", 70016)
        person = world.person_by_email(code.approved_by)
        if person is None or person.azure_id is None:
            return entra_error("invalid_grant", 50034, user=code.approved_by, tenant=world.domain)
        if "disabled" in person.flags:
            return entra_error("invalid_grant", 50057)
        if "device_code_blocked" in person.flags:
            # A Conditional Access policy on "Authentication flows: device code flow"
            # (entra-docs concept-authentication-flows) refuses the token: BlockedByConditional-
            # Access (reference-error-codes).
            return entra_error("invalid_grant", 53003)
        requested = code.scopes
        scopes, error = self.delegated_grant(client_id, kind, app, person, requested)
        if error is not None:
            return error
        code.redeemed = True
        return self.user_token_response(client_id, person, scopes, form, requested)

    def authorization_code(
        self, client_id: str, kind: str, app: dict[str, Any] | None, form: dict[str, str]
    ) -> Response:
        world = self.world
        code = self.auth_codes.pop(form.get("code", ""), None)
        if code is None or code.client_id != client_id or code.expires_at <= world.clock.now():
            return entra_error("invalid_grant", 70000)
        if code.redirect_uri != form.get("redirect_uri", code.redirect_uri):
            return entra_error("invalid_grant", 70000)
        if code.code_challenge:
            verifier = form.get("code_verifier", "")
            digest = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
                .rstrip(b"=")
                .decode()
            )
            if digest != code.code_challenge:
                return entra_error(
                    "invalid_grant",
                    501481,
                    description="The Code_Verifier does not match the "
                    "code_challenge supplied in the authorization request.",
                )
        if kind == "app" and form.get("client_secret"):
            error = self.client_secret_error(client_id, form.get("client_secret"))
            if error is not None:
                return error
        if (
            kind == "app"
            and not form.get("client_secret")
            and not redirect_uri_registered(
                code.redirect_uri,
                list(((app or {}).get("publicClient") or {}).get("redirectUris") or []),
            )
        ):
            # A redirect URI registered on the "Web" platform makes the redemption a confidential
            # client's: without a secret Entra answers 7000218 (msal-dotnet issue 1391, msal-java
            # issue 818: a public client's browser sign-in needs its URI under "Mobile and
            # desktop applications").
            return entra_error("invalid_client", 7000218, status=401)
        person = world.person_by_azure_id(code.oid)
        if person is None:
            return entra_error("invalid_grant", 70000)
        requested = _split_scopes(form.get("scope")) or code.scopes
        scopes, error = self.delegated_grant(client_id, kind, app, person, requested)
        if error is not None:
            return error
        return self.user_token_response(client_id, person, scopes, form, requested, code.nonce)

    # ------------------------------------------------------------------ routes
    def routes(self) -> list[BaseRoute]:
        t = "/{tenant}"
        return [
            Route(
                t + "/v2.0/.well-known/openid-configuration",
                self.openid_configuration,
                name="entra_openid",
            ),
            Route(
                t + "/.well-known/openid-configuration",
                self.openid_configuration,
                name="entra_openid",
            ),
            Route(t + "/discovery/v2.0/keys", self.keys, name="entra_keys"),
            Route(t + "/oauth2/v2.0/token", self.token, methods=["POST"], name="entra_token"),
            Route(
                t + "/oauth2/v2.0/devicecode",
                self.devicecode,
                methods=["POST"],
                name="entra_devicecode",
            ),
            Route(t + "/oauth2/v2.0/authorize", self.authorize, name="entra_authorize"),
            Route(t + "/adminconsent", self.adminconsent, name="entra_adminconsent"),
            Route(t + "/v2.0/adminconsent", self.adminconsent, name="entra_adminconsent"),
            Route("/common/userrealm/{user}", self.userrealm, name="entra_userrealm"),
            Route(ADFS_PATH, self.adfs_usernamemixed, methods=["POST"], name="adfs_usernamemixed"),
            Route("/devicelogin", self.devicelogin, name="entra_devicelogin"),
        ]


def _basic_auth(request: Request, form: dict[str, str]) -> None:
    """client_secret_basic: credentials in the Authorization header."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            raw = base64.b64decode(header[6:]).decode()
        except ValueError:
            return
        cid, _, secret = raw.partition(":")
        form.setdefault("client_id", cid)
        form.setdefault("client_secret", secret)


def redirect_uri_registered(uri: str, registered: list[str]) -> bool:
    """Entra's matching, including its localhost exception: the port of a ``http://localhost``
    (or 127.0.0.1) redirect URI is ignored, so a CLI's loopback listener may use any port."""
    if uri in registered:
        return True
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme != "http" or parts.hostname not in ("localhost", "127.0.0.1"):
        return False
    for candidate in registered:
        c = urlsplit(candidate)
        if (c.scheme, c.hostname, c.path.rstrip("/")) == (
            "http",
            parts.hostname,
            parts.path.rstrip("/"),
        ):
            return True
    return False


def _redirect_uris(app: dict[str, Any]) -> list[str]:
    uris: list[str] = []
    for key in ("web", "publicClient", "spa"):
        uris += list((app.get(key) or {}).get("redirectUris") or [])
    return uris


def _form_post(uri: str, params: dict[str, str | None]) -> Response:
    """``response_mode=form_post`` (OpenID Connect Form Post Response Mode): a page whose form
    POSTs the answer to the redirect URI — what msal's loopback listener accepts."""
    from html import escape

    fields = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}"/>'
        for k, v in params.items()
        if v is not None
    )
    page = (
        "<html><head><title>Working...</title></head><body>"
        f'<form method="POST" name="hiddenform" action="{escape(uri)}">{fields}'
        "<noscript><p>Script is disabled. Click Submit to continue.</p>"
        '<input type="submit" value="Submit"/></noscript></form>'
        "<script>document.forms[0].submit();</script></body></html>"
    )
    return HTMLResponse(page)


def _entra_timestamp() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _redirect(uri: str, params: dict[str, str | None]) -> Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    sep = "&" if "?" in uri else "?"
    return RedirectResponse(f"{uri}{sep}{query}", status_code=302)


def grant_admin_consent(world: World, app: dict[str, Any], admin: Person) -> None:
    """Record what admin consent grants: the app's Graph app roles and its delegated scopes."""
    sp = world.service_principal_by_app_id(app["appId"])
    if sp is None:
        sp = world.add_service_principal(
            {
                "id": world.new_id(),
                "appId": app["appId"],
                "displayName": app.get("displayName"),
                "servicePrincipalType": "Application",
                "appOwnerOrganizationId": world.tenant_id,
                "servicePrincipalNames": [app["appId"]],
                "appRoles": [],
                "oauth2PermissionScopes": [],
                "accountEnabled": True,
            }
        )
    graph = world.graph_service_principal
    role_names = {r["id"]: r["value"] for r in graph["appRoles"]}
    scope_names = {s["id"]: s["value"] for s in graph["oauth2PermissionScopes"]}
    roles: set[str] = set()
    scopes: set[str] = set()
    for entry in app.get("requiredResourceAccess") or []:
        if entry.get("resourceAppId") != GRAPH_APP_ID:
            continue
        for access in entry.get("resourceAccess") or []:
            if access.get("type") == "Role" and access.get("id") in role_names:
                roles.add(access["id"])
            elif access.get("type") == "Scope" and access.get("id") in scope_names:
                scopes.add(scope_names[access["id"]])
    have = {
        a["appRoleId"]
        for a in world.app_role_assignments.values()
        if a["principalId"] == sp["id"] and a["resourceId"] == graph["id"]
    }
    for role_id in sorted(roles - have):
        add_app_role_assignment(world, sp, graph, role_id)
    if scopes:
        existing = next(
            (
                g
                for g in world.permission_grants.values()
                if g["clientId"] == sp["id"]
                and g["resourceId"] == graph["id"]
                and g["consentType"] == "AllPrincipals"
            ),
            None,
        )
        if existing is None:
            add_permission_grant(world, sp["id"], graph["id"], " ".join(sorted(scopes)))
        else:
            merged = set(existing["scope"].split()) | scopes
            existing["scope"] = " ".join(sorted(merged))


def add_app_role_assignment(
    world: World, sp: dict[str, Any], resource: dict[str, Any], role_id: str
) -> dict[str, Any]:
    import datetime as dt

    assignment = {
        "id": base64.urlsafe_b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes[:8])
        .decode()
        .rstrip("="),
        "appRoleId": role_id,
        "createdDateTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "deletedDateTime": None,
        "principalDisplayName": sp.get("displayName"),
        "principalId": sp["id"],
        "principalType": "ServicePrincipal",
        "resourceDisplayName": resource.get("displayName"),
        "resourceId": resource["id"],
    }
    world.app_role_assignments[assignment["id"]] = assignment
    return assignment


def add_permission_grant(
    world: World,
    client_sp_id: str,
    resource_sp_id: str,
    scope: str,
    consent_type: str = "AllPrincipals",
    principal_id: str | None = None,
) -> dict[str, Any]:
    grant: dict[str, Any] = {
        "id": base64.urlsafe_b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes[:8])
        .decode()
        .rstrip("="),
        "clientId": client_sp_id,
        "consentType": consent_type,
        "principalId": principal_id,
        "resourceId": resource_sp_id,
        "scope": scope,
    }
    world.permission_grants[grant["id"]] = grant
    return grant


def entra_routes(world: World) -> list[BaseRoute]:
    return EntraEndpoints(world).routes()
