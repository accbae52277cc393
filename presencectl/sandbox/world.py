"""The sandbox's shared in-memory state: clock, people, directory objects, tokens, stats, faults.

Owns the one ``World`` every sandbox route reads and writes (Entra, Graph, Connect, control API,
SignalR). All lookups are dict-based (O(1)) so a world of 50,000 people stays fast. The world runs
inside the server's event loop; tests may read it from their own thread. Who a person is
(``Person``, the domain, the admin and sync accounts) lives in ``people.py``; ``org.py`` builds
the people.

Presence state lives on each ``Person`` (``person.teams`` / ``person.connect``) and is created on
first access from the presence modules (``TeamsPresenceState()`` / ``ConnectPresenceState()``,
no arguments; time is passed to their methods as ``now``), so building a large world stays cheap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from presencectl.sandbox import org
from presencectl.sandbox.microsoft_ids import GRAPH_APP_ID, GRAPH_APP_ROLE_IDS, GRAPH_SCOPE_IDS
from presencectl.sandbox.people import ADMIN_EMAIL, DOMAIN, SYNC_EMAIL, Person

log = logging.getLogger(__name__)

BOOTSTRAP_CLIENT_ID = "14d82eec-204b-4c2f-b7e8-296a70dab67e"  # Microsoft Graph Command Line Tools
DEFAULT_TOKEN_LIFETIME = 3600
DEVICE_CODE_LIFETIME = 900
REFRESH_TOKEN_LIFETIME = 90 * 24 * 3600

# Every Graph permission the sandbox's Graph service principal exposes: Microsoft's published ids
# from the sandbox's own table (microsoft_ids.py), never the client's.
GRAPH_APP_ROLES: dict[str, str] = dict(GRAPH_APP_ROLE_IDS)
GRAPH_SCOPES: dict[str, str] = {name: sid for name, (sid, _) in GRAPH_SCOPE_IDS.items()}
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})


# --------------------------------------------------------------------------- clock, stats, faults


class Clock:
    """Real time plus an offset that tests move forward (token lifetime, session expiry, fade)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> float:
        self.offset += float(seconds)
        return self.now()


@dataclass
class Stats:
    """Request counters by endpoint name, and the throttling / write counters."""

    requests: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    in_retry_after_window: int = 0
    writes: int = 0
    writes_by: Counter[tuple[str, str]] = field(default_factory=Counter)  # (side, user id)
    faults_injected: int = 0
    in_flight: int = 0  # HTTP requests to the services being served now (not the control API)
    # token requests of confidential clients, by how they proved themselves (client_assertions.py)
    token_requests_by_client_auth: Counter[str] = field(default_factory=Counter)

    def count(self, endpoint: str, n: int = 1) -> None:
        self.requests[endpoint] += n

    def wrote(self, side: str, user_id: str | None) -> None:
        """One presence write applied (or, delayed, accepted) for ``user_id`` on ``side``."""
        self.writes += 1
        self.writes_by[(side, user_id or "")] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(sorted(self.requests.items())),
            "total_requests": sum(self.requests.values()),
            "throttled": self.throttled,
            "in_retry_after_window": self.in_retry_after_window,
            "writes": self.writes,
            "writes_by_user": {f"{s}:{u}": n for (s, u), n in sorted(self.writes_by.items())},
            "faults_injected": self.faults_injected,
            "in_flight": self.in_flight,
            "token_requests_by_client_auth": {
                kind: self.token_requests_by_client_auth[kind]
                for kind in ("secret", "certificate", "federated")
            },
        }


