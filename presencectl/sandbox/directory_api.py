"""Graph v1.0 directory endpoints of the sandbox: what setup-azure, consent and matching call.

Owns: ``/me``, ``/me/transitiveMemberOf/microsoft.graph.directoryRole``, ``/users`` (``$filter`` on
``mail``, ``userPrincipalName``, ``id``, ``proxyAddresses/any(p:p eq 'smtp:…')`` joined by
``or``/``and``; ``$select``; ``$top`` ≤ 999; ``@odata.nextLink`` paging), ``/users/{id|upn}``,
``/applications`` (create, list/filter, get by id or ``(appId='…')``, PATCH, DELETE,
``addPassword``, ``removePassword``), ``/servicePrincipals`` (create, list/filter, get,
``appRoleAssignedTo`` GET/POST, ``appRoleAssignments``) and ``/oauth2PermissionGrants``
(list/filter, create, PATCH, DELETE). Permissions come from the token (``errors.require``);
delegated writes of role assignments and grants also need a Global Administrator.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from presencectl.sandbox.app_rules import (
    duplicate_redirect_uri,
    mark_created,
    replicating,
)
from presencectl.sandbox.client_assertions import (
    federated_credential_routes,
    merge_key_credentials,
    readable_key_credentials,
)
from presencectl.sandbox.entra import add_app_role_assignment, add_permission_grant
from presencectl.sandbox.errors import GraphError, bad_request, bearer_claims, not_found, require
from presencectl.sandbox.microsoft_ids import GLOBAL_ADMIN_ROLE_TEMPLATE_ID
from presencectl.sandbox.people import GLOBAL_ADMIN, Person
from presencectl.sandbox.world import Claims, World

MAX_TOP = 999
DEFAULT_PAGE = 100

USER_READ_ROLES = (
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
USER_READ_SCOPES = (
    "User.Read.All",
    "User.ReadBasic.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
ME_SCOPES = ("User.Read", "User.ReadWrite", *USER_READ_SCOPES)
USER_WRITE = ("User.ReadWrite.All", "Directory.ReadWrite.All")
# User Administrator, a role that may create and delete users (Entra built-in roles).
USER_ADMIN = "User Administrator"
APP_READ = (
    "Application.Read.All",
    "Application.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
APP_WRITE = ("Application.ReadWrite.All", "Directory.ReadWrite.All")
ROLE_ASSIGN = ("AppRoleAssignment.ReadWrite.All",)
GRANT_WRITE = ("DelegatedPermissionGrant.ReadWrite.All", "Directory.ReadWrite.All")
GRANT_READ = (
    "DelegatedPermissionGrant.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)

_TERM = re.compile(
    r"\s*(?:proxyAddresses/any\((?P<var>\w+):\s*(?P=var)\s+eq\s+'(?P<pval>(?:[^']|'')*)'\)"
    r"|(?P<prop>[A-Za-z]+)\s+eq\s+'(?P<val>(?:[^']|'')*)')\s*",
    re.IGNORECASE,
)
_JOIN = re.compile(r"\s*\b(and|or)\b\s*", re.IGNORECASE)
APP_PATCHABLE = (
    "displayName",
    "requiredResourceAccess",
    "isFallbackPublicClient",
    "publicClient",
    "web",
    "spa",
    "signInAudience",
    "notes",
    "description",
    "tags",
    "keyCredentials",  # replaced whole: sandbox/client_assertions.py merge_key_credentials
)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_filter(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``$filter`` → (joiner, [(property, value)]); ``proxyAddresses`` terms as
    ("proxyAddresses", v)."""
    terms: list[tuple[str, str]] = []
    joiners: set[str] = set()
    pos = 0
    while True:
        match = _TERM.match(text, pos)
        if match is None:
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                f"Unsupported or invalid query filter clause "
                f"specified for property at position {pos}: {text!r}.",
            )
        if match.group("var"):
            terms.append(("proxyAddresses", match.group("pval").replace("''", "'")))
        else:
            terms.append((match.group("prop"), match.group("val").replace("''", "'")))
        pos = match.end()
        if pos >= len(text):
            break
        join = _JOIN.match(text, pos)
        if join is None:
            raise GraphError(
                400,
                "BadRequest",
                f"Invalid filter clause: syntax error at position {pos} in {text!r}.",
            )
        joiners.add(join.group(1).lower())
        pos = join.end()
    if len(joiners) > 1:
        raise GraphError(
            400, "Request_UnsupportedQuery", "Mixing 'and' and 'or' needs advanced queries."
        )
    return (joiners.pop() if joiners else "and"), terms


