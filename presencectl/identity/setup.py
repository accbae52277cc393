"""setup-azure and consent: prerequisites, the app registration, its secret, and admin consent.

Owns the seed's "What to Know First" and "Enabling the Sync" steps 1–5 as code:

1. the admin's sign-in (:func:`presencectl.identity.tokens.admin_sign_in`, done by the caller);
2. prerequisites — Global Administrator (``/me/transitiveMemberOf/microsoft.graph.directoryRole``),
   the Extend API client (it reads the Connect address book), the Azure admin being a Connect
   user (a warning), and the Account Contact's Security Manager role (a Control Panel setting the
   API does not show: a step to confirm) — each reported as a :class:`Step` with a remedy;
3. the app registration (create or reuse, idempotent) with the presence permissions and "Allow
   public client flows", its service principal, and a client secret (``addPassword``) stored
   through presencectl.secrets and never returned;
4. admin consent through Graph (``appRoleAssignedTo`` + ``oauth2PermissionGrants``) or through the
   ``/v2.0/adminconsent`` URL and a loopback listener;
5. what was verified, saved in the profile.

All Graph calls go through :class:`presencectl.graph.client.GraphClient`. Nothing here prints:
progress reaches the CLI through ``on_step``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from presencectl import secrets
from presencectl.errors import ApiError, AuthError, ConfigError, PresencectlError, UsageError
from presencectl.graph.permissions import (
    APP_ROLES,
    GLOBAL_ADMIN_ROLE_TEMPLATE_ID,
    GRANTED_SCOPES,
    GRAPH_APP_ID,
)
from presencectl.transport import path_segment

if TYPE_CHECKING:
    from presencectl.config import Profile
    from presencectl.graph.client import GraphClient
    from presencectl.graph.tokens import TokenProvider
    from presencectl.identity.tokens import AdminSession

log = logging.getLogger(__name__)

DEFAULT_APP_NAME = "presencectl presence sync"
SECRET_LIFETIME_DAYS = 180
SECRET_RENEW_BEFORE_DAYS = 14
SECRET_DISPLAY_NAME = "presencectl"
LOCALHOST_REDIRECT = "http://localhost"
SECURITY_MANAGER = "Security Manager"
EXTEND_CLIENT = "Extend API client"
ADMIN_IN_CONNECT = "Admin in Connect"
EXTEND_CLIENT_REMEDY = (
    "register an Extend API service client in Control Panel (vendor KB 63780; Account Owner or "
    "Technical Administrator), then `presencectl connect set --client-id ID` "
    "(docs/connect-setup.md)"
)

OK, FAILED, CREATED, UPDATED, UNCHANGED, SKIPPED = (
    "ok",
    "failed",
    "created",
    "updated",
    "unchanged",
    "skipped",
)
WAITING = "waiting"  # progress only (never a step of the report)
# Information, never a failure: WARNING has a remedy; CONFIRM is a step only the admin can check
# (in Control Panel).
WARNING, CONFIRM = "warning", "confirm"


@dataclass
class Step:
    """One line of the setup report."""

    step: str
    result: str
    detail: str = ""
    remedy: str = ""

    @property
    def changed(self) -> bool:
        return self.result in (CREATED, UPDATED)


@dataclass
class SetupReport:
    tenant_id: str
    client_id: str
    app_name: str
    admin: str
    connect_account_email: str
    changed: bool
    steps: list[Step] = field(default_factory=list)


StepCallback = Callable[[Step], None]


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _odata_quote(value: str) -> str:
    return value.replace("'", "''")


# ------------------------------------------------------------------------------ prerequisites


async def admin_identity(graph: GraphClient) -> dict[str, Any]:
    me = await graph.get_json("/me", params={"$select": "id,displayName,mail,userPrincipalName"})
    return me if isinstance(me, dict) else {}


def email_of(user: dict[str, Any]) -> str:
    return str(user.get("mail") or user.get("userPrincipalName") or "")


async def is_global_admin(graph: GraphClient) -> bool:
    async for role in graph.paged("/me/transitiveMemberOf/microsoft.graph.directoryRole"):
        if str(role.get("roleTemplateId", "")).lower() == GLOBAL_ADMIN_ROLE_TEMPLATE_ID:
            return True
    return False


def _field(item: Any, name: str) -> Any:
    if isinstance(item, dict):
        return item.get(name)
    return getattr(item, name, None)


async def connect_contacts(profile: Profile) -> list[Any]:
    """The Connect address book, through the Connect adapter."""
    from presencectl.connect import connect_client_for
    from presencectl.connect.directory import list_contacts

    async with connect_client_for(profile) as client:
        return list(await list_contacts(client))


async def check_prerequisites(
    graph: GraphClient,
    profile: Profile,
    *,
    connect_account_email: str | None,
    on_step: StepCallback,
) -> tuple[str, str, list[Step]]:
    """Check every prerequisite, report each, then raise the first failure (exit 3).

    Returns (admin email, Connect account contact email, steps).
    """
    steps: list[Step] = []

    def report(step: Step) -> None:
        steps.append(step)
        on_step(step)

    me = await admin_identity(graph)
    admin_email = email_of(me)
    if await is_global_admin(graph):
        report(Step("Global Administrator", OK, f"{admin_email} holds the role"))
    else:
        report(
            Step(
                "Global Administrator",
                FAILED,
                f"{admin_email} is not a Global Administrator",
                remedy="sign in as a Global Administrator, or have one assign you the role "
                "(Entra admin center > Roles and administrators > Global Administrator)",
            )
        )

    contact_email = connect_account_email or profile.connect_account_email or ""
    contacts: list[Any] | None = None
    try:
        contacts = await connect_contacts(profile)
    except PresencectlError as exc:
        if exc.code in ("config_missing", "connect_secret_missing"):
            report(
                Step(
                    EXTEND_CLIENT,
                    WARNING,
                    "no Extend API client in the profile yet",
                    remedy=EXTEND_CLIENT_REMEDY,
                )
            )
        else:
            report(
                Step(
                    EXTEND_CLIENT,
                    FAILED,
                    exc.message,
                    remedy=exc.hint or "check connect_client_id and the Connect client secret",
                )
            )
    if contacts is not None:
        report(
            Step(
                EXTEND_CLIENT,
                OK,
                f"client {profile.connect_client_id} signed in; "
                f"{len(contacts)} contacts in the address book",
            )
        )
        admin_contact = next(
            (
                c
                for c in contacts
                if admin_email and str(_field(c, "email") or "").lower() == admin_email.lower()
            ),
            None,
        )
        if admin_contact is not None:
            report(Step(ADMIN_IN_CONNECT, OK, f"{admin_email} is a Connect user"))
            contact_email = contact_email or str(_field(admin_contact, "email"))
        else:
            report(
                Step(
                    ADMIN_IN_CONNECT,
                    WARNING,
                    f"{admin_email or 'the Azure admin'} is not a Connect user",
                    remedy=f"the vendor's own sync expects the Azure admin to be a Connect user "
                    f"with the same email: add {admin_email or 'the admin'} as a user in Control "
                    "Panel, or run setup-azure as an admin who is one",
                )
            )
    # Not visible through the API (contacts carry no roles): the admin confirms it in Control Panel.
    who = contact_email or "the Account Contact"
    report(
        Step(
            SECURITY_MANAGER,
            CONFIRM,
            f"confirm in Control Panel that {who} holds the Security Manager role (the API does "
            "not show roles)",
            remedy="Control Panel > Account > Contacts; the vendor's presence-sync article asks "
            "for it",
        )
    )
    failed = [s for s in steps if s.result == FAILED]
    if failed:
        first = failed[0]
        code = {
            "Global Administrator": "prerequisite_global_admin",
            EXTEND_CLIENT: "prerequisite_connect",
        }[first.step]
        raise ConfigError(f"prerequisite not met: {first.detail}", hint=first.remedy, code=code)
    return admin_email, contact_email, steps


# -------------------------------------------------------------------------- app registration


def required_resource_access() -> list[dict[str, Any]]:
    access = [{"id": rid, "type": "Role"} for rid in APP_ROLES.values()]
    access += [{"id": sid, "type": "Scope"} for sid in GRANTED_SCOPES.values()]
    return [{"resourceAppId": GRAPH_APP_ID, "resourceAccess": access}]


def application_body(name: str) -> dict[str, Any]:
    """A new app registration: web redirect for the consent listener, no public-client URI.

    Entra ID refuses a redirect URI repeated across platforms ("Redirect URIs must have distinct
    values", MicrosoftDocs/azure-docs issue 89929); device code and password sign-in need no
    redirect URI at all, only ``isFallbackPublicClient`` ("Allow public client flows").
    """
    return {
        "displayName": name,
        "signInAudience": "AzureADMyOrg",
        # "Allow public client flows": the sync user's password sign-in needs it.
        "isFallbackPublicClient": True,
        # The admin-consent redirect (Entra ignores a localhost URI's port).
        "web": {"redirectUris": [LOCALHOST_REDIRECT]},
        "requiredResourceAccess": required_resource_access(),
    }


def _same_uri(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


def application_patch(app: dict[str, Any]) -> dict[str, Any]:
    """What must change on an existing app registration (empty when nothing).

    Repairs a registration made by an earlier presencectl, which put ``http://localhost`` on the
    ``publicClient`` platform as well as on ``web``: the copy on any other platform goes.
    """
    patch: dict[str, Any] = {}
    if app.get("isFallbackPublicClient") is not True:
        patch["isFallbackPublicClient"] = True
    wanted = {(a["id"], a["type"]) for a in required_resource_access()[0]["resourceAccess"]}
    rra = [dict(r) for r in app.get("requiredResourceAccess") or []]
    graph_entry = next((r for r in rra if r.get("resourceAppId") == GRAPH_APP_ID), None)
    have = {(a.get("id"), a.get("type")) for a in (graph_entry or {}).get("resourceAccess") or []}
    missing = wanted - have
    if missing:
        if graph_entry is None:
            graph_entry = {"resourceAppId": GRAPH_APP_ID, "resourceAccess": []}
            rra.append(graph_entry)
        graph_entry["resourceAccess"] = list(graph_entry.get("resourceAccess") or []) + [
            {"id": i, "type": t} for i, t in sorted(missing)
        ]
        patch["requiredResourceAccess"] = rra
    for platform in ("publicClient", "spa"):
        uris = list((app.get(platform) or {}).get("redirectUris") or [])
        kept = [u for u in uris if not _same_uri(u, LOCALHOST_REDIRECT)]
        if kept != uris:
            patch[platform] = {"redirectUris": kept}
    web = dict(app.get("web") or {})
    web_uris = list(web.get("redirectUris") or [])
    if not any(_same_uri(u, LOCALHOST_REDIRECT) for u in web_uris):
        patch["web"] = {**web, "redirectUris": [*web_uris, LOCALHOST_REDIRECT]}
    return patch


async def find_application(
    graph: GraphClient, *, app_id: str | None, name: str
) -> list[dict[str, Any]]:
    flt = (
        f"appId eq '{_odata_quote(app_id)}'" if app_id else f"displayName eq '{_odata_quote(name)}'"
    )
    return [a async for a in graph.paged("/applications", params={"$filter": flt})]


async def find_service_principal(graph: GraphClient, app_id: str) -> dict[str, Any] | None:
    found = [
        s
        async for s in graph.paged(
            "/servicePrincipals", params={"$filter": f"appId eq '{_odata_quote(app_id)}'"}
        )
    ]
    return found[0] if found else None


# ------------------------------------------------------------------------------ replication

# Microsoft gives no replication SLA and minutes of 400/404 are reported right after a new
# service principal (microsoft/msgraph-bicep-types issue 193): several minutes, not seconds.
REPLICATION_WAIT_S = 300.0
REPLICATION_MESSAGE = "waiting for Entra ID to replicate the new app…"
REPLICATION_PROGRESS_EVERY_S = 30.0
_MISSING_APPLICATION = "does not reference a valid application object"
# appRoleAssignedTo naming a principal made moments ago (msgraph-bicep-types issue 193).
_NOT_A_VALID_REFERENCE = "not a valid reference update"

T = TypeVar("T")


def is_replication_answer(
    exc: BaseException, *, just_created: bool, names: tuple[str, ...] = ()
) -> bool:
    """Is ``exc`` one of the answers Entra ID gives while a new object replicates?

    Creating the service principal of a new app answers 400 "The appId '…' of the service
    principal does not reference a valid application object." (hashicorp/terraform-provider-
    azuread issue 581, hashicorp/vault-plugin-secrets-azure issue 8); addressing an object made
    moments ago answers 404; ``appRoleAssignedTo`` naming a new principal answers 400 "Not a valid
    reference update." (microsoft/msgraph-bicep-types issue 193); and a 400 that names one of
    ``names`` (the new principal's ids) is that principal not seen yet. Any other 4xx is a real
    error.
    """
    if not isinstance(exc, ApiError):
        return False
    message = exc.message.lower()
    if exc.status == 400 and _MISSING_APPLICATION in message:
        return True
    if not just_created:
        return False
    if exc.status == 404:
        return True
    return exc.status == 400 and (
        _NOT_A_VALID_REFERENCE in message or any(n and n.lower() in message for n in names)
    )


async def after_replication(
    call: Callable[[], Awaitable[T]],
    *,
    just_created: bool,
    on_step: StepCallback,
    wait_s: float = REPLICATION_WAIT_S,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    names: tuple[str, ...] = (),
    what: str = REPLICATION_MESSAGE,
) -> T:
    """``call()``, retried with backoff (1, 2, 4 … 16 s) for up to ``wait_s`` while Entra ID
    replicates a new object; progress through ``on_step`` at the first wait, then every 30 s."""
    import asyncio
    import time

    pause = sleep or asyncio.sleep
    started = time.monotonic()
    deadline = started + wait_s
    delay = 1.0
    told_at: float | None = None
    while True:
        try:
            return await call()
        except ApiError as exc:
            if not is_replication_answer(exc, just_created=just_created, names=names):
                raise
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                raise ApiError(
                    f"Entra ID had not replicated the new app after {int(wait_s)} s: {exc.message}",
                    status=exc.status,
                    hint="run `presencectl setup-azure` again in a few minutes; it reuses the "
                    "app registration",
                    code="replication_timeout",
                ) from exc
            if told_at is None:
                on_step(Step("Replication", WAITING, what))
                told_at = now
            elif now - told_at >= REPLICATION_PROGRESS_EVERY_S:
                on_step(
                    Step(
                        "Replication",
                        WAITING,
                        f"{what.rstrip('…')} ({int(now - started)} s of at most {int(wait_s)} s)",
                    )
                )
                told_at = now
            log.info("Entra ID replication: %s; retrying in %.0f s", exc.message, delay)
            await pause(min(delay, left))
            delay = min(delay * 2, 16.0)


async def ensure_application(
    graph: GraphClient,
    *,
    client_id: str | None,
    name: str,
    on_step: StepCallback,
    replication_wait_s: float = REPLICATION_WAIT_S,
) -> tuple[dict[str, Any], list[Step]]:
    steps: list[Step] = []
    apps = await find_application(graph, app_id=client_id, name=name)
    if client_id and not apps:
        raise ConfigError(
            f"no app registration with client id {client_id} in this tenant",
            hint="check --client-id (or client_id in the profile), or omit it to create the app",
            code="app_not_found",
        )
    if len(apps) > 1:
        raise ConfigError(
            f"{len(apps)} app registrations are named '{name}'",
            hint="pass --client-id with the one to use, or --app-name with a unique name",
            code="app_ambiguous",
        )
    if apps:
        app = apps[0]
        patch = application_patch(app)
        if patch:
            await graph.request("PATCH", f"/applications/{path_segment(app['id'])}", json=patch)
            app = {**app, **patch}
            steps.append(
                Step(
                    "App registration",
                    UPDATED,
                    f"{app.get('displayName')} ({app['appId']}): set " + ", ".join(sorted(patch)),
                )
            )
        else:
            steps.append(
                Step("App registration", UNCHANGED, f"{app.get('displayName')} ({app['appId']})")
            )
    else:
        app = await graph.post_json("/applications", application_body(name))
        # Marks the app as made by this run: a 404 on it may be replication (after_replication).
        app["_just_created"] = True
        steps.append(Step("App registration", CREATED, f"{name} ({app['appId']})"))
    on_step(steps[-1])
    sp = await find_service_principal(graph, app["appId"])
    if sp is None:
        sp = await _create_service_principal(graph, app, on_step, replication_wait_s)
        steps.append(Step("Service principal", CREATED, f"for {app['appId']}"))
    else:
        steps.append(Step("Service principal", UNCHANGED, sp.get("id", "")))
    on_step(steps[-1])
    # Kept from the 201 (a `$filter` lookup does not find a new principal until it replicates):
    # the consent steps use its id, and know it is new.
    app["_service_principal"] = sp
    return app, steps


async def _create_service_principal(
    graph: GraphClient, app: dict[str, Any], on_step: StepCallback, wait_s: float
) -> dict[str, Any]:
    """POST /servicePrincipals through the replication window; the 201's object, marked new.

    A 409 means an earlier run created it and a `$filter` lookup does not show it yet: it is
    looked up again (by the same replication wait) rather than failing the rerun.
    """

    async def create() -> dict[str, Any]:
        try:
            created = await graph.post_json("/servicePrincipals", {"appId": app["appId"]})
        except ApiError as exc:
            if exc.status != 409:
                raise
            found = await find_service_principal(graph, app["appId"])
            if found is None:
                raise ApiError(
                    f"the service principal of {app['appId']} exists but is not found yet",
                    status=404,
                    code="graph_error",
                ) from exc
            return {**found, "_just_created": True}
        return {**dict(created or {}), "_just_created": True}

    return await after_replication(
        create,
        just_created=True,
        on_step=on_step,
        wait_s=wait_s,
    )


async def ensure_client_secret(
    graph: GraphClient,
    profile: Profile,
    app: dict[str, Any],
    *,
    on_step: StepCallback,
    replication_wait_s: float = REPLICATION_WAIT_S,
    force: bool = False,
) -> Step:
    """Keep a stored secret the app still knows and that is not about to expire; else add one."""
    now = datetime.now(UTC)
    stored = secrets.get_secret(profile.name, secrets.CLIENT_SECRET)
    key_id = str(profile.verified.get("client_secret_key_id") or "")
    creds = {str(c.get("keyId")): c for c in app.get("passwordCredentials") or []}
    from presencectl.identity.secret_rotation import rotate_client_secret

    if stored and secrets.secret_source(profile.name, secrets.CLIENT_SECRET) == "env" and not force:
        step = Step("Client secret", UNCHANGED, "taken from PRESENCECTL_CLIENT_SECRET")
        on_step(step)
        return step
    if stored and key_id in creds and not force:
        end = _parse_time(creds[key_id].get("endDateTime"))
        if end is None or end - now > timedelta(days=SECRET_RENEW_BEFORE_DAYS):
            step = Step(
                "Client secret",
                UNCHANGED,
                f"stored, expires {creds[key_id].get('endDateTime', '?')}",
            )
            on_step(step)
            return step

    def add_password(body: dict[str, Any]) -> Awaitable[Any]:
        return after_replication(
            lambda: graph.post_json(f"/applications/{path_segment(app['id'])}/addPassword", body),
            just_created=bool(app.get("_just_created")),
            on_step=on_step,
            wait_s=replication_wait_s,
        )

    told: list[float] = []

    def on_wait(waited: float) -> None:
        # The first retry, then about every 30 s: the proof may take minutes (replication).
        if not told or waited - told[-1] >= REPLICATION_PROGRESS_EVERY_S:
            told.append(waited)
            detail = "waiting for Entra ID to accept the new client secret…"
            if waited:
                detail = f"{detail.rstrip('…')} ({int(waited)} s)"
            on_step(Step("Replication", WAITING, detail))

    rotation = await rotate_client_secret(
        graph,
        profile,
        app,
        display_name=SECRET_DISPLAY_NAME,
        lifetime_days=SECRET_LIFETIME_DAYS,
        add_password=add_password,
        on_wait=on_wait,
    )
    revoked = (
        f"; the previous secret ({rotation.revoked_key_id}) is revoked"
        if rotation.revoked_key_id
        else ""
    )
    step = Step(
        "Client secret",
        CREATED,
        f"stored in the {_secret_store(profile)}, expires "
        f"{profile.verified['client_secret_expires']}{revoked}",
    )
    on_step(step)
    return step


def _secret_store(profile: Profile) -> str:
    source = secrets.secret_source(profile.name, secrets.CLIENT_SECRET)
    return {"keyring": "OS keyring", "file": "secrets file (0600)"}.get(
        source or "", "secret store"
    )


# ----------------------------------------------------------------------------------- consent


@dataclass
class ConsentState:
    app_roles_missing: list[str]
    scopes_missing: list[str]
    graph_sp_id: str
    app_sp_id: str
    grant: dict[str, Any] | None

    @property
    def complete(self) -> bool:
        return not self.app_roles_missing and not self.scopes_missing


async def consent_state(
    graph: GraphClient, client_id: str, *, app_sp: dict[str, Any] | None = None
) -> ConsentState:
    """What is granted to the app; ``app_sp``: its service principal when known (a new one is
    not found by a `$filter` lookup until it has replicated)."""
    graph_sp = await find_service_principal(graph, GRAPH_APP_ID)
    if app_sp is None:
        app_sp = await find_service_principal(graph, client_id)
    if graph_sp is None:
        raise ApiError(
            "the Microsoft Graph service principal is missing from the tenant", code="graph_error"
        )
    if app_sp is None:
        raise ConfigError(
            f"the app {client_id} has no service principal in this tenant",
            hint="run `presencectl setup-azure`",
            code="app_not_found",
        )
    assigned_path = f"/servicePrincipals/{path_segment(graph_sp['id'])}/appRoleAssignedTo"
    assigned = {
        a.get("appRoleId")
        async for a in graph.paged(assigned_path)
        if a.get("principalId") == app_sp["id"]
    }
    roles_missing = [name for name, rid in APP_ROLES.items() if rid not in assigned]
    grants = [
        g
        async for g in graph.paged(
            "/oauth2PermissionGrants", params={"$filter": f"clientId eq '{app_sp['id']}'"}
        )
        if g.get("resourceId") == graph_sp["id"] and g.get("consentType") == "AllPrincipals"
    ]
    grant = grants[0] if grants else None
    have = set(str((grant or {}).get("scope") or "").split())
    scopes_missing = [name for name in GRANTED_SCOPES if name not in have]
    return ConsentState(roles_missing, scopes_missing, graph_sp["id"], app_sp["id"], grant)


async def grant_consent(
    graph: GraphClient,
    client_id: str,
    *,
    on_step: StepCallback,
    app_sp: dict[str, Any] | None = None,
    replication_wait_s: float = REPLICATION_WAIT_S,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> Step:
    """Grant every missing app role and delegated scope through Graph (idempotent).

    ``app_sp``: the app's service principal as setup-azure created or found it. When this run
    created it, each grant is retried through the replication window: Graph refuses to name a
    principal it has not replicated yet (400/404; microsoft/msgraph-bicep-types issue 193).
    """
    state = await consent_state(graph, client_id, app_sp=app_sp)
    if state.complete:
        step = Step("Admin consent", UNCHANGED, "every permission already granted")
        on_step(step)
        return step
    just_created = bool((app_sp or {}).get("_just_created"))

    async def post(path: str, body: dict[str, Any]) -> Any:
        return await after_replication(
            lambda: graph.post_json(path, body),
            just_created=just_created,
            on_step=on_step,
            wait_s=replication_wait_s,
            names=(state.app_sp_id, client_id),
            sleep=sleep,
            what="waiting for Entra ID to replicate the new service principal before consent…",
        )

    for name in state.app_roles_missing:
        await post(
            f"/servicePrincipals/{path_segment(state.graph_sp_id)}/appRoleAssignedTo",
            {
                "principalId": state.app_sp_id,
                "resourceId": state.graph_sp_id,
                "appRoleId": APP_ROLES[name],
            },
        )
    if state.scopes_missing:
        if state.grant is None:
            await post(
                "/oauth2PermissionGrants",
                {
                    "clientId": state.app_sp_id,
                    "consentType": "AllPrincipals",
                    "resourceId": state.graph_sp_id,
                    "scope": " ".join(GRANTED_SCOPES),
                },
            )
        else:
            scopes = str(state.grant.get("scope") or "").split()
            scopes += [s for s in state.scopes_missing if s not in scopes]
            await graph.request(
                "PATCH",
                f"/oauth2PermissionGrants/{path_segment(state.grant['id'])}",
                json={"scope": " ".join(scopes)},
            )
    granted = state.app_roles_missing + state.scopes_missing
    step = Step(
        "Admin consent",
        CREATED if len(granted) == len(APP_ROLES) + len(GRANTED_SCOPES) else UPDATED,
        "granted " + ", ".join(granted),
    )
    on_step(step)
    return step


async def verify_consent(
    graph: GraphClient,
    client_id: str,
    *,
    on_step: StepCallback,
    via: str,
    app_sp: dict[str, Any] | None = None,
) -> Step:
    state = await consent_state(graph, client_id, app_sp=app_sp)
    if not state.complete:
        missing = state.app_roles_missing + state.scopes_missing
        raise AuthError(
            "admin consent is incomplete: missing " + ", ".join(missing),
            hint="run `presencectl consent` as a Global Administrator",
            code="consent_missing",
        )
    step = Step("Admin consent", OK, f"every permission granted ({via})")
    on_step(step)
    return step


ConsentUrlCallback = Callable[[str], None]


async def consent_by_url(
    profile: Profile,
    client_id: str,
    tenant: str,
    *,
    on_url: ConsentUrlCallback,
    timeout: float,
) -> None:
    """Show the admin-consent URL and wait for the loopback redirect; raise on refusal/timeout."""
    import asyncio

    from presencectl.identity.consent_listener import ConsentListener

    listener = ConsentListener()
    on_url(listener.consent_url(profile.authority_url, tenant, client_id))
    answer = await asyncio.to_thread(listener.wait, timeout)
    if not answer.granted:
        detail = answer.summary
        if answer.aadsts and answer.aadsts not in detail:
            detail = f"{answer.aadsts}: {detail}" if detail else answer.aadsts
        raise AuthError(
            f"admin consent was not granted: {answer.error}" + (f" ({detail})" if detail else ""),
            hint="open the consent URL again signed in as a Global Administrator and choose Accept "
            "(AADSTS65004 means the request was declined or cancelled), or run "
            "`presencectl consent` without --consent-url to grant through Graph",
            code="consent_declined",
        )
    # The redirect's tenant proves nothing (anyone can forge it, v2-admin-consent.md): it is only
    # compared with the profile's, never adopted; Graph then shows what was really granted.
    expected = (profile.tenant_id or "").lower()
    if answer.tenant and _is_guid(expected) and answer.tenant.lower() != expected:
        raise AuthError(
            f"admin consent was answered for tenant {answer.tenant}, not the profile's tenant "
            f"{profile.tenant_id}",
            hint="sign in to the consent page with an admin of the profile's tenant, or fix "
            "tenant_id (--tenant)",
            code="consent_wrong_tenant",
        )
    if answer.tenant and answer.tenant.lower() != expected:
        log.info("admin consent answered for tenant %s (profile: %s)", answer.tenant, expected)


# ----------------------------------------------------------------------------------- the run


@dataclass
class SetupOptions:
    app_name: str = DEFAULT_APP_NAME
    client_id: str | None = None
    connect_account_email: str | None = None
    consent_url: bool = False
    consent_timeout: float = 600.0
    replication_wait_s: float = REPLICATION_WAIT_S
    sign_in_timeout: float = 300.0  # --browser: give up (exit 4) when no redirect came by then
    # how the app proves itself (identity/app_credentials.py): secret | certificate | federated
    credential: str = "secret"
    certificate_file: str | None = None
    federated_issuer: str | None = None
    federated_subject: str | None = None
    federated_token_file: str | None = None


async def _ensure_app_credential(
    graph: GraphClient,
    profile: Profile,
    app: dict[str, Any],
    options: SetupOptions,
    on_step: StepCallback,
) -> Step:
    """A certificate or a federated credential instead of a client secret."""
    from presencectl.identity import app_credentials

    if options.credential == "certificate":
        result, detail = await app_credentials.ensure_certificate(
            graph, profile, app, certificate_file=options.certificate_file
        )
        name = "App certificate"
    else:
        result, detail = await app_credentials.ensure_federated(
            graph, profile, app,
            issuer=options.federated_issuer or "", subject=options.federated_subject or "",
            token_file=options.federated_token_file,
        )  # fmt: skip
        name = "Federated credential"
    profile.verified["app_credential"] = _today()
    step = Step(name, CREATED if result == "created" else UNCHANGED, detail)
    on_step(step)
    return step


def graph_client_for(profile: Profile, provider: TokenProvider) -> GraphClient:
    from presencectl.graph.client import GraphClient

    return GraphClient(profile.graph_url, provider, profile.http_settings())


async def run_setup(
    profile: Profile,
    session: AdminSession,
    options: SetupOptions,
    *,
    on_step: StepCallback,
    on_consent_url: ConsentUrlCallback,
    save: Callable[[Profile], None] | None = None,
) -> SetupReport:
    """Steps 2–5 of setup-azure for a signed-in admin. Saves the profile (``save``) as it goes."""
    from presencectl.config import save_profile

    save = save or save_profile
    if session.tenant_id:
        profile.tenant_id = session.tenant_id
    steps: list[Step] = []
    async with graph_client_for(profile, session.provider) as graph:
        admin_email, contact_email, prereq = await check_prerequisites(
            graph, profile, connect_account_email=options.connect_account_email, on_step=on_step
        )
        steps += prereq
        today = _today()
        profile.admin_email = admin_email
        profile.connect_account_email = contact_email or None
        profile.verified["global_admin"] = today
        if any(s.step == ADMIN_IN_CONNECT and s.result == OK for s in prereq):
            profile.verified["admin_in_connect"] = today
        app, app_steps = await ensure_application(
            graph,
            client_id=options.client_id or profile.client_id,
            name=options.app_name,
            on_step=on_step,
            replication_wait_s=options.replication_wait_s,
        )
        steps += app_steps
        profile.client_id = app["appId"]
        profile.verified["app_registration"] = today
        if options.credential == "secret":
            steps.append(
                await ensure_client_secret(
                    graph, profile, app, on_step=on_step,
                    replication_wait_s=options.replication_wait_s,
                )
            )  # fmt: skip
        else:
            steps.append(await _ensure_app_credential(graph, profile, app, options, on_step))
        save(profile)  # the app exists now: a failure below must not lose its id
        if options.consent_url:
            state = await consent_state(graph, app["appId"], app_sp=app.get("_service_principal"))
            if state.complete:
                step = Step("Admin consent", UNCHANGED, "every permission already granted")
                on_step(step)
                steps.append(step)
            else:
                await consent_by_url(
                    profile,
                    app["appId"],
                    profile.tenant_id or "organizations",
                    on_url=on_consent_url,
                    timeout=options.consent_timeout,
                )
                verified = await verify_consent(
                    graph,
                    app["appId"],
                    on_step=lambda s: None,
                    via="consent URL",
                    app_sp=app.get("_service_principal"),
                )
                verified.result = CREATED
                on_step(verified)
                steps.append(verified)
        else:
            steps.append(
                await grant_consent(
                    graph,
                    app["appId"],
                    on_step=on_step,
                    app_sp=app.get("_service_principal"),
                    replication_wait_s=options.replication_wait_s,
                )
            )
        profile.verified["admin_consent"] = today
        save(profile)
    return SetupReport(
        tenant_id=profile.tenant_id or "",
        client_id=profile.client_id or "",
        app_name=str(app.get("displayName") or options.app_name),
        admin=admin_email,
        connect_account_email=contact_email,
        changed=any(s.changed for s in steps),
        steps=steps,
    )


async def run_consent(
    profile: Profile,
    session: AdminSession,
    *,
    use_url: bool,
    on_step: StepCallback,
    on_consent_url: ConsentUrlCallback,
    timeout: float = 600.0,
) -> Step:
    """Re-grant the presence permissions (seed step 5), through Graph or the consent URL."""
    from presencectl.config import save_profile

    client_id = profile.client_id
    if not client_id:
        raise ConfigError(
            "the profile has no client_id",
            hint="run `presencectl setup-azure` first",
            code="config_missing",
        )
    async with graph_client_for(profile, session.provider) as graph:
        if use_url:
            await consent_by_url(
                profile,
                client_id,
                profile.tenant_id or "organizations",
                on_url=on_consent_url,
                timeout=timeout,
            )
            step = await verify_consent(graph, client_id, on_step=on_step, via="consent URL")
        else:
            step = await grant_consent(graph, client_id, on_step=on_step)
    profile.verified["admin_consent"] = _today()
    save_profile(profile)
    return step


@dataclass
class ConsentCheck:
    permission: str
    kind: str
    granted: bool


def check_app_permissions(
    profile: Profile,
    *,
    method: str = "device_code",
    on_message: Callable[[Any], None] = lambda message: None,
) -> list[ConsentCheck]:
    """``consent --check``: the app signs in, and Graph says what is granted to it.

    The app's client-credentials sign-in proves its secret and service principal. What it was
    granted is then read from Graph — the app role assignments of its service principal and the
    tenant-wide delegated grant — with the admin's sign-in (silent from the cache when
    setup-azure or consent ran here), because a Graph access token is not ours to read
    (Microsoft: it may change format or be encrypted) and the app's own permissions do not
    include reading app registrations. Raises AuthError ``consent_missing`` listing each gap.
    """
    import asyncio

    from presencectl.identity.tokens import admin_sign_in, app_token_provider

    client_id = profile.client_id
    if not client_id:
        raise ConfigError(
            "the profile has no client_id",
            hint="run `presencectl setup-azure` first",
            code="config_missing",
        )
    app_token_provider(profile)(True)  # force_refresh: a cached token would not prove the secret
    session = admin_sign_in(profile, method, on_message=on_message)

    async def read() -> ConsentState:
        async with graph_client_for(profile, session.provider) as graph:
            return await consent_state(graph, client_id)

    state = asyncio.run(read())
    checks = [
        ConsentCheck(name, "application", name not in state.app_roles_missing) for name in APP_ROLES
    ] + [
        ConsentCheck(name, "delegated", name not in state.scopes_missing) for name in GRANTED_SCOPES
    ]
    missing = [c.permission for c in checks if not c.granted]
    if missing:
        raise AuthError(
            "the app lacks admin consent for: " + ", ".join(missing),
            hint="run `presencectl consent` as a Global Administrator",
            code="consent_missing",
        )
    from presencectl.config import save_profile

    profile.verified["app_permissions"] = _today()
    save_profile(profile)
    return checks


# ------------------------------------------------------------------ entry points for the CLI


def setup_azure(
    profile: Profile,
    options: SetupOptions,
    *,
    method: str,
    on_message: Callable[[Any], None],
    on_step: StepCallback,
    on_consent_url: ConsentUrlCallback,
) -> SetupReport:
    """The whole of setup-azure: the admin's sign-in, then :func:`run_setup`."""
    import asyncio

    from presencectl.identity.tokens import admin_sign_in

    session = admin_sign_in(profile, method, on_message=on_message, timeout=options.sign_in_timeout)
    on_step(
        Step("Azure sign-in", OK, f"{session.username or 'admin'} in tenant {session.tenant_id}")
    )
    report = asyncio.run(
        run_setup(profile, session, options, on_step=on_step, on_consent_url=on_consent_url)
    )
    report.steps.insert(
        0, Step("Azure sign-in", OK, f"{session.username or 'admin'} in tenant {session.tenant_id}")
    )
    return report