@dataclass
class Faults:
    """Fault injection (POST /_sandbox/faults) and the presence throttle.

    Every key is declared here, typed, and off by default; the modules that serve a behaviour
    read the key they own. Keys that model what no public source settles (the Connect rows)
    let a test run the client against each plausible answer.
    """

    # transport-level faults and the Graph presence throttle
    error_rate: float = 0.0
    throttle_per_30s: int = 1500
    throttle_window: float = 30.0
    latency_ms: int = 0
    drop_rate: float = 0.0
    outage_s: float = 0.0  # every request refused for that many seconds from when it is set
    outage_target: str = "all"  # whose requests outage_s refuses: all, connect or microsoft
    # Entra ID / Graph behaviours
    replication_lag_s: float = 0.0
    batch_envelope_status: int = 0
    # Connect unknowns
    feed_user_field: str = "userId"  # any name; "a.b" nests the id under an object
    feed_event_id: bool = False  # events carry their own "id" (an event id)
    feed_event_scope: str = "user"  # user: the aggregate; session: the changed session's state
    # Sticky hub sessions: on by default (the public monitor replays the negotiate cookies to
    # reach the hub: ips_extend_monitoring commit e979fef)
    hub_affinity_cookie: bool = True
    connect_write_delay_s: float = 0.0
    connect_aggregation: str = "rank"
    connect_lenient_values: bool = False
    connect_throttle_per_min: int = 0
    connect_subscription_max_ttl_s: float = 0.0  # 0: up to a day; longer asked → 400
    connect_fields_param: str = "accept"  # reject: any `fields` → 400 (full contacts without)
    connect_contact_types: str = "user"  # the `type` people have ("" → no type at all)
    # Graph change notifications
    notify_drop_rate: float = 0.0
    notify_delay_s: float = 0.0
    lifecycle_reauthorize: bool = False
    # validationTokens of rich notifications: signed by the sandbox's key (valid), by another
    # key under the same kid (invalid), or left out (missing)
    notify_validation_tokens: str = "valid"

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "feed_event_scope": ("user", "session"),
        "connect_fields_param": ("accept", "reject"),
        "notify_validation_tokens": ("valid", "invalid", "missing"),
        "connect_aggregation": ("rank", "last_writer"),
        "outage_target": ("all", "connect", "microsoft"),
    }

    NON_EMPTY: ClassVar[frozenset[str]] = frozenset({"feed_user_field"})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def update(self, values: dict[str, Any]) -> None:
        """Apply ``values`` all or nothing; a bad key or value raises ValueError naming it."""
        known = {f.name: f for f in fields(self)}
        staged: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"unknown fault key {key!r}; known: {', '.join(sorted(known))}")
            if value is None:
                continue
            kind = type(getattr(self, key))
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"{key!r} must be true or false")
                staged[key] = value
            elif kind is str:
                if key in self.NON_EMPTY and (not isinstance(value, str) or not value.strip()):
                    raise ValueError(f"{key!r} must be a non-empty name")
                if not isinstance(value, str) or value not in self.CHOICES.get(key, (value,)):
                    choices = ", ".join(self.CHOICES.get(key, ()))
                    raise ValueError(f"{key!r} must be one of: {choices}")
                staged[key] = value
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"{key!r} must be a number >= 0")
                staged[key] = kind(value)
        for key, value in staged.items():
            setattr(self, key, value)


Listener = Callable[[str, dict[str, Any]], "Awaitable[None] | None"]