def _combine(joiner: str, sets: list[list[Any]]) -> list[Any]:
    if not sets:
        return []
    result: list[Any] = []
    if joiner == "or":
        for group in sets:
            for item in group:
                if not any(item is r for r in result):
                    result.append(item)
        return result
    first, *rest = sets
    return [item for item in first if all(any(item is o for o in other) for other in rest)]


def _select(obj: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    if not select:
        return obj
    lowered = {k.lower(): k for k in obj}
    return {lowered[s.lower()]: obj[lowered[s.lower()]] for s in select if s.lower() in lowered}


def _select_param(request: Request) -> list[str] | None:
    raw = request.query_params.get("$select")
    return [s.strip() for s in raw.split(",") if s.strip()] if raw else None


def _top(request: Request) -> int:
    raw = request.query_params.get("$top")
    if raw is None:
        return DEFAULT_PAGE
    try:
        top = int(raw)
    except ValueError:
        raise bad_request(f"Invalid value '{raw}' for $top query parameter.") from None
    if not 1 <= top <= MAX_TOP:
        raise GraphError(
            400,
            "Request_UnsupportedQuery",
            f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_TOP} inclusive.",
        )
    return top


def _skip(request: Request) -> int:
    raw = request.query_params.get("$skiptoken")
    if not raw:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))["o"])
    except (ValueError, KeyError, TypeError):
        raise bad_request("Invalid $skiptoken.", code="Request_BadRequest") from None


