"""The three identities of the tool and their token providers, all through msal.

Owns:
- :func:`app_token_provider` — our app registration's client-credentials token (application
  permissions Presence.ReadWrite.All, User.Read.All): what the sync engine reads and writes
  presence with.
- :func:`sync_user_token_provider` — a sync user's delegated token (one per member of the pool,
  identity/sync_pool.py; silent first, then the member's password, or for a device-code / browser
  member its refresh token alone): what owns presence change-notification subscriptions, which
  Graph accepts with delegated permissions only.
- :func:`admin_sign_in` — the Azure admin's delegated token (device code or browser) through a
  public bootstrap client, for setup-azure and consent.

Every provider returns :class:`presencectl.graph.tokens.AccessToken` and satisfies
``presencectl.graph.tokens.TokenProvider`` (``provider(force_refresh) -> AccessToken``). msal token
caches are persisted through presencectl.secrets, one per profile and identity. Providers are
thread-safe (the Graph client calls them from ``asyncio.to_thread``). Nothing here prints: the
device-code message reaches the CLI through the ``on_message`` callback.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from presencectl import secrets
from presencectl.errors import ConfigError, PresencectlError, UsageError
from presencectl.graph.permissions import (
    ADMIN_SCOPES,
    DELEGATED_SCOPES,
    GRAPH_DEFAULT_SCOPE,
    GRAPH_RESOURCE,
)
from presencectl.graph.tokens import AccessToken, TokenProvider, access_token_from_msal
from presencectl.identity import msal_apps, sync_pool
from presencectl.identity.errors import (
    SignInError,
    SignInTimeout,
    SyncUserMismatch,
    classify,
    federated_error,
    needs_reauth,
    network_error,
    reauth_required,
    service_error,
)

if TYPE_CHECKING:
    from presencectl.config import Profile

log = logging.getLogger(__name__)

SYNC_USER_SCOPES = tuple(f"{GRAPH_RESOURCE}/{name}" for name in DELEGATED_SCOPES)
SYNC_USERNAME_ENV = sync_pool.SYNC_USERNAME_ENV


def granted_scopes(result: dict[str, Any], requested: Sequence[str] = ()) -> list[str]:
    """The delegated Graph scopes a token was granted, from msal's ``scope`` (never the token).

    Access tokens for Graph are not ours to read (Microsoft: they may change format or be
    encrypted). The token response's ``scope`` says what was granted; a token msal answers from
    its cache has no ``scope``, but msal only returns a cached token whose scopes include every
    requested one, so those are the answer then.
    """
    raw = result.get("scope")
    names = str(raw).split() if raw else list(requested)
    out: list[str] = []
    for name in names:
        short = name.rsplit("/", 1)[-1] if name.lower().startswith(GRAPH_RESOURCE) else name
        if short and short not in OIDC_SCOPES and short not in out:
            out.append(short)
    return sorted(out)


OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})


def _require_client_id(profile: Profile) -> str:
    if not profile.client_id:
        raise ConfigError(
            f"profile '{profile.name}' has no client_id (no app registration yet)",
            hint="run `presencectl setup-azure` first",
            code="config_missing",
        )
    return profile.client_id


# ---------------------------------------------------------------------------------------- app


class AppTokenProvider:
    """Client credentials with the app's credential (a secret, a certificate or a federated
    token: identity/app_credentials.py); msal's cache first."""

    def __init__(self, profile: Profile) -> None:
        from presencectl.identity.app_credentials import client_credential

        self.profile = profile
        self.client_id = _require_client_id(profile)
        self._secret = client_credential(profile)
        self._cache = msal_apps.PersistentTokenCache(profile.name, msal_apps.APP)
        self._app: Any = None
        self._lock = threading.Lock()

    def __call__(self, force_refresh: bool = False) -> AccessToken:
        with self._lock:
            if self._app is None:
                self._app = msal_apps.confidential_app(
                    self.profile, self.client_id, self._secret, self._cache
                )
            if force_refresh:
                self._drop_cached_access_tokens()
            with msal_apps.msal_errors(self.profile.authority):
                result = self._app.acquire_token_for_client(scopes=[GRAPH_DEFAULT_SCOPE])
            self._cache.save()
        if "access_token" not in result:
            raise classify(
                result, who=self.client_id, tenant=self.profile.tenant_id or "", flow="client"
            )
        return access_token_from_msal(result)

    def _drop_cached_access_tokens(self) -> None:
        # msal's acquire_token_for_client has no force_refresh: remove this app's cached access
        # tokens so that the next call asks the token endpoint.
        cache = self._cache.cache
        cached = list(
            cache.search(cache.CredentialType.ACCESS_TOKEN, query={"client_id": self.client_id})
        )
        for item in cached:
            cache.remove_at(item)