class Events:
    """A tiny pub/sub: presence modules publish, the SignalR hub (or a test) listens."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                result = listener(kind, payload)
                if result is not None:
                    await result
            except Exception:
                log.exception("sandbox event listener failed for %s", kind)


# --------------------------------------------------------------------------- tokens


@dataclass
class Claims:
    """What a sandbox access token says."""

    tid: str
    oid: str | None
    appid: str
    upn: str | None
    roles: set[str]
    scp: set[str]
    exp: float
    kind: str  # "app" | "delegated" | "connect"
    aud: str = "https://graph.microsoft.com"
    iat: float = 0.0
    jti: str = ""

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "aud": self.aud,
            "iss": f"https://sts.windows.net/{self.tid}/",
            "iat": int(self.iat),
            "nbf": int(self.iat),
            "exp": int(self.exp),
            "tid": self.tid,
            "appid": self.appid,
            "azp": self.appid,
            "idtyp": "app" if self.kind == "app" else "user",
            "uti": self.jti,
            "ver": "1.0",
            "sbx_kind": self.kind,
        }
        if self.oid:
            payload["oid"] = self.oid
            payload["sub"] = self.oid
        if self.upn:
            payload["upn"] = self.upn
            payload["unique_name"] = self.upn
        if self.roles:
            payload["roles"] = sorted(self.roles)
        if self.scp:
            payload["scp"] = " ".join(sorted(self.scp))
        return payload


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class RefreshGrant:
    client_id: str
    oid: str
    scopes: set[str]
    resource: str
    exp: float
    # Set when the control API revokes the user's sessions: the AADSTS code a redemption gets
    # (50173 grant revoked, 70043 sign-in frequency).
    revoked: int = 0


@dataclass
class DeviceCode:
    device_code: str
    user_code: str
    client_id: str
    scopes: list[str]
    expires_at: float
    interval: int = 5
    approved_by: str | None = None  # email
    denied: bool = False
    redeemed: bool = False


# --------------------------------------------------------------------------- the world


class World:
    """The whole simulated tenant: people, directory objects, tokens, clock, stats, faults."""

    def __init__(
        self,
        *,
        users: int = 25,
        seed: int = 1,
        throttle: int = 1500,
        throttle_window: float = 30.0,
        fault_rate: float = 0.0,
        auto_approve: str | Iterable[str] | None = None,
        token_lifetime: int = DEFAULT_TOKEN_LIFETIME,
        tenant_id: str | None = None,
    ) -> None:
        self.seed = seed
        self.clock = Clock()
        self.stats = Stats()
        self.faults = Faults(
            error_rate=fault_rate, throttle_per_30s=throttle, throttle_window=throttle_window
        )
        self.events = Events()
        # Accounts whose sign-ins are approved at once (device code and browser); the first is
        # also who signs in where a browser would without any hint.
        self.auto_approve_all: tuple[str, ...] = (
            (auto_approve,) if isinstance(auto_approve, str) else tuple(auto_approve or ())
        )
        self.auto_approve = self.auto_approve_all[0] if self.auto_approve_all else None
        self._device_approvals: dict[tuple[str, str], int] = {}
        self.token_lifetime = token_lifetime
        self.domain = DOMAIN
        self.base_url = ""  # set by the server once the port is known
        self.ca_bundle = ""
        self.signing_key = secrets.token_bytes(32)

        built = org.build(users=users, seed=seed)
        # The seed's tenant id, unless the caller wants a world no earlier sign-in can match
        # (`sandbox serve` makes a new one on each new world, see sandbox/persist.py).
        self.tenant_id: str = tenant_id or built.tenant_id
        self.connect_client_id: str = built.connect_client_id
        self.connect_client_secret: str = built.connect_client_secret
        self.client_auth: Any = None  # sandbox/client_assertions.py client_auth_of(world) fills it
        self.people: list[Person] = []
        self._by_azure_id: dict[str, Person] = {}
        self._by_connect_id: dict[str, Person] = {}
        self._by_mail: dict[str, list[Person]] = {}
        self._by_upn: dict[str, Person] = {}
        self._by_proxy: dict[str, list[Person]] = {}
        self._by_connect_email: dict[str, Person] = {}
        for person in built.people:
            self.add_person(person)

        # Directory objects (Graph JSON dicts by object id) and their indexes.
        self.applications: dict[str, dict[str, Any]] = {}
        self.service_principals: dict[str, dict[str, Any]] = {}
        self.app_role_assignments: dict[str, dict[str, Any]] = {}
        self.permission_grants: dict[str, dict[str, Any]] = {}
        self._app_by_app_id: dict[str, str] = {}
        self._sp_by_app_id: dict[str, str] = {}
        self.app_secrets: dict[str, list[str]] = {}  # appId -> secret texts
        self.token_signing_key: Any = None  # sandbox/validation_tokens.py makes it on first use
        # secret text -> sandbox clock time it was added (``replication_lag_s`` applies to it)
        self.secret_added_at: dict[str, float] = {}
        self._install_microsoft_service_principals()

        self.refresh_tokens: dict[str, RefreshGrant] = {}
        self.device_codes: dict[str, DeviceCode] = {}
        self._device_by_user_code: dict[str, DeviceCode] = {}
        # Per-client state for throttling (S1b), keyed as it likes.
        self.throttle_state: dict[Any, Any] = {}
        # Anything the other sandbox modules need to keep (subscriptions, …).
        self.extra: dict[str, Any] = {}

    # ------------------------------------------------------------------ people
    def replace_people(self, people: Iterable[Person]) -> None:
        """Every person replaced (a stored world loaded back, ``sandbox/persist.py``)."""
        self.people = []
        for index in (
            self._by_azure_id, self._by_connect_id, self._by_mail, self._by_upn,
            self._by_proxy, self._by_connect_email,
        ):  # fmt: skip
            index.clear()
        for person in people:
            self.add_person(person)

    def add_person(self, person: Person) -> Person:
        self.people.append(person)
        self.index_person(person)
        return person

    def remove_person(self, person: Person) -> None:
        """Take a person out of the organisation (a deleted Azure user), indexes rebuilt."""
        self.people = [p for p in self.people if p is not person]
        for index in (self._by_azure_id, self._by_upn, self._by_connect_id):
            for key in [k for k, v in index.items() if v is person]:
                del index[key]
        for lists in (self._by_mail, self._by_proxy):
            for key in list(lists):
                lists[key] = [p for p in lists[key] if p is not person]
                if not lists[key]:
                    del lists[key]
        for key in [k for k, v in self._by_connect_email.items() if v is person]:
            del self._by_connect_email[key]

    def index_person(self, person: Person) -> None:
        if person.azure_id:
            self._by_azure_id[person.azure_id] = person
            if person.mail:
                self._by_mail.setdefault(person.mail.lower(), []).append(person)
            if person.upn:
                self._by_upn[person.upn.lower()] = person
            for address in person.proxy_addresses:
                kind, _, value = address.partition(":")
                if kind.lower() == "smtp" and value:
                    self._by_proxy.setdefault(value.lower(), []).append(person)
        if person.connect_id:
            self._by_connect_id[person.connect_id] = person
            if person.connect_email:
                self._by_connect_email[person.connect_email.lower()] = person

    def person_by_azure_id(self, azure_id: str) -> Person | None:
        return self._by_azure_id.get(azure_id)

    def person_by_connect_id(self, connect_id: str) -> Person | None:
        return self._by_connect_id.get(connect_id)

    def azure_people_by_mail(self, email: str) -> list[Person]:
        return list(self._by_mail.get(email.lower(), ()))

    def azure_person_by_upn(self, upn: str) -> Person | None:
        return self._by_upn.get(upn.lower())

    def azure_people_by_proxy(self, email: str) -> list[Person]:
        return list(self._by_proxy.get(email.lower(), ()))

    def azure_people_by_address(self, email: str) -> list[Person]:
        """Every Azure user holding ``email`` as mail, UPN or SMTP proxy address (conflicts > 1)."""
        key = email.lower()
        found: list[Person] = []
        for candidate in (
            *self._by_mail.get(key, ()),
            self._by_upn.get(key),
            *self._by_proxy.get(key, ()),
        ):
            if candidate is not None and candidate not in found:
                found.append(candidate)
        return found

    def connect_person_by_email(self, email: str) -> Person | None:
        return self._by_connect_email.get(email.lower())

    def person_by_email(self, email: str) -> Person | None:
        """Case-insensitive: UPN, then mail, then SMTP proxy address, then Connect email."""
        key = email.lower()
        person = self._by_upn.get(key)
        if person is not None:
            return person
        mails = self._by_mail.get(key)
        if mails:
            return mails[0]
        proxies = self._by_proxy.get(key)
        if proxies:
            return proxies[0]
        return self._by_connect_email.get(key)

    @property
    def admin(self) -> Person:
        person = self.azure_person_by_upn(ADMIN_EMAIL)
        assert person is not None
        return person

    @property
    def sync_user(self) -> Person:
        person = self.azure_person_by_upn(SYNC_EMAIL)
        assert person is not None
        return person

    def new_id(self) -> str:
        return str(uuid.uuid4())

    # ------------------------------------------------------------------ directory objects
    def _install_microsoft_service_principals(self) -> None:
        graph_sp: dict[str, Any] = {
            "id": self.new_id(),
            "appId": GRAPH_APP_ID,
            "displayName": "Microsoft Graph",
            "servicePrincipalType": "Application",
            "appOwnerOrganizationId": "f8cdef31-a31e-4b4a-93e4-5f571e91255a",
            "servicePrincipalNames": [GRAPH_APP_ID, "https://graph.microsoft.com"],
            "appRoles": [
                {
                    "id": role_id,
                    "value": name,
                    "displayName": name,
                    "description": name,
                    "allowedMemberTypes": ["Application"],
                    "isEnabled": True,
                    "origin": "Application",
                }
                for name, role_id in GRAPH_APP_ROLES.items()
            ],
            "oauth2PermissionScopes": [
                {
                    "id": scope_id,
                    "value": name,
                    "type": GRAPH_SCOPE_IDS[name][1],
                    "adminConsentDisplayName": name,
                    "adminConsentDescription": name,
                    "isEnabled": True,
                }
                for name, scope_id in GRAPH_SCOPES.items()
            ],
        }
        self.add_service_principal(graph_sp)
        self.graph_sp_id = graph_sp["id"]
        bootstrap = {
            "id": self.new_id(),
            "appId": BOOTSTRAP_CLIENT_ID,
            "displayName": "Microsoft Graph Command Line Tools",
            "servicePrincipalType": "Application",
            "appOwnerOrganizationId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "servicePrincipalNames": [BOOTSTRAP_CLIENT_ID],
            "appRoles": [],
            "oauth2PermissionScopes": [],
        }
        self.add_service_principal(bootstrap)

    def add_application(self, app: dict[str, Any]) -> dict[str, Any]:
        self.applications[app["id"]] = app
        self._app_by_app_id[app["appId"]] = app["id"]
        return app

    def application_by_app_id(self, app_id: str) -> dict[str, Any] | None:
        object_id = self._app_by_app_id.get(app_id)
        return self.applications.get(object_id) if object_id else None

    def add_service_principal(self, sp: dict[str, Any]) -> dict[str, Any]:
        self.service_principals[sp["id"]] = sp
        self._sp_by_app_id[sp["appId"]] = sp["id"]
        return sp

    def service_principal_by_app_id(self, app_id: str) -> dict[str, Any] | None:
        object_id = self._sp_by_app_id.get(app_id)
        return self.service_principals.get(object_id) if object_id else None

    @property
    def graph_service_principal(self) -> dict[str, Any]:
        return self.service_principals[self.graph_sp_id]

    def app_roles_of(self, app_id: str, resource_sp_id: str | None = None) -> set[str]:
        """Names of the app roles granted (appRoleAssignedTo) to the app's service principal."""
        sp = self.service_principal_by_app_id(app_id)
        if sp is None:
            return set()
        resource_sp_id = resource_sp_id or self.graph_sp_id
        resource = self.service_principals.get(resource_sp_id, {})
        by_id = {r["id"]: r["value"] for r in resource.get("appRoles", [])}
        return {
            by_id[a["appRoleId"]]
            for a in self.app_role_assignments.values()
            if a["principalId"] == sp["id"]
            and a["resourceId"] == resource_sp_id
            and a["appRoleId"] in by_id
        }

    def delegated_scopes_of(self, app_id: str, user_oid: str | None = None) -> set[str]:
        """Scopes granted to the client on Graph by oauth2PermissionGrants (AllPrincipals or the
        user)."""
        sp = self.service_principal_by_app_id(app_id)
        if sp is None:
            return set()
        granted: set[str] = set()
        for grant in self.permission_grants.values():
            if grant["clientId"] != sp["id"] or grant["resourceId"] != self.graph_sp_id:
                continue
            if grant["consentType"] == "AllPrincipals" or grant.get("principalId") == user_oid:
                granted.update(s for s in (grant.get("scope") or "").split() if s)
        return granted

    def client_secret_ok(self, app_id: str, secret: str) -> bool:
        return any(hmac.compare_digest(secret, s) for s in self.app_secrets.get(app_id, []))

    def secret_replicating(self, secret: str) -> bool:
        """True while a secret added moments ago is not yet known everywhere."""
        added = self.secret_added_at.get(secret)
        lag = self.faults.replication_lag_s
        return added is not None and lag > 0 and self.clock.now() < added + lag

    # ------------------------------------------------------------------ tokens
    def issue_token(
        self,
        *,
        kind: str,
        appid: str,
        oid: str | None = None,
        upn: str | None = None,
        roles: Iterable[str] = (),
        scp: Iterable[str] = (),
        aud: str = "https://graph.microsoft.com",
        lifetime: float | None = None,
    ) -> tuple[str, Claims]:
        """A signed JWT-shaped access token and its claims. Lifetime from the world's clock."""
        now = self.clock.now()
        claims = Claims(
            tid=self.tenant_id,
            oid=oid,
            appid=appid,
            upn=upn,
            roles=set(roles),
            scp=set(scp),
            exp=now + (self.token_lifetime if lifetime is None else lifetime),
            kind=kind,
            aud=aud,
            iat=now,
            jti=secrets.token_urlsafe(16),
        )
        return self.encode_jwt(claims.to_payload()), claims

    def encode_jwt(self, payload: dict[str, Any]) -> str:
        header = b64url_json({"typ": "JWT", "alg": "HS256", "kid": "sandbox"})
        body = b64url_json(payload)
        signature = hmac.new(
            self.signing_key, f"{header}.{body}".encode("ascii"), hashlib.sha256
        ).digest()
        return f"{header}.{body}.{b64url(signature)}"

    def decode_jwt(self, token: str) -> dict[str, Any] | None:
        """The payload of a token this world signed, else None."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        expected = hmac.new(
            self.signing_key, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256
        ).digest()
        try:
            if not hmac.compare_digest(b64url_decode(parts[2]), expected):
                return None
            payload = json.loads(b64url_decode(parts[1]))
        except (ValueError, UnicodeDecodeError):
            return None
        return payload if isinstance(payload, dict) else None

    def verify_bearer(
        self, authorization: str | None, *, check_expiry: bool = True
    ) -> Claims | None:
        """Claims of ``Bearer <token>`` if this world issued it (and, by default, it is
        unexpired)."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        payload = self.decode_jwt(token.strip())
        if payload is None:
            return None
        claims = Claims(
            tid=payload.get("tid", ""),
            oid=payload.get("oid"),
            appid=payload.get("appid", ""),
            upn=payload.get("upn"),
            roles=set(payload.get("roles", [])),
            scp=set(str(payload.get("scp", "")).split()),
            exp=float(payload.get("exp", 0)),
            kind=payload.get("sbx_kind", "delegated"),
            aud=payload.get("aud", ""),
            iat=float(payload.get("iat", 0)),
            jti=payload.get("uti", ""),
        )
        if check_expiry and claims.exp <= self.clock.now():
            return None
        return claims

    def new_refresh_token(
        self, client_id: str, oid: str, scopes: Iterable[str], resource: str
    ) -> str:
        token = "sbxrt." + secrets.token_urlsafe(48)
        self.refresh_tokens[token] = RefreshGrant(
            client_id, oid, set(scopes), resource, self.clock.now() + REFRESH_TOKEN_LIFETIME
        )
        return token

    # ------------------------------------------------------------------ device codes
    def new_device_code(self, client_id: str, scopes: list[str]) -> DeviceCode:
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        while True:
            user_code = "".join(secrets.choice(alphabet) for _ in range(9))
            if user_code not in self._device_by_user_code:
                break
        code = DeviceCode(
            device_code="sbxdc." + secrets.token_urlsafe(32),
            user_code=user_code,
            client_id=client_id,
            scopes=scopes,
            expires_at=self.clock.now() + DEVICE_CODE_LIFETIME,
        )
        approver = self.device_code_approver(client_id)
        if approver:
            code.approved_by = approver
        self.device_codes[code.device_code] = code
        self._device_by_user_code[user_code] = code
        return code

    def device_code_approver(self, client_id: str) -> str | None:
        """Which ``--auto-approve`` account approves a new device code of ``client_id``.

        A device code names no account (the person picks one on the sign-in page), so with
        several accounts the sandbox plays the one whose sign-in is due: for an admin tool (a
        client that is not an app registration here) the first Global Administrator listed; for
        an app registration (a sync user signing in) the first listed account that is not a
        Global Administrator and holds no live refresh token of this client (its sign-in is due:
        never made, revoked or expired); when all hold one, the one that approved a code of this
        client longest ago."""
        from presencectl.sandbox.people import GLOBAL_ADMIN

        listed = [p for e in self.auto_approve_all if (p := self.person_by_email(e)) is not None]
        if len(self.auto_approve_all) <= 1 or not listed:
            return self.auto_approve
        admins = [p for p in listed if GLOBAL_ADMIN in p.roles]
        if self.application_by_app_id(client_id) is None:
            return (admins or listed)[0].email
        others = [p for p in listed if GLOBAL_ADMIN not in p.roles] or listed
        now = self.clock.now()
        signed_in = {
            g.oid
            for g in self.refresh_tokens.values()
            if g.client_id == client_id and not g.revoked and g.exp > now
        }
        due = [p for p in others if p.azure_id not in signed_in]
        chosen = (
            due[0]
            if due
            else min(
                others, key=lambda p: self._device_approvals.get((client_id, p.email.lower()), -1)
            )
        )
        self._device_approvals[(client_id, chosen.email.lower())] = len(self.device_codes) + 1
        return chosen.email

    def revoke_sessions(self, oid: str, code: int) -> int:
        """Every refresh token of the user refused from now on with ``code``; how many."""
        grants = [g for g in self.refresh_tokens.values() if g.oid == oid and not g.revoked]
        for grant in grants:
            grant.revoked = code
        return len(grants)

    def device_code_by_user_code(self, user_code: str) -> DeviceCode | None:
        return self._device_by_user_code.get(user_code.strip().upper().replace("-", ""))
