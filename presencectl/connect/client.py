"""The Univerge Blue Connect REST client: tokens, budget, retries, throttling, error mapping.

Owns the one httpx client for Connect (built by ``presencectl.transport``), the client-credentials
tokens — one per scope, as the vendor's SDK asks them: ``api.service.messaging`` for presence,
subscriptions and the hub, the profile's ``connect_directory_scope`` for the address book — each
cached until ``TOKEN_REFRESH_MARGIN_S`` before expiry, fetched once for any number of concurrent
callers, refreshed once on a 401; the request budget (``connect.budget``, the profile's
``connect_rate_per_min``); the session resource we write under (the profile's
``connect_resource_id``, a GUID); and the retry policy: network errors, 429, 500, 502, 503 and
504 are retried with ``Retry-After`` honoured (client-wide: while one request waits out a
Retry-After, no other request is sent) or bounded exponential backoff; other 4xx never.
Failures become the errors of ``presencectl.errors`` with stable codes; error bodies are read as
``{"message"}``, OAuth ``{"error", "error_description"}`` or ASP.NET ProblemDetails
``{"title", "detail"}``.

The client holds transport and tokens only: the operations on Connect are functions that take
it, in ``connect.directory`` (contacts), ``connect.presence`` (read, write, clear our session)
and ``connect.feed`` (subscriptions and the change feed). Paths and names: ``connect.wire``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from presencectl.connect import wire
from presencectl.connect.budget import Priority, RequestBudget, current_priority
from presencectl.errors import ApiError, AuthError, ConfigError, NetworkError
from presencectl.transport import HttpSettings, build_async_client, redact, retry_after_seconds

if TYPE_CHECKING:
    from presencectl.config import Profile

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
AUTH_HINT = (
    "check the Extend API client in Control Panel > Extend API (client id in the profile's "
    "connect_client_id) and its secret (PRESENCECTL_CONNECT_CLIENT_SECRET or the keyring)"
)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass
class ConnectStats:
    """What the client did, for the engine's report and the live view."""

    requests: int = 0
    token_requests: int = 0
    retries: int = 0
    throttled: int = 0  # 429 answers
    throttle_wait_s: float = 0.0  # time spent waiting out Retry-After / backoff
    budget_wait_s: float = 0.0  # time spent waiting for the request budget