async def _json(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError:
        raise bad_request(
            "Unable to read JSON request payload. Please ensure Content-Type header is set and "
            "payload is of valid JSON format."
        ) from None
    if not isinstance(data, dict):
        raise bad_request("The request payload must be a JSON object.")
    return data


class DirectoryEndpoints:
    """The directory routes for one world."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._azure_cache: tuple[int, list[Person]] = (-1, [])
        self.ga_role_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{world.tenant_id}/globaladmin"))

    # ------------------------------------------------------------------ helpers
    def base(self) -> str:
        return f"{self.world.base_url}/v1.0"

    def collection(
        self, request: Request, context: str, items: list[dict[str, Any]], page: bool = True
    ) -> JSONResponse:
        select = _select_param(request)
        body: dict[str, Any] = {"@odata.context": f"{self.base()}/$metadata#{context}"}
        if page:
            top = _top(request)
            offset = _skip(request)
            chunk = items[offset : offset + top]
            if offset + top < len(items):
                params = {k: v for k, v in request.query_params.items() if k != "$skiptoken"}
                token = (
                    base64.urlsafe_b64encode(json.dumps({"o": offset + top}).encode())
                    .decode()
                    .rstrip("=")
                )
                params["$skiptoken"] = token
                body["@odata.nextLink"] = (
                    f"{self.base()}{request.url.path[len('/v1.0') :]}?{urlencode(params)}"
                )
        else:
            chunk = items
        body["value"] = [_select(item, select) for item in chunk]
        return JSONResponse(body)

    def azure_people(self) -> list[Person]:
        count, cached = self._azure_cache
        if count != len(self.world.people):
            cached = [p for p in self.world.people if p.azure_id]
            self._azure_cache = (len(self.world.people), cached)
        return cached

    def claims(self, request: Request) -> Claims:
        return bearer_claims(self.world, request)

    def require_admin_user(self, claims: Claims) -> None:
        """Delegated directory writes act with the user's own rights: a Global Administrator."""
        if claims.kind == "delegated":
            person = self.world.person_by_azure_id(claims.oid or "")
            if person is None or GLOBAL_ADMIN not in person.roles:
                raise GraphError(
                    403,
                    "Authorization_RequestDenied",
                    "Insufficient privileges to complete the operation.",
                )

    def user_lookup(self, key: str) -> Person:
        person = self.world.person_by_azure_id(key) or self.world.azure_person_by_upn(key)
        if person is None:
            raise not_found(
                f"Resource '{key}' does not exist or one of its queried reference-property "
                "objects are not present."
            )
        return person

    # ------------------------------------------------------------------ me, users
    async def me(self, request: Request) -> Response:
        claims = self.claims(request)
        if claims.kind != "delegated":
            raise bad_request("/me request is only valid with delegated authentication flow.")
        require(claims, scopes=ME_SCOPES)
        person = self.user_lookup(claims.oid or "")
        body = {"@odata.context": f"{self.base()}/$metadata#users/$entity", **person.graph_user()}
        return JSONResponse(
            _select(body, _select_param(request)) if _select_param(request) else body
        )

    async def my_roles(self, request: Request) -> Response:
        claims = self.claims(request)
        if claims.kind != "delegated":
            raise bad_request("/me request is only valid with delegated authentication flow.")
        require(claims, scopes=ME_SCOPES)
        person = self.user_lookup(claims.oid or "")
        roles = []
        if GLOBAL_ADMIN in person.roles:
            roles.append(
                {
                    "@odata.type": "#microsoft.graph.directoryRole",
                    "id": self.ga_role_id,
                    "deletedDateTime": None,
                    "description": "Can manage all aspects of Microsoft Entra ID and Microsoft "
                    "services that use "
                    "Microsoft Entra identities.",
                    "displayName": GLOBAL_ADMIN,
                    "roleTemplateId": GLOBAL_ADMIN_ROLE_TEMPLATE_ID,
                }
            )
        return self.collection(request, "directoryObjects", roles)

    async def users(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=USER_READ_ROLES, scopes=USER_READ_SCOPES)
        raw = request.query_params.get("$filter")
        people = self.azure_people() if not raw else self.filter_users(raw)
        return self.collection(request, "users", [p.graph_user() for p in people])

    def filter_users(self, raw: str) -> list[Person]:
        world = self.world
        joiner, terms = parse_filter(raw)
        sets: list[list[Person]] = []
        for prop, value in terms:
            key = prop.lower()
            if key == "mail":
                sets.append(world.azure_people_by_mail(value))
            elif key == "userprincipalname":
                found = world.azure_person_by_upn(value)
                sets.append([found] if found else [])
            elif key == "id":
                found = world.person_by_azure_id(value)
                sets.append([found] if found and found.azure_id else [])
            elif key == "proxyaddresses":
                kind, _, address = value.partition(":")
                if kind.lower() != "smtp" or not address:
                    sets.append([])
                else:
                    sets.append(world.azure_people_by_proxy(address))
            elif key in ("displayname", "givenname", "surname", "jobtitle"):
                attr = {
                    "displayname": "display_name",
                    "givenname": "given_name",
                    "surname": "surname",
                    "jobtitle": "job_title",
                }[key]
                sets.append(
                    [
                        p
                        for p in self.azure_people()
                        if (getattr(p, attr) or "").lower() == value.lower()
                    ]
                )
            else:
                raise GraphError(
                    400,
                    "Request_UnsupportedQuery",
                    f"Unsupported or invalid query filter clause specified for property '{prop}' "
                    "of "
                    "resource 'User'.",
                )
        return _combine(joiner, sets)

    async def user(self, request: Request) -> Response:
        claims = self.claims(request)
        key = request.path_params["user"]
        person = self.user_lookup(key)
        if not (claims.kind == "delegated" and claims.oid == person.azure_id):
            require(claims, app_roles=USER_READ_ROLES, scopes=USER_READ_SCOPES)
        body = {"@odata.context": f"{self.base()}/$metadata#users/$entity", **person.graph_user()}
        select = _select_param(request)
        return JSONResponse(_select(body, ["@odata.context", *select]) if select else body)

    def require_user_admin(self, claims: Claims) -> None:
        """Creating or deleting users: User.ReadWrite.All (or Directory.ReadWrite.All), and a
        signed-in admin must hold a role that may manage users (user-post-users.md)."""
        require(claims, app_roles=USER_WRITE, scopes=USER_WRITE)
        if claims.kind == "delegated":
            caller = self.world.person_by_azure_id(claims.oid or "")
            if caller is None or not ({GLOBAL_ADMIN, USER_ADMIN} & caller.roles):
                raise GraphError(
                    403,
                    "Authorization_RequestDenied",
                    "Insufficient privileges to complete the operation.",
                )

    async def create_user(self, request: Request) -> Response:
        """``POST /users`` with the properties user-post-users.md requires: accountEnabled,
        displayName, mailNickname, userPrincipalName (a verified domain of the tenant),
        passwordProfile.password; ``passwordPolicies`` as the user resource allows."""
        claims = self.claims(request)
        self.require_user_admin(claims)
        data = await _json(request)
        missing = [
            k
            for k in ("accountEnabled", "displayName", "mailNickname", "userPrincipalName")
            if data.get(k) in (None, "")
        ]
        profile = data.get("passwordProfile") or {}
        if not isinstance(profile, dict) or not profile.get("password"):
            missing.append("passwordProfile")
        if missing:
            raise bad_request(f"Property '{missing[0]}' is required.", code="Request_BadRequest")
        upn = str(data["userPrincipalName"])
        if upn.rsplit("@", 1)[-1].lower() != self.world.domain:
            raise bad_request(
                "The domain portion of the userPrincipalName property is invalid. You must use "
                "one of the verified domain names in your organization.",
                code="Request_BadRequest",
            )
        if self.world.person_by_email(upn) is not None:
            raise bad_request(
                "Another object with the same value for property userPrincipalName already exists.",
                code="Request_BadRequest",
            )
        password = str(profile["password"])
        classes = sum(
            any(test(c) for c in password)
            for test in (str.islower, str.isupper, str.isdigit, lambda c: not c.isalnum())
        )
        if not 8 <= len(password) <= 256 or classes < 3:
            raise bad_request(
                "The specified password does not comply with password complexity requirements. "
                "Please provide a different password.",
                code="Request_BadRequest",
            )
        policies = {p.strip() for p in str(data.get("passwordPolicies") or "").split(",") if p}
        unknown = policies - {"DisablePasswordExpiration", "DisableStrongPassword"}
        if unknown:
            raise bad_request(
                "Invalid value specified for property 'passwordPolicies' of resource 'User'.",
                code="Request_BadRequest",
            )
        person = Person(
            email=upn,
            display_name=str(data["displayName"]),
            azure_id=self.world.new_id(),
            upn=upn,
            password=password,
        )
        if profile.get("forceChangePasswordNextSignIn", True):
            person.flags.add("must_change_password")
        if data.get("accountEnabled") is False:
            person.flags.add("disabled")
        self.world.add_person(person)
        body = {"@odata.context": f"{self.base()}/$metadata#users/$entity", **person.graph_user()}
        return JSONResponse(body, status_code=201)

    async def delete_user(self, request: Request) -> Response:
        """``DELETE /users/{id}`` (user-delete.md): 204 No Content."""
        claims = self.claims(request)
        self.require_user_admin(claims)
        person = self.user_lookup(request.path_params["user"])
        self.world.remove_person(person)
        return Response(status_code=204)

    # ------------------------------------------------------------------ applications
    def application(self, request: Request) -> dict[str, Any]:
        app = _by_key(
            request.path_params["app"], self.world.applications, self.world.application_by_app_id
        )
        if replicating(self.world, app):
            raise _not_found(request.path_params["app"])
        return app

    def public_app(self, app: dict[str, Any]) -> dict[str, Any]:
        shown = {k: v for k, v in app.items() if not k.startswith("_")}
        shown["keyCredentials"] = readable_key_credentials(app)  # Graph never returns a key
        shown.pop("federatedIdentityCredentials", None)  # a navigation property, not a field
        return shown

    async def create_application(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=APP_WRITE, scopes=APP_WRITE)
        data = await _json(request)
        if not data.get("displayName"):
            raise bad_request("Property 'displayName' is required.", code="Request_BadRequest")
        world = self.world
        app: dict[str, Any] = {
            "id": world.new_id(),
            "appId": world.new_id(),
            "createdDateTime": _now_iso(),
            "displayName": data["displayName"],
            "signInAudience": data.get("signInAudience", "AzureADMyOrg"),
            "isFallbackPublicClient": data.get("isFallbackPublicClient"),
            "requiredResourceAccess": data.get("requiredResourceAccess", []),
            "publicClient": data.get("publicClient") or {"redirectUris": []},
            "web": data.get("web") or {"redirectUris": [], "homePageUrl": None, "logoutUrl": None},
            "spa": data.get("spa") or {"redirectUris": []},
            "passwordCredentials": [],
            "keyCredentials": [],
            "identifierUris": data.get("identifierUris", []),
            "tags": data.get("tags", []),
            "notes": data.get("notes"),
            "publisherDomain": world.domain,
        }
        duplicate = duplicate_redirect_uri(app)
        if duplicate is not None:
            raise duplicate
        mark_created(world, app)
        world.add_application(app)
        body = {
            "@odata.context": f"{self.base()}/$metadata#applications/$entity",
            **self.public_app(app),
        }
        return JSONResponse(body, status_code=201)

    async def list_applications(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=APP_READ, scopes=APP_READ)
        raw = request.query_params.get("$filter")
        apps = list(self.world.applications.values())
        if raw:
            apps = self.filter_objects(raw, apps, ("appId", "displayName", "id"), "application")
        return self.collection(request, "applications", [self.public_app(a) for a in apps])

    def filter_objects(
        self, raw: str, objects: list[dict[str, Any]], allowed: Iterable[str], kind: str
    ) -> list[dict[str, Any]]:
        joiner, terms = parse_filter(raw)
        names = {a.lower(): a for a in allowed}
        sets = []
        for prop, value in terms:
            if prop.lower() not in names:
                raise GraphError(
                    400,
                    "Request_UnsupportedQuery",
                    f"Unsupported or invalid query filter clause specified for property '{prop}' "
                    f"of resource '{kind}'.",
                )
            name = names[prop.lower()]
            sets.append([o for o in objects if str(o.get(name) or "").lower() == value.lower()])
        return _combine(joiner, sets)

    async def get_application(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=APP_READ, scopes=APP_READ)
        app = self.application(request)
        body = {
            "@odata.context": f"{self.base()}/$metadata#applications/$entity",
            **self.public_app(app),
        }
        select = _select_param(request)
        return JSONResponse(_select(body, ["@odata.context", *select]) if select else body)

    async def patch_application(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=APP_WRITE, scopes=APP_WRITE)
        app = self.application(request)
        data = await _json(request)
        unknown = [k for k in data if k not in APP_PATCHABLE]
        if unknown:
            raise bad_request(
                f"Property '{unknown[0]}' is read-only or does not exist on type "
                "'microsoft.graph.application'.",
                code="Request_BadRequest",
            )
        duplicate = duplicate_redirect_uri({**app, **data})
        if duplicate is not None:
            raise duplicate
        if "keyCredentials" in data:
            data["keyCredentials"] = merge_key_credentials(app, data["keyCredentials"])
        app.update(data)
        sp = self.world.service_principal_by_app_id(app["appId"])
        if sp is not None and "displayName" in data:
            sp["displayName"] = data["displayName"]
        return Response(status_code=204)

    async def delete_application(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=APP_WRITE, scopes=APP_WRITE)
        app = self.application(request)
        world = self.world
        world.applications.pop(app["id"], None)
        world._app_by_app_id.pop(app["appId"], None)
        world.app_secrets.pop(app["appId"], None)
        sp = world.service_principal_by_app_id(app["appId"])
        if sp is not None:
            world.service_principals.pop(sp["id"], None)
            world._sp_by_app_id.pop(app["appId"], None)
            for key in [
                k for k, a in world.app_role_assignments.items() if a["principalId"] == sp["id"]
            ]:
                del world.app_role_assignments[key]
            for key in [k for k, g in world.permission_grants.items() if g["clientId"] == sp["id"]]:
                del world.permission_grants[key]
        return Response(status_code=204)

    async def add_password(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=APP_WRITE, scopes=APP_WRITE)
        app = self.application(request)
        data = await _json(request)
        cred_in = data.get("passwordCredential") or {}
        secret = secrets.token_urlsafe(30)[:40].replace("-", "~")
        start = dt.datetime.now(dt.UTC)
        end = cred_in.get("endDateTime") or (start + dt.timedelta(days=730)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        credential = {
            "customKeyIdentifier": None,
            "displayName": cred_in.get("displayName"),
            "endDateTime": end,
            "hint": secret[:3],
            "keyId": str(uuid.uuid4()),
            "secretText": None,
            "startDateTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        app["passwordCredentials"].append(credential)
        self.world.app_secrets.setdefault(app["appId"], []).append(secret)
        self.world.secret_added_at[secret] = self.world.clock.now()
        app.setdefault("_secret_by_key", {})[credential["keyId"]] = secret
        body = {
            "@odata.context": f"{self.base()}/$metadata#microsoft.graph.passwordCredential",
            **credential,
            "secretText": secret,
        }
        return JSONResponse(body)

    async def remove_password(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=APP_WRITE, scopes=APP_WRITE)
        app = self.application(request)
        key_id = (await _json(request)).get("keyId")
        before = len(app["passwordCredentials"])
        app["passwordCredentials"] = [c for c in app["passwordCredentials"] if c["keyId"] != key_id]
        if len(app["passwordCredentials"]) == before:
            raise not_found(f"No password credential found with keyId {key_id}.")
        secret = app.get("_secret_by_key", {}).pop(key_id, None)
        if secret is not None:
            self.world.app_secrets[app["appId"]] = [
                s for s in self.world.app_secrets.get(app["appId"], []) if s != secret
            ]
        return Response(status_code=204)

    # ------------------------------------------------------------------ service principals
    def service_principal(self, request: Request) -> dict[str, Any]:
        sp = _by_key(
            request.path_params["sp"],
            self.world.service_principals,
            self.world.service_principal_by_app_id,
        )
        if replicating(self.world, sp):
            raise _not_found(request.path_params["sp"])
        return sp

    async def create_service_principal(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=APP_WRITE, scopes=APP_WRITE)
        data = await _json(request)
        world = self.world
        app_id = str(data.get("appId") or "")
        app = world.application_by_app_id(app_id)
        if app is None or replicating(world, app):
            raise bad_request(
                f"The appId '{app_id}' of the service principal does not reference a valid "
                "application object.",
                code="Request_BadRequest",
            )
        if world.service_principal_by_app_id(app_id) is not None:
            raise GraphError(
                409,
                "Request_MultipleObjectsWithSameKeyValue",
                "The service principal cannot be created, updated, or restored because the service "
                "principal name "
                f"{app_id} is already in use.",
            )
        sp = world.add_service_principal(
            {
                "id": world.new_id(),
                "appId": app_id,
                "displayName": app.get("displayName"),
                "accountEnabled": True,
                "servicePrincipalType": "Application",
                "appOwnerOrganizationId": world.tenant_id,
                "servicePrincipalNames": [app_id],
                "appRoles": [],
                "oauth2PermissionScopes": [],
                "tags": data.get("tags", []),
            }
        )
        mark_created(world, sp)
        body = {
            "@odata.context": f"{self.base()}/$metadata#servicePrincipals/$entity",
            **self.public_app(sp),
        }
        return JSONResponse(body, status_code=201)

    async def list_service_principals(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=APP_READ, scopes=APP_READ)
        raw = request.query_params.get("$filter")
        sps = list(self.world.service_principals.values())
        if raw:
            # A new principal is not found by a query until it has replicated.
            sps = [sp for sp in sps if not replicating(self.world, sp)]
            sps = self.filter_objects(raw, sps, ("appId", "displayName", "id"), "servicePrincipal")
        return self.collection(request, "servicePrincipals", [self.public_app(sp) for sp in sps])

    async def get_service_principal(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=APP_READ, scopes=APP_READ)
        sp = self.service_principal(request)
        body = {
            "@odata.context": f"{self.base()}/$metadata#servicePrincipals/$entity",
            **self.public_app(sp),
        }
        select = _select_param(request)
        return JSONResponse(_select(body, ["@odata.context", *select]) if select else body)

    async def app_role_assigned_to(self, request: Request) -> Response:
        claims = self.claims(request)
        resource = self.service_principal(request)
        world = self.world
        if request.method == "GET":
            require(claims, app_roles=(*APP_READ, *ROLE_ASSIGN), scopes=(*APP_READ, *ROLE_ASSIGN))
            items = [
                a for a in world.app_role_assignments.values() if a["resourceId"] == resource["id"]
            ]
            return self.collection(request, "appRoleAssignments", items)
        require(claims, app_roles=ROLE_ASSIGN, scopes=ROLE_ASSIGN)
        self.require_admin_user(claims)
        data = await _json(request)
        principal = world.service_principals.get(str(data.get("principalId") or ""))
        if principal is None:
            raise bad_request("Invalid principal id.", code="Request_BadRequest")
        if replicating(world, principal):
            # What Graph answers for a principal made moments ago (msgraph-bicep-types issue 193).
            raise bad_request("Not a valid reference update.")
        if data.get("resourceId") not in (None, resource["id"]):
            raise bad_request(
                "resourceId must be the service principal in the URL.", code="Request_BadRequest"
            )
        role_id = str(data.get("appRoleId") or "")
        if role_id not in {r["id"] for r in resource.get("appRoles", [])}:
            raise bad_request(
                "Permission being assigned was not found on application", code="Request_BadRequest"
            )
        if any(
            a["principalId"] == principal["id"]
            and a["resourceId"] == resource["id"]
            and a["appRoleId"] == role_id
            for a in world.app_role_assignments.values()
        ):
            raise bad_request(
                "Permission being assigned already exists on the object", code="Request_BadRequest"
            )
        assignment = add_app_role_assignment(world, principal, resource, role_id)
        body = {
            "@odata.context": f"{self.base()}/$metadata#appRoleAssignments/$entity",
            **assignment,
        }
        return JSONResponse(body, status_code=201)

    async def app_role_assignments(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=(*APP_READ, *ROLE_ASSIGN), scopes=(*APP_READ, *ROLE_ASSIGN))
        principal = self.service_principal(request)
        items = [
            a
            for a in self.world.app_role_assignments.values()
            if a["principalId"] == principal["id"]
        ]
        return self.collection(request, "appRoleAssignments", items)

    # ------------------------------------------------------------------ oauth2PermissionGrants
    async def grants(self, request: Request) -> Response:
        claims = self.claims(request)
        world = self.world
        if request.method == "GET":
            require(claims, app_roles=GRANT_READ, scopes=GRANT_READ)
            items = list(world.permission_grants.values())
            raw = request.query_params.get("$filter")
            if raw:
                items = self.filter_objects(
                    raw,
                    items,
                    ("clientId", "resourceId", "consentType", "principalId", "id"),
                    "oAuth2PermissionGrant",
                )
            return self.collection(request, "oauth2PermissionGrants", items)
        require(claims, app_roles=GRANT_WRITE, scopes=GRANT_WRITE)
        self.require_admin_user(claims)
        data = await _json(request)
        client_id = str(data.get("clientId") or "")
        resource_id = str(data.get("resourceId") or "")
        consent_type = data.get("consentType")
        if client_id not in world.service_principals or resource_id not in world.service_principals:
            raise bad_request("Invalid clientId or resourceId.", code="Request_BadRequest")
        if replicating(world, world.service_principals[client_id]):
            # No public source quotes this answer: Graph's usual 404 for an object not seen yet.
            raise _not_found(client_id)
        if consent_type not in ("AllPrincipals", "Principal"):
            raise bad_request(
                "consentType must be 'AllPrincipals' or 'Principal'.", code="Request_BadRequest"
            )
        principal_id = data.get("principalId")
        if (consent_type == "Principal") != bool(principal_id):
            raise bad_request(
                "principalId is required for consentType 'Principal' and only for it.",
                code="Request_BadRequest",
            )
        for existing in world.permission_grants.values():
            if (
                existing["clientId"],
                existing["resourceId"],
                existing["consentType"],
                existing.get("principalId"),
            ) == (client_id, resource_id, consent_type, principal_id):
                raise GraphError(
                    409,
                    "Request_MultipleObjectsWithSameKeyValue",
                    "Permission entry already exists.",
                )
        self.check_scopes(resource_id, str(data.get("scope") or ""))
        grant = add_permission_grant(
            world,
            client_id,
            resource_id,
            str(data.get("scope") or "").strip(),
            consent_type,
            principal_id,
        )
        body = {
            "@odata.context": f"{self.base()}/$metadata#oauth2PermissionGrants/$entity",
            **grant,
        }
        return JSONResponse(body, status_code=201)

    def check_scopes(self, resource_id: str, scope: str) -> None:
        known = {
            s["value"]
            for s in self.world.service_principals[resource_id].get("oauth2PermissionScopes", [])
        }
        unknown = [s for s in scope.split() if s not in known]
        if unknown:
            raise bad_request(
                "Invalid value specified for property 'scope' of resource "
                "'OAuth2PermissionGrant': "
                f"{unknown[0]}",
                code="Request_BadRequest",
            )

    async def grant(self, request: Request) -> Response:
        claims = self.claims(request)
        require(claims, app_roles=GRANT_WRITE, scopes=GRANT_WRITE)
        self.require_admin_user(claims)
        grant = self.world.permission_grants.get(request.path_params["grant"])
        if grant is None:
            raise not_found(f"Resource '{request.path_params['grant']}' does not exist.")
        if request.method == "DELETE":
            del self.world.permission_grants[grant["id"]]
            return Response(status_code=204)
        data = await _json(request)
        if set(data) - {"scope"}:
            raise bad_request("Only 'scope' can be updated.", code="Request_BadRequest")
        self.check_scopes(grant["resourceId"], str(data.get("scope") or ""))
        grant["scope"] = str(data.get("scope") or "").strip()
        return Response(status_code=204)

    # ------------------------------------------------------------------ routes
    def routes(self) -> list[BaseRoute]:
        v = "/v1.0"

        def r(path: str, endpoint: Callable[..., Any], methods: list[str], name: str) -> Route:
            return Route(v + path, endpoint, methods=methods, name=name)

        return [
            r("/me", self.me, ["GET"], "graph_me"),
            r(
                "/me/transitiveMemberOf/microsoft.graph.directoryRole",
                self.my_roles,
                ["GET"],
                "graph_me_roles",
            ),
            r("/users", self.users, ["GET"], "graph_users"),
            r("/users", self.create_user, ["POST"], "graph_users_create"),
            r("/users/{user}", self.user, ["GET"], "graph_user"),
            r("/users/{user}", self.delete_user, ["DELETE"], "graph_user_delete"),
            *federated_credential_routes(self.application, self.claims, lambda _: self.base()),
            r("/applications", self.create_application, ["POST"], "graph_applications_create"),
            r("/applications", self.list_applications, ["GET"], "graph_applications"),
            r("/applications/{app}", self.get_application, ["GET"], "graph_application"),
            r("/applications/{app}", self.patch_application, ["PATCH"], "graph_application_patch"),
            r(
                "/applications/{app}",
                self.delete_application,
                ["DELETE"],
                "graph_application_delete",
            ),
            r(
                "/applications/{app}/addPassword",
                self.add_password,
                ["POST"],
                "graph_application_add_password",
            ),
            r(
                "/applications/{app}/removePassword",
                self.remove_password,
                ["POST"],
                "graph_application_remove_password",
            ),
            r("/applications{app:path}", self.get_application, ["GET"], "graph_application"),
            r(
                "/servicePrincipals",
                self.create_service_principal,
                ["POST"],
                "graph_service_principals_create",
            ),
            r(
                "/servicePrincipals",
                self.list_service_principals,
                ["GET"],
                "graph_service_principals",
            ),
            r(
                "/servicePrincipals/{sp}",
                self.get_service_principal,
                ["GET"],
                "graph_service_principal",
            ),
            r(
                "/servicePrincipals/{sp}/appRoleAssignedTo",
                self.app_role_assigned_to,
                ["GET", "POST"],
                "graph_app_role_assigned_to",
            ),
            r(
                "/servicePrincipals/{sp}/appRoleAssignments",
                self.app_role_assignments,
                ["GET"],
                "graph_app_role_assignments",
            ),
            r(
                "/servicePrincipals{sp:path}",
                self.get_service_principal,
                ["GET"],
                "graph_service_principal",
            ),
            r("/oauth2PermissionGrants", self.grants, ["GET", "POST"], "graph_permission_grants"),
            r(
                "/oauth2PermissionGrants/{grant}",
                self.grant,
                ["PATCH", "DELETE"],
                "graph_permission_grant",
            ),
        ]


def directory_routes(world: World) -> list[BaseRoute]:
    return DirectoryEndpoints(world).routes()


def _by_key(
    key: str,
    by_id: dict[str, dict[str, Any]],
    by_app_id: Callable[[str], dict[str, Any] | None],
) -> dict[str, Any]:
    """An application or service principal addressed by object id or by ``(appId='…')``."""
    match = re.fullmatch(r"\(appId='([^']*)'\)", key)
    found = by_app_id(match.group(1)) if match else by_id.get(key)
    if found is None:
        raise _not_found(key)
    return found


def _not_found(key: str) -> GraphError:
    return not_found(
        f"Resource '{key}' does not exist or one of its queried reference-property objects "
        "are not present."
    )