def app_token_provider(profile: Profile) -> AppTokenProvider:
    """The app's client-credentials token provider (ConfigError when its credential is missing)."""
    return AppTokenProvider(profile)


# ----------------------------------------------------------------------------------- sync user


def sync_username(profile: Profile) -> str:
    """The first sync user's name (``PRESENCECTL_SYNC_USERNAME`` wins); ConfigError if none."""
    return sync_pool.find_member(profile).username


class SyncUserTokenProvider:
    """One sync user's delegated token: silent (refresh token) first, then its own sign-in.

    A password member signs in again with its stored password when the refresh token is refused
    (the refused token is dropped first). A device-code or browser member has no password: its
    refresh token is all there is, so a refused one is dropped and ``sync_user_reauth_required``
    (exit 4) names the command that signs the person in again.

    msal's throttled HTTP client remembers an identical failing token request (HTTP 400) for 60 s
    and answers a repeat from memory. A retry after the password was fixed — or after the user
    completed the first-login change with the very same password — must reach Entra ID, so this
    provider owns msal's ``http_cache`` mapping and empties it before every password attempt.
    """

    def __init__(
        self,
        profile: Profile,
        *,
        username: str | None = None,
        password: str | None = None,
        silent: bool = True,
    ) -> None:
        self.profile = profile
        self.client_id = _require_client_id(profile)
        member = sync_pool.find_member(profile, username)
        self.username = member.username
        self.sign_in = member.sign_in
        self._password_secret = sync_pool.password_secret(profile, member.username)
        self._password = password
        # False: always prove the stored credential (`sync-user validate`, doctor): a password
        # member signs in with its password, a token member redeems its refresh token; neither is
        # served from a cached access token or a refresh token cached from an earlier password.
        self._silent = silent
        self._cache = msal_apps.PersistentTokenCache(
            profile.name, sync_pool.cache_identity(profile, member.username)
        )
        self._http_cache: dict[str, Any] = {}
        self._app: Any = None
        self._lock = threading.Lock()
        # What msal documents about the last sign-in: the id token's claims (when one came) and
        # the granted scopes (the response's ``scope``). Never read from the access token.
        self.last_result_claims: dict[str, Any] = {}
        self.last_scopes: list[str] = []

    def _password_or_fail(self) -> str:
        password = self._password or secrets.get_secret(self.profile.name, self._password_secret)
        if not password:
            env = " (or set PRESENCECTL_SYNC_PASSWORD)"
            first = self._password_secret == secrets.SYNC_PASSWORD
            raise ConfigError(
                f"no password stored for the sync user {self.username}",
                hint=f"run `presencectl sync-user {'set' if first else 'sign-in'} --username "
                f"{self.username}`{env if first else ''}",
                code="sync_password_missing",
            )
        return password

    def _application(self) -> Any:
        if self._app is None:
            self._app = msal_apps.public_app(
                self.profile, self.client_id, self._cache, http_cache=self._http_cache
            )
        return self._app

    def __call__(self, force_refresh: bool = False) -> AccessToken:
        with self._lock:
            app = self._application()
            if self.sign_in == sync_pool.PASSWORD:
                result = self._password_member(app, force_refresh)
            else:
                result = self._token_member(app, force_refresh)
            self._cache.save()
        if "access_token" not in result:
            raise classify(
                result, who=self.username, tenant=self.profile.tenant_id or "", flow="password"
            )
        self._silent = True  # the credential is proven; later calls may use what it got
        self.last_result_claims = dict(result.get("id_token_claims") or {})
        self.last_scopes = granted_scopes(result, SYNC_USER_SCOPES)
        return access_token_from_msal(result)

    def _password_member(self, app: Any, force_refresh: bool) -> dict[str, Any]:
        result: dict[str, Any] | None = None
        with msal_apps.msal_errors(self.profile.authority):
            accounts = app.get_accounts(username=self.username) if self._silent else []
            if accounts:
                result = app.acquire_token_silent_with_error(
                    list(SYNC_USER_SCOPES), accounts[0], force_refresh=force_refresh
                )
                if result and "access_token" not in result:
                    # A refused refresh token is dropped, then the password is tried once.
                    log.info("the sync user's cached sign-in was refused; signing in again")
                    for account in accounts:
                        app.remove_account(account)
        if not result or "access_token" not in result:
            result = self._password_sign_in(app)
        return result

    def _token_member(self, app: Any, force_refresh: bool) -> dict[str, Any]:
        """A device-code or browser member: its refresh token, redeemed when not ``silent`` or
        asked to (``force_refresh``), else msal's cached access token."""
        with msal_apps.msal_errors(self.profile.authority):
            accounts = app.get_accounts(username=self.username)
            result = (
                app.acquire_token_silent_with_error(
                    list(SYNC_USER_SCOPES),
                    accounts[0],
                    force_refresh=force_refresh or not self._silent,
                )
                if accounts
                else None
            )
            if result and "access_token" in result:
                return dict(result)
            if result:
                error = classify(
                    result, who=self.username, tenant=self.profile.tenant_id or "", flow="password"
                )
                if not needs_reauth(error):
                    raise error  # disabled, consent missing, …: a new sign-in would not help
                for account in accounts:  # the refused token is dropped
                    app.remove_account(account)
                self._cache.save()
        raise reauth_required(
            self.username,
            self.sign_in,
            codes=tuple(result.get("error_codes") or ()) if result else (),
            never=not accounts,
        )

    def _password_sign_in(self, app: Any) -> dict[str, Any]:
        password = self._password_or_fail()
        self._http_cache.clear()  # see the class docstring: never answer from msal's 400 memory
        try:
            with warnings.catch_warnings():
                # msal ≥ 1.35 warns that username/password is deprecated for public clients. We use
                # it on purpose for password members: Graph presence change notifications accept
                # only delegated tokens, so a dedicated sync *user* (the vendor's "Create Sync
                # User" step) is how Teams-to-Connect sync works; under MFA, a device-code member
                # (no password) is the alternative (docs/azure-setup.md).
                warnings.filterwarnings(
                    "ignore",
                    message="This API has been deprecated for public client flows",
                    category=DeprecationWarning,
                )
                return dict(
                    app.acquire_token_by_username_password(
                        self.username, password, scopes=list(SYNC_USER_SCOPES)
                    )
                )
        except PresencectlError:
            raise
        except Exception as exc:  # msal raises (ValueError, RuntimeError, …) on the federated path
            if self._is_federated(app):
                raise federated_error(self.username) from exc
            import httpx
            from msal.exceptions import MsalServiceError

            if isinstance(exc, httpx.TransportError):
                raise network_error(exc, self.profile.authority) from exc
            if isinstance(exc, MsalServiceError):
                raise service_error(exc, self.profile.authority) from exc
            raise SignInError(
                f"Azure login error for {self.username}: {type(exc).__name__}: {exc}",
                hint="run again with -vv for details",
            ) from exc

    def _is_federated(self, app: Any) -> bool:
        try:
            realm = app.authority.user_realm_discovery(self.username)
        except Exception:
            return False
        return isinstance(realm, dict) and realm.get("account_type") == "Federated"


