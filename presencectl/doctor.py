"""``presencectl doctor``: every prerequisite of a sync checked, each with a one-line remedy.

Owns the checks and their order, and the rule that turns them into an exit code. Each check
returns a :class:`Check` (``ok`` / ``warn`` / ``fail`` / ``skip``); a failing check never stops
the others: presencectl errors become the check's result (message → detail, hint → remedy, the
error's exit code → the check's), and so do unexpected exceptions (with their type name). A check
whose service was found unreachable is skipped rather than retried for a minute.

The checks use the packages that own each thing and never re-implement them: config and secrets,
the identity token providers and their error classification, the Graph client, the Connect
adapter, and the sync's matching. Diagnostics are quick: Graph and Connect retry at most once.
Nothing here prints; the CLI renders the :class:`DoctorReport`. Nothing here changes the tenant,
the Connect account or the profile (msal's token caches are refreshed, as any sign-in does).

Exit code: every check ok/warn/skip → 0; otherwise the exit code of the first failing check in
the order below (earlier checks are the root causes of later ones): 3 configuration or a
prerequisite, 4 sign-in/consent, 1 network or anything else.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from presencectl.errors import ExitCode, NetworkError, PresencectlError

if TYPE_CHECKING:
    from presencectl.config import Profile
    from presencectl.connect.directory import ConnectContact
    from presencectl.graph.client import GraphClient
    from presencectl.identity.tokens import AppTokenProvider

log = logging.getLogger(__name__)

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
INFO = "info"  # a step only the admin can confirm (in Control Panel): never a failure
STATUSES = (OK, WARN, FAIL, SKIP, INFO)
_SEVERITY = {SKIP: 0, INFO: 0, OK: 1, WARN: 2, FAIL: 3}

SECRET_WARN_DAYS = 30
SKEW_WARN_S = 60.0
SKEW_FAIL_S = 300.0
REACH_TIMEOUT_S = 10.0
TEAMS_TO_CONNECT = ("both", "teams-to-connect")
PORTAL_SECRETS = (
    "Entra admin center > App registrations > the presencectl app > Certificates & secrets"
)

# The codes only doctor reports (every other code is an error's; docs/troubleshooting.md lists all).
DOCTOR_CODES = (
    "keyring_file_fallback",
    "clock_skew",
    "client_secret_expiring",
    "client_secret_expired",
    "client_secret_expiry_unknown",
    "admin_email_unknown",
    "admin_not_in_connect",
    "confirm_in_control_panel",
    "matching_conflicts",
    "matching_unmatched",
    "matching_none",
)

# Check names (stable: monitoring keys on them).
CONFIG = "Config"
KEYRING = "Keyring"
REACH_ENTRA = "Reach Entra ID"
REACH_GRAPH = "Reach Graph"
REACH_CONNECT_LOGIN = "Reach Connect sign-in"
REACH_CONNECT_API = "Reach Connect API"
CLOCK = "Clock skew"
APP = "Azure app"
SECRET_EXPIRY = "Client secret expiry"
CONSENT = "Consent"
SYNC_USER = "Sync user"
CONNECT_TOKEN = "Connect token"
ACCOUNT_CONTACT = "Account contact"
SECURITY_MANAGER_STEP = "Security Manager"
MATCHING = "Matching"
STATE = "State database"
NOTIFICATIONS = "Teams notifications"


@dataclass
class Check:
    """One line of the report. ``exit_code`` is what a failure of this check exits with."""

    name: str
    status: str
    detail: str
    remedy: str = ""
    code: str = ""
    exit_code: int = 0


@dataclass
class DoctorReport:
    profile: str
    checks: list[Check] = field(default_factory=list)

    @property
    def worst(self) -> str:
        """``fail`` > ``warn`` > ``ok``; a report of skips (and infos) only is ``ok``."""
        worst = max((c.status for c in self.checks), key=_SEVERITY.__getitem__, default=OK)
        return OK if worst in (SKIP, INFO) else worst

    @property
    def exit_code(self) -> int:
        failed = [c for c in self.checks if c.status == FAIL]
        return failed[0].exit_code if failed else int(ExitCode.OK)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "checks": [
                {
                    "name": c.name,
                    "status": c.status,
                    "detail": c.detail,
                    "remedy": c.remedy,
                    "code": c.code,
                }
                for c in self.checks
            ],
            "worst": self.worst,
            "exit_code": self.exit_code,
        }


def ok(name: str, detail: str) -> Check:
    return Check(name, OK, detail)


def warn(name: str, detail: str, remedy: str, code: str = "") -> Check:
    return Check(name, WARN, detail, remedy, code)


def fail(name: str, detail: str, remedy: str, code: str, exit_code: int) -> Check:
    return Check(name, FAIL, detail, remedy, code, int(exit_code))


def skip(name: str, detail: str) -> Check:
    return Check(name, SKIP, detail)


def _app_credential_check(profile: Any) -> Check:
    """A certificate (expiry within 30 days: a warning) or a federated token file, in place of
    the client secret's row (identity/app_credentials.py)."""
    from presencectl.identity.app_credentials import certificate_health

    state, detail = certificate_health(profile)
    again = f"run `presencectl setup-azure --credential {profile.app_credential}`"
    if state == "ok":
        return ok(SECRET_EXPIRY, f"{detail} (no client secret)")
    if state == "warn":
        return warn(SECRET_EXPIRY, detail, f"{again} for a new one", "app_certificate_expiring")
    return fail(SECRET_EXPIRY, detail, again, "app_credential_invalid", ExitCode.AUTH)