def _error_detail(response: httpx.Response) -> str:
    """A short, redacted description of an error body."""
    try:
        body = response.json()
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than json's stack
        text = response.text.strip()
        return redact(text[:200]) if text else ""
    if not isinstance(body, dict):
        return ""
    for key in ("error_description", "message"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return redact(value[:200])
    # ASP.NET Core ProblemDetails (RFC 7807): {"type", "title", "status", "detail"}
    problem = [body.get(k) for k in ("title", "detail")]
    parts = [p for p in problem if isinstance(p, str) and p]
    if parts:
        return redact(": ".join(parts)[:200])
    value = body.get("error")
    if isinstance(value, str) and value:
        return redact(value[:200])
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        return redact(value["message"][:200])
    return ""


_POOL_SHARDS = 8
_CONNECTIONS_PER_SHARD = 4


class ConnectClient:
    """An async client of one Connect account (one Extend API client)."""

    def __init__(
        self,
        login_url: str,
        api_url: str,
        client_id: str,
        client_secret: str,
        settings: HttpSettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        directory_scope: str = wire.DIRECTORY_SCOPE,
        resource_id: str | None = None,
        rate_per_min: float = wire.RATE_PER_MIN,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 300.0,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        max_connections: int = 64,
    ) -> None:
        self.login_url = login_url.rstrip("/")
        self.api_url = api_url.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self.settings = settings or HttpSettings()
        self.directory_scope = directory_scope
        # What the account was found to do (profile keys, `connect verify --apply`)
        self.directory_fields: str = wire.FIELDS_ALL  # "" once the directory refuses `fields`
        self.feed_user_field: str | None = None
        self.feed_event_scope: str = "auto"
        self.resource_id = resource_id or wire.new_resource_id()
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._clock = clock
        self.stats = ConnectStats()
        self.budget = RequestBudget(rate_per_min, clock=clock, sleep=sleep)
        # Several small connection pools instead of one large one: httpcore scans every
        # connection of a pool for every request, so per-request CPU grows with the pool size.
        # Measured against the sandbox, 10,000 reads at 32 in flight: one pool of 32 → 11.0 s,
        # eight pools of 4 → 5.6 s (bench/cycle.py). Same connection count, same concurrency.
        shards = max(1, min(_POOL_SHARDS, max_connections // _CONNECTIONS_PER_SHARD))
        per_shard = max(1, -(-max_connections // shards))
        self._pools = [
            build_async_client(
                self.settings,
                base_url=self.api_url,
                transport=transport,
                limits=httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard),
            )
            for _ in range(shards)
        ]
        self._http = self._pools[0]
        self._next_pool = itertools.cycle(self._pools).__next__
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, valid until)
        self._token_locks: dict[str, asyncio.Lock] = {}
        self._blocked_until = 0.0

    # -- lifecycle ----------------------------------------------------------------------------
    async def aclose(self) -> None:
        await self.budget.aclose()
        for pool in self._pools:
            await pool.aclose()

    async def __aenter__(self) -> ConnectClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- token --------------------------------------------------------------------------------
    async def access_token(self, scope: str = wire.MESSAGING_SCOPE) -> str:
        """A valid bearer token for ``scope``; fetched by client credentials when the cached one
        nears expiry."""
        cached = self._tokens.get(scope)
        if cached and self._clock() < cached[1]:
            return cached[0]
        lock = self._token_locks.setdefault(scope, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(scope)
            if cached and self._clock() < cached[1]:
                return cached[0]
            token, lifetime = await self._fetch_token(scope)
            margin = (
                wire.TOKEN_REFRESH_MARGIN_S
                if lifetime > 2 * wire.TOKEN_REFRESH_MARGIN_S
                else lifetime / 2
            )
            self._tokens[scope] = (token, self._clock() + lifetime - margin)
            return token

    def invalidate_token(self, token: str | None = None) -> None:
        """Forget the cached tokens (only the one that is ``token``, when given)."""
        for scope, (cached, _) in list(self._tokens.items()):
            if token is None or token == cached:
                del self._tokens[scope]

    async def _fetch_token(self, scope: str) -> tuple[str, float]:
        url = self.login_url + wire.TOKEN_PATH
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "scope": scope,
        }

        async def post() -> httpx.Response:
            self.stats.token_requests += 1
            return await self._http.post(url, data=form)

        def unreachable(exc: httpx.TransportError) -> NetworkError:
            return NetworkError(
                f"cannot reach the Connect sign-in service at {self.login_url}: "
                f"{type(exc).__name__}",
                hint="check the network, the proxy setting and connect_login_url",
                code="connect_unreachable",
            )

        response = await self._with_retries(post, unreachable)
        if response.status_code == 200:
            try:
                body = response.json()
                token = body["access_token"]
                lifetime = float(body.get("expires_in", 3600))
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                raise ApiError(
                    "the Connect sign-in service answered without an access token",
                    status=200,
                    code="connect_bad_response",
                    hint=f"check connect_login_url ({self.login_url})",
                ) from exc
            if not isinstance(token, str) or not token:
                raise ApiError(
                    "the Connect sign-in service sent an empty access token",
                    status=200,
                    code="connect_bad_response",
                )
            return token, max(1.0, lifetime)
        error = ""
        try:
            body = response.json()
            if isinstance(body, dict):
                error = str(body.get("error", ""))
        except (ValueError, RecursionError):
            pass
        if error in ("invalid_client", "unauthorized_client") or response.status_code == 401:
            raise AuthError(
                f"Connect rejected the Extend API client '{self.client_id}' "
                f"({error or response.status_code})",
                hint=AUTH_HINT,
                code="connect_auth_failed",
            )
        if error == "invalid_scope":
            raise AuthError(
                f"Connect refused the scope '{scope}' for client '{self.client_id}'"
                + (f": {_error_detail(response)}" if _error_detail(response) else ""),
                hint="enable this API for the client in Control Panel > Extend API"
                + (
                    " (the directory scope is the profile's connect_directory_scope)"
                    if scope == self.directory_scope
                    else ""
                ),
                code="connect_scope_denied",
            )
        raise ApiError(
            f"Connect sign-in failed with HTTP {response.status_code}"
            + (f": {_error_detail(response)}" if _error_detail(response) else ""),
            status=response.status_code,
            code="connect_api_error",
            hint=f"check connect_login_url ({self.login_url})",
        )

    # -- requests -----------------------------------------------------------------------------
    def _backoff_delay(self, attempt: int) -> float:
        delay: float = min(self.backoff_max, self.backoff_base * (2.0 ** (attempt - 1)))
        return delay * (0.5 + random.random() / 2)

    async def _backoff(self, attempt: int, response: httpx.Response | None) -> None:
        self.stats.retries += 1
        delay: float | None = None
        if response is not None:
            if response.status_code == 429:
                self.stats.throttled += 1
            delay = retry_after_seconds(response.headers)
            if delay is not None:
                delay = min(delay, self.max_retry_after)
                # Every request of this client waits it out, not just this one.
                self._blocked_until = max(self._blocked_until, self._clock() + delay)
        if delay is None:
            delay = self._backoff_delay(attempt)
        log.debug(
            "connect: retry %d in %.2fs (%s)",
            attempt,
            delay,
            response.status_code if response is not None else "network error",
        )
        self.stats.throttle_wait_s += delay
        await self._sleep(delay)

    async def _wait_if_blocked(self) -> None:
        while True:
            remaining = self._blocked_until - self._clock()
            if remaining <= 0:
                return
            self.stats.throttle_wait_s += remaining
            await self._sleep(remaining)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        allow: Iterable[int] = (),
        scope: str = wire.MESSAGING_SCOPE,
        priority: Priority | None = None,
    ) -> httpx.Response:
        """Send an authorised API request with a token for ``scope``, within the budget (at
        ``priority``, by default the task's ``budget.current_priority``, URGENT unless a bulk
        task set BULK: bulk reads go after everything else), with
        retries; 2xx and ``allow`` statuses are returned, anything else raised as AuthError /
        ApiError / NetworkError."""
        allowed = frozenset(allow)
        refreshed = False
        if priority is None:
            priority = current_priority.get()

        async def send() -> httpx.Response | None:
            nonlocal refreshed
            await self._wait_if_blocked()
            token = await self.access_token(scope)
            self.stats.budget_wait_s += await self.budget.acquire(priority)
            self.stats.requests += 1
            response = await self._next_pool().request(
                method,
                path,
                params=params,
                json=json,
                headers={"Authorization": f"Bearer {token}"},
            )
            if response.status_code == 401 and not refreshed:
                refreshed = True
                self.invalidate_token(token)
                return None  # once: the token went stale; send again with a fresh one
            return response

        def unreachable(exc: httpx.TransportError) -> NetworkError:
            return NetworkError(
                f"cannot reach Connect at {self.api_url}: {type(exc).__name__}",
                hint="check the network, the proxy setting and connect_api_url",
                code="connect_unreachable",
            )

        response = await self._with_retries(send, unreachable, allowed)
        if 200 <= response.status_code < 300 or response.status_code in allowed:
            return response
        raise self._error_for(method, path, response)

    async def _with_retries(
        self,
        send: Callable[[], Awaitable[httpx.Response | None]],
        unreachable: Callable[[httpx.TransportError], NetworkError],
        allowed: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """The one retry loop of the client (token requests and API requests alike).

        ``send`` makes one attempt; it answers None when it must simply be repeated (a stale
        token replaced), which does not count as a failed attempt. Network errors and
        ``RETRY_STATUSES`` (unless ``allowed``) are retried up to ``max_attempts`` with
        ``Retry-After`` honoured or backoff; the last answer is returned whatever its status,
        and the last network error raised as ``unreachable(exc)``.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await send()
            except httpx.TransportError as exc:
                if attempt >= self.max_attempts:
                    raise unreachable(exc) from exc
                await self._backoff(attempt, None)
                continue
            if response is None:
                attempt -= 1
                continue
            status = response.status_code
            if status in RETRY_STATUSES and status not in allowed and attempt < self.max_attempts:
                await self._backoff(attempt, response)
                continue
            return response

    def _error_for(self, method: str, path: str, response: httpx.Response) -> Exception:
        status = response.status_code
        detail = _error_detail(response)
        where = f"{method} {path}"
        suffix = f": {detail}" if detail else ""
        if status == 401:
            return AuthError(
                f"Connect refused the access token for {where}{suffix}",
                hint=AUTH_HINT,
                code="connect_unauthorized",
            )
        if status == 403:
            return AuthError(
                f"Connect denied {where} (HTTP 403){suffix}",
                hint="enable the API this call needs for the Extend API client in Control Panel "
                "> Extend API (messaging; the directory: connect_directory_scope)",
                code="connect_forbidden",
            )
        if status == 404:
            return ApiError(
                f"Connect: not found: {where}{suffix}",
                status=404,
                code="connect_not_found",
                hint=f"if every Connect call answers 404, connect_api_url ({self.api_url}) may "
                f"name the wrong host: public code calls presence at "
                f"{wire.other_api_host(self.api_url)} (`presencectl config set connect_api_url "
                f"{wire.other_api_host(self.api_url)}`)",
            )
        if status == 429:
            return ApiError(
                f"Connect kept throttling {where} after {self.max_attempts} attempts",
                status=429,
                code="connect_throttled",
                hint="lower connect_rate_per_min in the profile or run the sync less often",
            )
        return ApiError(
            f"Connect answered HTTP {status} to {where}{suffix}",
            status=status,
            code="connect_api_error",
        )


def connect_client_for(
    profile: Profile, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
) -> ConnectClient:
    """The Connect client of a profile; the secret comes from presencectl.secrets."""
    from presencectl.secrets import CONNECT_CLIENT_SECRET, ENV_VARS, get_secret

    if not profile.connect_client_id:
        raise ConfigError(
            f"profile '{profile.name}' has no connect_client_id",
            hint="register an Extend API client in Control Panel (KB 63780), then run "
            "`presencectl connect set --client-id ID` (docs/connect-setup.md)",
            code="config_missing",
        )
    secret = get_secret(profile.name, CONNECT_CLIENT_SECRET)
    if not secret:
        raise ConfigError(
            f"no Connect client secret for profile '{profile.name}'",
            hint=f"run `presencectl connect set --client-id ID`, or set "
            f"{ENV_VARS[CONNECT_CLIENT_SECRET]} (CI)",
            code="connect_secret_missing",
        )
    kwargs.setdefault("directory_scope", profile.connect_directory_scope)
    kwargs.setdefault("rate_per_min", profile.connect_rate_per_min)
    kwargs.setdefault("resource_id", ensure_resource_id(profile))
    client = ConnectClient(
        profile.connect_login_url,
        profile.connect_api_url,
        profile.connect_client_id,
        secret,
        profile.http_settings(),
        transport,
        **kwargs,
    )
    client.directory_fields = profile.connect_directory_fields
    client.feed_user_field = profile.connect_feed_user_field or None
    client.feed_event_scope = profile.connect_feed_event_scope
    return client


def ensure_resource_id(profile: Profile) -> str:
    """The profile's session resource (``connect_resource_id``), made on first use and saved.

    Made from the Connect client id and the profile name (a name-based GUID), so two processes
    that start at once (a watch and a one-shot) make the same one and no session is orphaned.
    Only that key is written into the stored profile, so nothing else of it is overwritten; a
    profile that is not in the config file is not written.
    """
    if profile.connect_resource_id:
        return profile.connect_resource_id
    from presencectl.config import config_path, read_config, write_config

    path = config_path()
    doc = read_config(path)
    table = doc.get("profiles", {}).get(profile.name)
    stored = table.get("connect_resource_id") if isinstance(table, dict) else None
    if isinstance(stored, str) and wire.is_guid(stored):
        profile.connect_resource_id = stored
        return stored
    profile.connect_resource_id = wire.resource_id_for(
        profile.connect_api_url, profile.connect_client_id or "", profile.name
    )
    if isinstance(table, dict):
        table["connect_resource_id"] = profile.connect_resource_id
        write_config(doc, path)
        log.info(
            "connect: profile '%s' writes its Connect presence as resource %s",
            profile.name,
            profile.connect_resource_id,
        )
    return profile.connect_resource_id