def sync_user_token_provider(
    profile: Profile, username: str | None = None, *, password: str | None = None
) -> SyncUserTokenProvider:
    """The token provider of the pool member ``username`` (None: the first member — a pool of
    one is the seed's single sync user). ``password`` overrides the stored one (validation)."""
    return SyncUserTokenProvider(profile, username=username, password=password)


# --------------------------------------------------------------------------------------- admin


@dataclass(frozen=True)
class DeviceCodePrompt:
    """What the admin must do to finish a device-code sign-in. ``str()`` is msal's message."""

    message: str
    user_code: str
    verification_uri: str
    expires_in: int

    def __str__(self) -> str:
        return self.message


@dataclass
class AdminSession:
    """A signed-in admin: the token provider for Graph and who signed in."""

    provider: TokenProvider
    username: str
    tenant_id: str
    object_id: str
    claims: dict[str, Any] = field(default_factory=dict, repr=False)


METHODS = ("device_code", "browser")
SIGN_IN_TIMEOUT_S = 300.0  # the browser sign-in never waits longer than this (exit 4 after)


def browser_unavailable() -> str:
    """Why no browser can be opened on this host ("" when one can).

    msal opens the sign-in page with :mod:`webbrowser`; on a host with no display (SSH, a
    container, CI) or no browser it would only log the URL and wait for a redirect that never
    comes.
    """
    import sys
    import webbrowser

    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        if not display and not os.environ.get("WSL_DISTRO_NAME"):
            return "no display (DISPLAY and WAYLAND_DISPLAY are not set)"
    try:
        webbrowser.get()
    except webbrowser.Error:
        return "no web browser is installed"
    return ""