def info(name: str, detail: str, remedy: str, code: str = "") -> Check:
    return Check(name, INFO, detail, remedy, code)


def network_remedy(text: str) -> str:
    """The proxy / CA hint for a transport failure's text."""
    upper = text.upper()
    if "CERTIFICATE" in upper or "SSL" in upper or "TLS" in upper:
        return (
            "TLS verification failed: set the profile's ca_bundle to the CA of your "
            "TLS-inspecting proxy (or the sandbox's ca.pem)"
        )
    if "PROXY" in upper:
        return "the proxy refused the connection: check the profile's proxy key and HTTPS_PROXY"
    return (
        "check the network, the profile's proxy key (or HTTPS_PROXY / NO_PROXY), the firewall, "
        "and the URL in the profile"
    )


def from_error(name: str, exc: BaseException) -> Check:
    """The failed check for an exception a check let through."""
    if isinstance(exc, PresencectlError):
        remedy = exc.hint
        if isinstance(exc, NetworkError):
            remedy = network_remedy(exc.message + " " + exc.hint)
        return fail(name, exc.message, remedy, exc.code, exc.exit_code)
    from presencectl.transport import redact

    return fail(
        name,
        redact(f"unexpected {type(exc).__name__}: {exc}"),
        "run again with -vv for details, and report it if it persists",
        "unexpected",
        ExitCode.ERROR,
    )


async def guarded(name: str, check: Callable[[], Awaitable[Check]]) -> Check:
    """Run one check; any exception becomes its failed result, never the end of the run."""
    try:
        return await check()
    except Exception as exc:  # the point of doctor: one broken thing must not hide the rest
        log.debug("check %s raised %s", name, type(exc).__name__, exc_info=True)
        return from_error(name, exc)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _expiry_check(end: datetime, now: datetime, source: str) -> Check:
    days = (end - now).total_seconds() / 86400
    when = end.strftime("%Y-%m-%d")
    renew = "run `presencectl setup-azure` again: it adds a new secret and stores it"
    if days < 0:
        return fail(
            SECRET_EXPIRY,
            f"the client secret expired on {when} ({source})",
            renew,
            "client_secret_expired",
            ExitCode.AUTH,
        )
    if days < SECRET_WARN_DAYS:
        return warn(
            SECRET_EXPIRY,
            f"the client secret expires on {when}, in {int(days)} days ({source})",
            renew,
            "client_secret_expiring",
        )
    return ok(SECRET_EXPIRY, f"expires {when}, in {int(days)} days ({source})")