def rotate_secret(
    profile: Profile, *, method: str, on_message: Callable[[Any], None], on_step: StepCallback
) -> SetupReport:
    """``setup-azure --rotate-credential`` (``--rotate-secret``): a new client secret or app
    certificate, proven, and the previous one revoked.

    Nothing else of setup-azure runs (no prerequisite checks, no app changes, no consent).
    """
    import asyncio

    from presencectl.config import save_profile
    from presencectl.identity.tokens import admin_sign_in

    if not profile.client_id:
        raise ConfigError(
            f"profile '{profile.name}' has no app registration to rotate a secret of",
            hint="run `presencectl setup-azure` first",
            code="setup_missing",
        )
    session = admin_sign_in(profile, method, on_message=on_message)
    signed_in = Step(
        "Azure sign-in", OK, f"{session.username or 'admin'} in tenant {session.tenant_id}"
    )
    on_step(signed_in)

    async def go() -> tuple[dict[str, Any], Step]:
        async with graph_client_for(profile, session.provider) as graph:
            apps = await find_application(graph, app_id=profile.client_id, name="")
            if not apps:
                raise ConfigError(
                    f"no app registration with client id {profile.client_id} in this tenant",
                    hint="check client_id in the profile (`presencectl config show`)",
                    code="app_not_found",
                )
            if profile.app_credential == "certificate":
                from presencectl.identity.app_credentials import rotate_certificate

                detail = await rotate_certificate(graph, profile, apps[0])
                step = Step("App certificate", CREATED, detail)
                on_step(step)
            elif profile.app_credential == "federated":
                raise UsageError(
                    "a federated credential has nothing to rotate here: the platform rotates "
                    "its tokens",
                    hint="to trust another issuer or subject, run `presencectl setup-azure "
                    "--credential federated --federated-issuer URL --federated-subject S`",
                )
            else:
                step = await ensure_client_secret(
                    graph, profile, apps[0], on_step=on_step, force=True
                )
            return apps[0], step

    app, step = asyncio.run(go())
    save_profile(profile)
    return SetupReport(
        tenant_id=profile.tenant_id or "",
        client_id=profile.client_id or "",
        app_name=str(app.get("displayName") or ""),
        admin=session.username,
        connect_account_email=profile.connect_account_email or "",
        changed=True,
        steps=[signed_in, step],
    )


def consent(
    profile: Profile,
    *,
    method: str,
    use_url: bool,
    on_message: Callable[[Any], None],
    on_step: StepCallback,
    on_consent_url: ConsentUrlCallback,
    timeout: float = 600.0,
) -> Step:
    """``presencectl consent``: the admin signs in and (re-)grants the presence permissions."""
    import asyncio

    from presencectl.identity.tokens import admin_sign_in

    if not profile.client_id:
        raise ConfigError(
            "the profile has no client_id",
            hint="run `presencectl setup-azure` first",
            code="config_missing",
        )
    session = admin_sign_in(profile, method, on_message=on_message)
    return asyncio.run(
        run_consent(
            profile,
            session,
            use_url=use_url,
            on_step=on_step,
            on_consent_url=on_consent_url,
            timeout=timeout,
        )
    )