def _browser_sign_in(
    app: Any, scopes: Sequence[str], login_hint: str | None, timeout: float
) -> dict[str, Any]:
    """msal's interactive sign-in, bounded: msal raises when no redirect came in ``timeout``."""
    from msal.oauth2cli.oauth2 import BrowserInteractionTimeoutError

    try:
        return dict(
            app.acquire_token_interactive(
                list(scopes), prompt="select_account", login_hint=login_hint, timeout=int(timeout)
            )
        )
    except BrowserInteractionTimeoutError as exc:
        raise SignInTimeout(
            f"Azure login error: the browser sign-in was not completed within {int(timeout)} s.",
            hint="Finish the sign-in in the browser that opened, or run again with --device-code "
            "(the default) to sign in from any other device.",
        ) from exc


def _interactive_sign_in(
    app: Any,
    profile: Profile,
    method: str,
    scopes: Sequence[str],
    login_hint: str | None,
    on_message: Callable[[DeviceCodePrompt | str], None],
    timeout: float,
    who: str,
) -> dict[str, Any]:
    """A device-code or browser sign-in through ``app`` (inside ``msal_errors``). A browser
    sign-in on a host that cannot open one falls back to a device code (one line through
    ``on_message``)."""
    if method == "browser":
        why = browser_unavailable()
        if why:
            on_message(
                f"Cannot open a browser here ({why}); signing in with a device code instead."
            )
            method = "device_code"
    if method != "device_code":
        return _browser_sign_in(app, scopes, login_hint, timeout)
    flow = app.initiate_device_flow(scopes=list(scopes))
    if "user_code" not in flow:
        raise classify(flow, who=who, tenant=profile.tenant_id or "", flow="admin")
    on_message(
        DeviceCodePrompt(
            message=str(
                flow.get("message")
                or f"Go to {flow.get('verification_uri')} and enter {flow['user_code']}"
            ),
            user_code=str(flow["user_code"]),
            verification_uri=str(flow.get("verification_uri") or ""),
            expires_in=int(flow.get("expires_in") or 900),
        )
    )
    return dict(app.acquire_token_by_device_flow(flow))


def sync_user_interactive_sign_in(
    profile: Profile,
    username: str,
    method: str,
    *,
    on_message: Callable[[DeviceCodePrompt | str], None],
    timeout: float = SIGN_IN_TIMEOUT_S,
) -> dict[str, Any]:
    """Sign a pool member in by device code or browser through our app (MFA as Entra asks); its
    refresh token goes to the member's msal cache in the secret store, no password anywhere.

    The person may sign in with another account on the sign-in page: that sign-in is refused
    (``sync_user_mismatch``) and nothing of it is kept.
    """
    if method not in METHODS:
        raise UsageError(
            f"unknown sign-in method {method!r}", hint="use --device-code or --browser"
        )
    client_id = _require_client_id(profile)
    cache = msal_apps.PersistentTokenCache(
        profile.name, sync_pool.cache_identity(profile, username)
    )
    app = msal_apps.public_app(profile, client_id, cache)
    with msal_apps.msal_errors(profile.authority):
        result = _interactive_sign_in(
            app, profile, method, SYNC_USER_SCOPES, username, on_message, timeout, username
        )
        if "access_token" not in result:
            if method == "browser" and 7000218 in (result.get("error_codes") or ()):
                raise SignInError(
                    f"Azure login error: the browser sign-in of {username} came back, but the app "
                    "registration has no 'Mobile and desktop applications' redirect URI, so Entra "
                    "treats it as a web app that must send a secret (AADSTS7000218)",
                    hint="use `--device-code` (nothing to register), or add http://localhost:8400 "
                    "under App registrations > the app > Authentication > Mobile and desktop "
                    "applications (http://localhost itself is taken by the Web platform, for "
                    "consent)",
                    aad_codes=(7000218,),
                )
            raise classify(result, who=username, tenant=profile.tenant_id or "", flow="password")
        claims = dict(result.get("id_token_claims") or {})
        signed_in = str(claims.get("preferred_username") or claims.get("upn") or "")
        for account in app.get_accounts():  # only the member's own account stays
            if str(account.get("username") or "").lower() != username.lower():
                app.remove_account(account)
        if signed_in.lower() != username.lower():
            cache.save()
            flag = "--browser" if method == "browser" else "--device-code"
            raise SyncUserMismatch(
                f"the sign-in was made as {signed_in or 'another account'}, not as {username}; "
                "nothing was kept",
                hint=f"run it again and sign in as {username} on the sign-in page "
                f"(`presencectl sync-user sign-in --username {username} {flag}`; in a browser "
                "with another account signed in, use a private window)",
            )
    cache.save()
    return result