@dataclass
class _ServerDate:
    endpoint: str
    skew_s: float  # server − local


class Doctor:
    """One run of the checks against one profile. Use :func:`run_doctor`."""

    def __init__(
        self,
        profile_name: str | None,
        *,
        now: Callable[[], float] = time.time,
        on_check: Callable[[Check], None] | None = None,
    ) -> None:
        self.profile_name = profile_name
        self.now = now
        self.on_check = on_check
        self.profile: Profile | None = None
        self.report = DoctorReport(profile=profile_name or "")
        self.reachable: dict[str, bool] = {}
        self.dates: list[_ServerDate] = []
        self.app_provider: AppTokenProvider | None = None
        self.contacts: list[ConnectContact] | None = None

    # -- running ---------------------------------------------------------------------------
    def _add(self, check: Check) -> Check:
        self.report.checks.append(check)
        if self.on_check is not None:
            self.on_check(check)
        return check

    async def _run(self, name: str, check: Callable[[], Awaitable[Check]]) -> Check:
        return self._add(await guarded(name, check))

    async def run(self) -> DoctorReport:
        config = await self._run(CONFIG, self.check_config)
        await self._run(KEYRING, self.check_keyring)
        await self._run(STATE, self.check_state)
        if config.status == FAIL or self.profile is None:
            for name in ("Secrets", "Reachability", APP, SYNC_USER, CONNECT_TOKEN, MATCHING):
                self._add(skip(name, "skipped: no valid profile"))
            return self.report
        for check in await self.secret_checks():
            self._add(check)
        reach = await asyncio.gather(*(guarded(n, c) for n, c in self.reach_checks()))
        for check in reach:
            self.reachable[check.name] = check.status != FAIL
            self._add(check)
        await self._run(CLOCK, self.check_clock)
        await self._run(APP, self.check_app)
        await self._run(SECRET_EXPIRY, self.check_secret_expiry)
        await self._run(CONSENT, self.check_consent)
        for check in await self.sync_user_checks():
            self._add(check)
        await self._run(CONNECT_TOKEN, self.check_connect_token)
        await self._run(ACCOUNT_CONTACT, self.check_account_contact)
        await self._run(SECURITY_MANAGER_STEP, self.check_security_manager)
        await self._run(MATCHING, self.check_matching)
        await self._run(NOTIFICATIONS, self.check_notifications)
        return self.report

    # -- config, keyring, secrets ----------------------------------------------------------
    async def check_config(self) -> Check:
        from presencectl.config import config_path, load_profile, profile_name

        name = profile_name(self.profile_name)
        self.report.profile = name
        path = config_path()
        if not path.exists():
            return fail(
                CONFIG,
                f"no config file at {path}",
                "run `presencectl setup-azure` (or `presencectl sandbox serve --write-profile "
                "NAME`), or set PRESENCECTL_CONFIG_DIR",
                "config_missing",
                ExitCode.CONFIG,
            )
        self.profile = load_profile(name)
        return ok(CONFIG, f"profile '{name}' in {path}")

    def _sync_user_relevant(self) -> bool:
        from presencectl.identity.tokens import SYNC_USERNAME_ENV

        assert self.profile is not None
        return bool(
            self.profile.enabled_direction in TEAMS_TO_CONNECT
            or self.profile.sync_username
            or os.environ.get(SYNC_USERNAME_ENV)
        )

    async def check_keyring(self) -> Check:
        from presencectl import secrets

        if os.environ.get(secrets.BACKEND_ENV) == "file":
            return warn(
                KEYRING,
                f"{secrets.BACKEND_ENV}=file: secrets are kept in {secrets.fallback_path()} "
                "(mode 0600)",
                f"unset {secrets.BACKEND_ENV} to use the OS keyring, or pass secrets by "
                "environment variable",
                "keyring_file_fallback",
            )
        if secrets.using_file_fallback():
            return warn(
                KEYRING,
                f"no usable OS keyring: secrets are kept in {secrets.fallback_path()} (mode 0600)",
                "install a keyring backend (gnome-keyring / KWallet with a D-Bus session, or "
                "`pip install keyrings.alt`), or pass secrets by environment variable",
                "keyring_file_fallback",
            )
        import keyring

        backend = keyring.get_keyring()
        return ok(KEYRING, f"{type(backend).__module__}.{type(backend).__name__}")

    async def check_state(self) -> Check:
        """The profile's state database opens read-only, passes quick_check, is writable."""
        from presencectl.config import profile_name
        from presencectl.sync.state import SCHEMA_VERSION, database_path
        from presencectl.sync.state_health import inspect

        path = database_path(profile_name(self.profile_name))
        problem, remedy = inspect(path, SCHEMA_VERSION)
        if problem is not None:
            return fail(STATE, problem, remedy, "state_unavailable", ExitCode.CONFIG)
        return ok(STATE, str(path) if path.exists() else f"{path} (the first sync creates it)")

    async def secret_checks(self) -> list[Check]:
        from presencectl import secrets

        assert self.profile is not None
        profile = self.profile
        remedies = {
            secrets.CLIENT_SECRET: "run `presencectl setup-azure` (it adds and stores one), or "
            "set PRESENCECTL_CLIENT_SECRET",
            secrets.SYNC_PASSWORD: "run `presencectl sync-user set --username "
            f"{profile.sync_username or '<user>'}`, or set PRESENCECTL_SYNC_PASSWORD",
            secrets.CONNECT_CLIENT_SECRET: "store the Extend API client's secret "
            "(Control Panel > Extend API), or set PRESENCECTL_CONNECT_CLIENT_SECRET",
        }
        codes = {
            secrets.CLIENT_SECRET: "client_secret_missing",
            secrets.SYNC_PASSWORD: "sync_password_missing",
            secrets.CONNECT_CLIENT_SECRET: "connect_secret_missing",
        }
        out: list[Check] = []
        for name in secrets.NAMED_SECRETS:
            title = f"Secret {name}"
            if name == secrets.SYNC_PASSWORD and not self._sync_user_relevant():
                out.append(skip(title, "no sync user configured and Teams→Connect not enabled"))
                continue
            if name == secrets.SYNC_PASSWORD and profile.sync_user_sign_in != "password":
                how = profile.sync_user_sign_in.replace("_", " ")
                out.append(skip(title, f"not needed: the sync user signs in by {how}"))
                continue

            async def check(name: str = name, title: str = title) -> Check:
                source = secrets.secret_source(profile.name, name)
                if source is None:
                    return fail(
                        title, f"{name} is not stored", remedies[name], codes[name], ExitCode.CONFIG
                    )
                where = {
                    "env": f"environment ({secrets.ENV_VARS.get(name, '')})",
                    "keyring": "OS keyring",
                    "file": f"secrets file {secrets.fallback_path()}",
                }[source]
                return ok(title, f"set, from the {where}")

            out.append(await guarded(title, check))
        return out

    # -- reachability and clock ------------------------------------------------------------
    def reach_checks(self) -> list[tuple[str, Callable[[], Awaitable[Check]]]]:
        assert self.profile is not None
        p = self.profile
        tenant = p.tenant_id or "organizations"
        entra = f"{p.authority_url.rstrip('/')}/{tenant}/v2.0/.well-known/openid-configuration"
        targets = [
            (REACH_ENTRA, entra, "authority_url"),
            (REACH_GRAPH, p.graph_url.rstrip("/") + "/", "graph_url"),
            (REACH_CONNECT_LOGIN, p.connect_login_url.rstrip("/") + "/", "connect_login_url"),
            (REACH_CONNECT_API, p.connect_api_url.rstrip("/") + "/", "connect_api_url"),
        ]
        return [(name, partial(self._reach, name, url, key)) for name, url, key in targets]

    async def _reach(self, name: str, url: str, key: str) -> Check:
        import httpx

        from presencectl.transport import build_async_client, redact

        assert self.profile is not None
        settings = replace(self.profile.http_settings(), timeout=REACH_TIMEOUT_S)
        async with build_async_client(settings) as http:
            started = time.monotonic()
            local_before = self.now()
            try:
                response = await http.get(url)
            except httpx.TransportError as exc:
                text = f"{type(exc).__name__}: {redact(str(exc)) or 'no answer'}"
                return fail(
                    name,
                    f"cannot reach {redact(url)} ({key}): {text}",
                    network_remedy(text),
                    "network_error",
                    ExitCode.ERROR,
                )
            elapsed = time.monotonic() - started
            local_mid = (local_before + self.now()) / 2
        date = response.headers.get("date")
        if date:
            try:
                server = email.utils.parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                server = None
            if server is not None:
                self.dates.append(_ServerDate(name, server - local_mid))
        return ok(
            name, f"{redact(url)} answered HTTP {response.status_code} in {elapsed * 1000:.0f} ms"
        )

    async def check_clock(self) -> Check:
        if not self.dates:
            return skip(CLOCK, "no server answered with a Date header")
        worst = max(self.dates, key=lambda d: abs(d.skew_s))
        skew = worst.skew_s
        direction = "behind" if skew > 0 else "ahead of"
        detail = f"this machine's clock is {abs(skew):.0f} s {direction} {worst.endpoint[6:]}"
        remedy = "synchronise the clock (NTP: `timedatectl set-ntp true`, or w32tm /resync)"
        if abs(skew) > SKEW_FAIL_S:
            return fail(
                CLOCK, detail + ": tokens will be refused", remedy, "clock_skew", ExitCode.ERROR
            )
        if abs(skew) > SKEW_WARN_S:
            return warn(CLOCK, detail, remedy, "clock_skew")
        return ok(CLOCK, f"within {max(1.0, abs(skew)):.0f} s of the servers")

    def _unreachable(self, *names: str) -> str | None:
        for name in names:
            if not self.reachable.get(name, True):
                return name
        return None

    # -- Azure -----------------------------------------------------------------------------
    async def check_app(self) -> Check:
        from presencectl.identity.tokens import app_token_provider

        p = self.profile
        assert p is not None
        if not p.tenant_id or not p.client_id:
            missing = "tenant_id" if not p.tenant_id else "client_id"
            return fail(
                APP,
                f"profile '{p.name}' has no {missing} (no app registration yet)",
                "run `presencectl setup-azure`",
                "config_missing",
                ExitCode.CONFIG,
            )
        down = self._unreachable(REACH_ENTRA)
        if down:
            return skip(APP, f"skipped: {down[6:]} is unreachable")
        provider = app_token_provider(p)
        # force_refresh: a token from msal's cache would not prove the secret still works.
        await asyncio.to_thread(provider, True)
        self.app_provider = provider
        return ok(APP, f"app {p.client_id} signed in to tenant {p.tenant_id}")

    def _graph(self) -> GraphClient:
        from presencectl.graph.client import GraphClient, RetryPolicy

        assert self.profile is not None and self.app_provider is not None
        return GraphClient(
            self.profile.graph_url,
            self.app_provider,
            self.profile.http_settings(),
            retry=RetryPolicy(max_attempts=2, backoff_base=0.2, backoff_max=1.0),
        )

    async def check_secret_expiry(self) -> Check:
        from presencectl import secrets
        from presencectl.errors import AuthError
        from presencectl.identity.setup import find_application

        p = self.profile
        assert p is not None
        if p.app_credential != "secret":
            return _app_credential_check(p)
        now = datetime.fromtimestamp(self.now(), UTC)
        from_env = secrets.secret_source(p.name, secrets.CLIENT_SECRET) == "env"
        key_id = str(p.verified.get("client_secret_key_id") or "")
        if self.app_provider is not None and not self._unreachable(REACH_GRAPH):
            try:
                async with self._graph() as graph:
                    apps = await find_application(graph, app_id=p.client_id, name="")
            except AuthError:
                apps = None  # the app's own token may not read app registrations: use the record
            if apps:
                creds = list(apps[0].get("passwordCredentials") or [])
                chosen = next((c for c in creds if str(c.get("keyId")) == key_id), None)
                source = "app registration"
                if chosen is None and creds:
                    chosen = max(creds, key=lambda c: str(c.get("endDateTime") or ""))
                    source = f"the latest of {len(creds)} secrets of the app registration"
                end = _parse_time(chosen.get("endDateTime") if chosen else None)
                if end is not None:
                    return _expiry_check(end, now, source)
        recorded = _parse_time(p.verified.get("client_secret_expires"))
        if recorded is not None:
            source = "recorded by setup-azure"
            if from_env:
                source += "; the secret in PRESENCECTL_CLIENT_SECRET may be another one"
            return _expiry_check(recorded, now, source)
        return warn(
            SECRET_EXPIRY,
            "unknown: the app cannot read its own registration and setup-azure recorded no date",
            f"check it in the portal ({PORTAL_SECRETS})",
            "client_secret_expiry_unknown",
        )

    async def check_consent(self) -> Check:
        """The app's permissions, asked of Graph by using them (never read from its token).

        A read of one user proves User.Read.All; a presence read of that user proves
        Presence.Read.All or Presence.ReadWrite.All. Writing cannot be proved without writing:
        `consent --check` lists the app role assignments for that.
        """
        from presencectl.errors import AuthError
        from presencectl.graph.presence import get_presences

        if self.app_provider is None:
            return skip(CONSENT, "skipped: no app token (see the Azure app check)")
        down = self._unreachable(REACH_GRAPH)
        if down:
            return skip(CONSENT, f"skipped: {down[6:]} is unreachable")

        def missing(permission: str) -> Check:
            return fail(
                CONSENT,
                f"Graph refused the app a call that needs {permission}",
                "run `presencectl consent` as a Global Administrator; "
                "`presencectl consent --check` lists what is granted",
                "consent_missing",
                ExitCode.AUTH,
            )

        async with self._graph() as graph:
            try:
                page = await graph.get_json("/users", params={"$top": "1", "$select": "id"})
            except AuthError:
                return missing("User.Read.All")
            users = [u for u in (page or {}).get("value") or [] if isinstance(u, dict)]
            if users:
                try:
                    await get_presences(graph, [str(users[0].get("id") or "")])
                except AuthError:
                    return missing("Presence.Read.All or Presence.ReadWrite.All")
        return ok(
            CONSENT,
            "Graph lets the app read users and presence "
            "(`presencectl consent --check` lists every grant)",
        )

    async def sync_user_checks(self) -> list[Check]:
        """One row per sync user of the pool ("Sync user" for a pool of one)."""
        from presencectl.identity.sync_pool import pool_members

        p = self.profile
        assert p is not None
        members = pool_members(p) if self._sync_user_relevant() else []
        if len(members) <= 1:
            return [await guarded(SYNC_USER, self.check_sync_user)]
        out = []
        for member in members:
            name = f"{SYNC_USER} {member.username}"

            async def check(username: str = member.username, name: str = name) -> Check:
                return await self.check_sync_user(username, name)

            out.append(await guarded(name, check))
        return out

    async def check_sync_user(self, username: str | None = None, name: str = SYNC_USER) -> Check:
        """The stored credential proven the way a sync needs it: never from an access-token
        cache — a password member signs in with its password (a fresh ROPC), a device-code or
        browser member redeems its refresh token; a refusal fails with its AADSTS code."""
        from presencectl.graph.permissions import DELEGATED_SCOPES
        from presencectl.identity.tokens import SyncUserTokenProvider

        p = self.profile
        assert p is not None
        if not self._sync_user_relevant():
            return skip(name, "no sync user configured and Teams→Connect not enabled")
        down = self._unreachable(REACH_ENTRA)
        if down:
            return skip(name, f"skipped: {down[6:]} is unreachable")
        provider = SyncUserTokenProvider(p, username=username, silent=False)
        await asyncio.to_thread(provider, False)
        # msal's id token claims and the response's scope, never the access token's claims.
        claims = provider.last_result_claims
        scopes = set(provider.last_scopes)
        needed = [s for s in DELEGATED_SCOPES if s.startswith("Presence")]
        missing = [s for s in needed if scopes and s not in scopes]
        if missing:
            return fail(
                name,
                f"{provider.username} signed in, but the token lacks " + ", ".join(missing),
                "run `presencectl consent` as a Global Administrator",
                "consent_missing",
                ExitCode.AUTH,
            )
        who = claims.get("preferred_username") or provider.username
        how = "password" if provider.sign_in == "password" else "refresh token"
        return ok(
            name,
            f"{who} signed in by its {how} (delegated {', '.join(sorted(scopes)) or 'token'})",
        )

    # -- Connect ---------------------------------------------------------------------------
    def _connect(self) -> Any:
        from presencectl.connect import connect_client_for

        assert self.profile is not None
        return connect_client_for(self.profile, max_attempts=2, backoff_base=0.2, backoff_max=1.0)

    async def check_connect_token(self) -> Check:
        assert self.profile is not None
        down = self._unreachable(REACH_CONNECT_LOGIN)
        if down:
            return skip(CONNECT_TOKEN, f"skipped: {down[6:]} is unreachable")
        async with self._connect() as client:
            await client.access_token()
        return ok(CONNECT_TOKEN, f"Extend API client {self.profile.connect_client_id} signed in")

    async def check_account_contact(self) -> Check:
        """The Azure admin is a Connect user with the same email (the vendor's own sync expects
        it; presencectl does not need it): a warning with a remedy, never a failure."""
        from presencectl.connect.directory import list_contacts

        p = self.profile
        assert p is not None
        down = self._unreachable(REACH_CONNECT_LOGIN, REACH_CONNECT_API)
        if down:
            return skip(ACCOUNT_CONTACT, f"skipped: {down[6:]} is unreachable")
        async with self._connect() as client:
            self.contacts = list(await list_contacts(client))
        if not p.admin_email:
            return warn(
                ACCOUNT_CONTACT,
                f"{len(self.contacts)} Connect contacts; the Azure admin's email is not recorded",
                "run `presencectl setup-azure`: it records the admin and checks they are a "
                "Connect user",
                "admin_email_unknown",
            )
        admin = p.admin_email.lower()
        if any((c.email or "").lower() == admin for c in self.contacts):
            return ok(ACCOUNT_CONTACT, f"the Azure admin {p.admin_email} is a Connect user")
        return warn(
            ACCOUNT_CONTACT,
            f"the Azure admin {p.admin_email} is not a Connect user",
            "the vendor's own sync expects the Azure admin to be a Connect user with the same "
            "email: add them as a user in Control Panel (presencectl itself syncs without it)",
            "admin_not_in_connect",
        )

    async def check_security_manager(self) -> Check:
        """Not visible through the API (contacts carry no roles): a step to confirm."""
        p = self.profile
        assert p is not None
        who = p.connect_account_email or p.admin_email or "the Account Contact"
        return info(
            SECURITY_MANAGER_STEP,
            f"confirm in Control Panel that {who} holds the Security Manager role (the API does "
            "not show roles)",
            "Control Panel > Account > Contacts; the vendor's presence-sync article asks for it",
            "confirm_in_control_panel",
        )

    # -- matching --------------------------------------------------------------------------
    async def check_notifications(self) -> Check:
        import contextlib
        import json
        import sqlite3

        from presencectl.config import profile_name
        from presencectl.sync.notify import META_KEY
        from presencectl.sync.state import database_path

        path = database_path(profile_name(self.profile_name))
        if not path.exists():
            return skip(NOTIFICATIONS, "no state database yet")
        try:  # read-only: the doctor never migrates or writes the state
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
                row = db.execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone()
            summary = json.loads(row[0]) if row and row[0] else None
        except (sqlite3.Error, ValueError):
            return skip(NOTIFICATIONS, "the state database could not be read (see above)")
        return notifications_check(summary if isinstance(summary, dict) else None)

    async def check_matching(self) -> Check:
        if self.app_provider is None:
            return skip(MATCHING, "skipped: no app token (see the Azure app check)")
        if self.contacts is None:
            return skip(MATCHING, "skipped: no Connect directory (see the Account contact check)")
        if self._unreachable(REACH_GRAPH):
            return skip(MATCHING, "skipped: Graph is unreachable")
        try:
            from presencectl.sync import match as sync_match
        except ImportError:
            return skip(MATCHING, "email matching is not part of this build")
        from presencectl.graph.users import list_users

        async with self._graph() as graph:
            users = await list_users(graph)
        return matching_check(sync_match, users, self.contacts)


def notifications_check(summary: dict[str, Any] | None) -> Check:
    """What the last watch with ``--notify-url`` recorded: coverage by the pool of sync users,
    the members that failed and why (state database, no network)."""
    if not summary:
        return skip(NOTIFICATIONS, "no watch with Teams notifications recorded")
    coverage = str(summary.get("coverage") or "")
    failed = [m for m in summary.get("sync_users") or [] if m.get("state") == "failed"]
    if failed:
        who = "; ".join(f"{m['username']}: {m.get('reason') or 'failed'}" for m in failed)
        return warn(
            NOTIFICATIONS, f"{coverage}; failed: {who}",
            f"run `presencectl sync-user validate --username {failed[0]['username']}`",
            "sync_user_failed",
        )  # fmt: skip
    polled = int(summary.get("users_polled") or 0)
    if polled and summary.get("mode") != "stopped":
        return warn(
            NOTIFICATIONS, f"{coverage}; {polled:,} polled",
            "add sync users: each covers at most 650 people (`presencectl sync-user add`)",
            "notifications_partial",
        )  # fmt: skip
    return ok(NOTIFICATIONS, coverage or str(summary.get("reason") or ""))


def matching_check(sync_match: Any, users: list[Any], contacts: list[Any]) -> Check:
    """The Matching check from the sync's own matching (presencectl.sync.match)."""
    result = sync_match.match_users(users, contacts)
    matched = len(result.pairs)
    unmatched = len(result.unmatched_azure) + len(result.unmatched_connect)
    conflicts = len(result.conflicts)
    detail = (
        f"{matched} matched, {len(result.unmatched_azure)} only in Azure, "
        f"{len(result.unmatched_connect)} only in Connect, "
        f"{conflicts} conflict{'' if conflicts == 1 else 's'}"
    )
    if conflicts:
        return warn(
            MATCHING,
            detail,
            "conflicting emails are never synced: give each person one address on each side "
            "(`presencectl users --unmatched` lists them)",
            "matching_conflicts",
        )
    if not matched:
        return warn(
            MATCHING,
            detail,
            "nobody matched: the emails in Connect must equal a mail, UPN or SMTP proxy address "
            "in Azure",
            "matching_none",
        )
    if unmatched:
        return warn(
            MATCHING,
            detail,
            "`presencectl users --unmatched` lists who is not synced and why",
            "matching_unmatched",
        )
    return ok(MATCHING, detail)


def run_doctor(
    profile_name: str | None,
    *,
    now: Callable[[], float] = time.time,
    on_check: Callable[[Check], None] | None = None,
) -> DoctorReport:
    """Run every check against the named profile (``--profile``, else the default)."""
    return asyncio.run(Doctor(profile_name, now=now, on_check=on_check).run())


__all__ = [
    "DOCTOR_CODES",
    "FAIL",
    "INFO",
    "OK",
    "SKIP",
    "STATUSES",
    "WARN",
    "Check",
    "Doctor",
    "DoctorReport",
    "guarded",
    "matching_check",
    "network_remedy",
    "run_doctor",
]