# What Entra answers for a cached sign-in it no longer honours: the refresh token is unknown to it
# (70000 invalid grant, e.g. a tenant rebuilt under the same id; 9002313 malformed), expired or
# revoked (70008, 700082, 50173, 700084). The cache entry is then dropped and the admin signs in
# again, once (issue 24: a sandbox restarted under the same tenant id refused the cached token,
# and the hint looped).
STALE_SIGN_IN_CODES = frozenset({70000, 70008, 700082, 700084, 50173, 9002313})
LOGOUT_HINT = "run `presencectl logout` to forget the cached sign-in, then run the command again"


def is_stale_sign_in(result: dict[str, Any] | None) -> bool:
    """Is this msal error a cached sign-in Entra no longer honours (not a policy or consent)?"""
    if not result or "access_token" in result:
        return False
    codes = {int(c) for c in result.get("error_codes") or [] if str(c).isdigit()}
    if codes:
        return bool(codes & STALE_SIGN_IN_CODES)
    return result.get("error") == "invalid_grant"


def _forget_accounts(app: Any) -> None:
    """Drop every cached account of this msal app (tokens, refresh tokens, id tokens)."""
    for account in app.get_accounts():
        app.remove_account(account)


class AdminTokenProvider:
    """Silent refresh of the admin's token (msal cache, refresh token) for Graph calls.

    A refresh that Entra refuses as stale (``STALE_SIGN_IN_CODES``; also a 401 on the first use
    of a cached token, which the Graph client turns into a forced refresh) drops the cache entry
    and signs in again through ``sign_in_again``, once; if that fails too, the error's hint names
    `presencectl logout`.
    """

    def __init__(
        self,
        app: Any,
        cache: msal_apps.PersistentTokenCache,
        account: Any,
        scopes: Sequence[str],
        first: AccessToken,
        authority: str,
        sign_in_again: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._app, self._cache, self._account, self._scopes = app, cache, account, list(scopes)
        self._token = first
        self._authority = authority
        self._lock = threading.Lock()
        self._sign_in_again = sign_in_again

    def __call__(self, force_refresh: bool = False) -> AccessToken:
        import time

        with self._lock:
            if not force_refresh and self._token.expires_at - time.time() > 120:
                return self._token
            with msal_apps.msal_errors(self._authority):
                result = self._app.acquire_token_silent_with_error(
                    self._scopes, self._account, force_refresh=force_refresh
                )
            if is_stale_sign_in(result) and self._sign_in_again is not None:
                again, self._sign_in_again = self._sign_in_again, None  # once
                log.info("the cached admin sign-in was refused; signing in again")
                _forget_accounts(self._app)
                with msal_apps.msal_errors(self._authority):
                    result = again()
                if result and "access_token" in result:
                    accounts = self._app.get_accounts()
                    self._account = accounts[0] if accounts else self._account
                else:
                    self._cache.save()
                    error = classify(result or {}, who="the Azure admin", flow="admin")
                    error.hint = LOGOUT_HINT
                    raise error
            self._cache.save()
            if not result or "access_token" not in result:
                error = classify(result or {}, who="the Azure admin", flow="admin")
                if is_stale_sign_in(result):
                    error.hint = LOGOUT_HINT
                raise error
            self._token = access_token_from_msal(result)
            return self._token


def _again_after_stale(
    app: Any,
    method: str,
    scopes: Sequence[str],
    login_hint: str | None,
    on_message: Callable[[DeviceCodePrompt | str], None],
    timeout: float,
    profile: Profile,
) -> dict[str, Any]:
    on_message("The cached Azure sign-in was refused; signing in again.")
    return _interactive_sign_in(
        app, profile, method, scopes, login_hint, on_message, timeout, "the Azure admin"
    )


def admin_sign_in(
    profile: Profile,
    method: str = "device_code",
    *,
    on_message: Callable[[DeviceCodePrompt | str], None],
    client_id: str | None = None,
    scopes: Sequence[str] = ADMIN_SCOPES,
    login_hint: str | None = None,
    timeout: float = SIGN_IN_TIMEOUT_S,
) -> AdminSession:
    """Sign the Azure admin in through the public bootstrap client: cached account first.

    ``method`` is ``device_code`` (the message goes to ``on_message``) or ``browser``. A browser
    sign-in on a host that cannot open one falls back to a device code (one line through
    ``on_message``), and gives up after ``timeout`` seconds (``sign_in_timeout``, exit 4).
    """
    if method not in METHODS:
        raise UsageError(
            f"unknown sign-in method {method!r}", hint="use --device-code or --browser"
        )
    client_id = client_id or profile.bootstrap_client_id
    cache = msal_apps.PersistentTokenCache(profile.name, msal_apps.ADMIN)
    app = msal_apps.public_app(profile, client_id, cache)
    result: dict[str, Any] | None = None
    silent = stale = False
    with msal_apps.msal_errors(profile.authority):
        accounts = app.get_accounts(username=login_hint) if login_hint else app.get_accounts()
        if accounts:
            result = app.acquire_token_silent_with_error(list(scopes), accounts[0])
            if result and "access_token" in result:
                silent = True
                log.info("admin signed in silently from the token cache")
            elif is_stale_sign_in(result):
                stale = True
                on_message("The cached Azure sign-in was refused; signing in again.")
                _forget_accounts(app)
        if not result or "access_token" not in result:
            result = _interactive_sign_in(
                app, profile, method, scopes, login_hint, on_message, timeout, "the Azure admin"
            )
    cache.save()
    if result and 65001 in (result.get("error_codes") or []):
        # The bootstrap client asks for directory-writing scopes that only a Global Administrator
        # may consent to: for the admin this is the Global Administrator prerequisite failing.
        raise ConfigError(
            "prerequisite not met: the signed-in account cannot consent to the permissions "
            "setup needs (AADSTS65001); it is not a Global Administrator",
            hint="sign in as a Global Administrator, or have one assign you the role (Entra admin "
            "center > Roles and administrators > Global Administrator)",
            code="prerequisite_global_admin",
        )
    if not result or "access_token" not in result:
        error = classify(
            result or {}, who="the Azure admin", tenant=profile.tenant_id or "", flow="admin"
        )
        if stale or is_stale_sign_in(result):
            error.hint = LOGOUT_HINT
        raise error
    token = access_token_from_msal(result)
    # Who signed in: the id token's claims (msal decodes and documents ``id_token_claims``), else
    # msal's account record (a silent sign-in from the cache brings no id token).
    claims = dict(result.get("id_token_claims") or {})
    account = None
    for candidate in app.get_accounts():
        if candidate.get("local_account_id") == claims.get("oid") or account is None:
            account = candidate
    known = account or {}
    return AdminSession(
        provider=AdminTokenProvider(
            app,
            cache,
            account,
            scopes,
            token,
            profile.authority,
            # Only a token served from the cache can be stale; a fresh sign-in is not redone.
            sign_in_again=(
                (
                    lambda: _again_after_stale(
                        app, method, scopes, login_hint, on_message, timeout, profile
                    )
                )
                if silent
                else None
            ),
        ),
        username=str(
            claims.get("preferred_username") or claims.get("upn") or known.get("username") or ""
        ),
        tenant_id=str(claims.get("tid") or known.get("realm") or profile.tenant_id or ""),
        object_id=str(claims.get("oid") or known.get("local_account_id") or ""),
        claims=claims,
    )
