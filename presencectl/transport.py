"""The one HTTP stack: every outbound call of presencectl goes through a client built here.

Owns: timeouts, proxy, the CA bundle (a TLS-inspecting corporate proxy, or the sandbox's own CA),
the User-Agent, debug logging with secrets redacted, and the adapter that lets msal (which speaks
``requests``) use the same httpx transport. TLS verification is always on; a ``ca_bundle`` adds
trust, it never removes it.

Core code builds clients with :func:`build_client` / :func:`build_async_client`; tests pass a
``transport`` (``httpx.MockTransport`` or an ASGI transport) to stay off the network.
"""

from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from presencectl import __version__

log = logging.getLogger(__name__)

USER_AGENT = f"presencectl/{__version__}"
DEFAULT_TIMEOUT = 30.0

_SECRET_FIELDS = (
    "password",
    "client_secret",
    "refresh_token",
    "access_token",
    "id_token",
    "code",
    "device_code",
    "client_assertion",
    "secretText",
    "assertion",
)
_FORM_RE = re.compile(r"(?i)\b(" + "|".join(_SECRET_FIELDS) + r")=([^&\s]+)")
_JSON_RE = re.compile(r'(?i)"(' + "|".join(_SECRET_FIELDS) + r')"\s*:\s*"[^"]*"')
_BEARER_RE = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """Return ``text`` with tokens, passwords and secrets replaced by ``***``."""
    text = _FORM_RE.sub(lambda m: f"{m.group(1)}=***", text)
    text = _JSON_RE.sub(lambda m: f'"{m.group(1)}": "***"', text)
    return _BEARER_RE.sub(lambda m: f"{m.group(1)} ***", text)


@dataclass(frozen=True)
class HttpSettings:
    """What every client of one profile shares."""

    ca_bundle: str | None = None
    proxy: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    user_agent: str = USER_AGENT
    # Hosts whose port msal drops when it builds a URL itself (the user-realm request):
    # {"127.0.0.1": 8765}. See MsalHttpClient.
    msal_port_fixes: dict[str, int] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.ca_bundle:
            ctx.load_verify_locations(cafile=self.ca_bundle)
        return ctx


def _log_request(request: httpx.Request) -> None:
    if log.isEnabledFor(logging.DEBUG):
        body = ""
        if request.content and len(request.content) < 4096:
            body = " " + redact(request.content.decode("utf-8", "replace"))
        log.debug("→ %s %s%s", request.method, redact(str(request.url)), body)


def _log_response(response: httpx.Response) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "← %s %s %s", response.status_code, response.request.method,
            redact(str(response.request.url)),
        )


async def _alog_request(request: httpx.Request) -> None:
    _log_request(request)


async def _alog_response(response: httpx.Response) -> None:
    _log_response(response)


def _client_kwargs(settings: HttpSettings, base_url: str, http2: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "base_url": base_url,
        "timeout": httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
        "headers": {"User-Agent": settings.user_agent},
        "verify": settings.ssl_context(),
        "http2": http2,
        "follow_redirects": False,
    }
    if settings.proxy:
        kwargs["proxy"] = settings.proxy
    return kwargs


def _http2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


def build_client(
    settings: HttpSettings,
    *,
    base_url: str = "",
    transport: httpx.BaseTransport | None = None,
    http2: bool = False,
    limits: httpx.Limits | None = None,
) -> httpx.Client:
    """A synchronous httpx client with the profile's TLS, proxy, timeout and logging."""
    kwargs = _client_kwargs(settings, base_url, http2 and _http2_available())
    if transport is not None:
        kwargs["transport"] = transport
    if limits is not None:
        kwargs["limits"] = limits
    kwargs["event_hooks"] = {"request": [_log_request], "response": [_log_response]}
    return httpx.Client(**kwargs)


def build_async_client(
    settings: HttpSettings,
    *,
    base_url: str = "",
    transport: httpx.AsyncBaseTransport | None = None,
    http2: bool = False,
    limits: httpx.Limits | None = None,
) -> httpx.AsyncClient:
    """An asyncio httpx client with the profile's TLS, proxy, timeout and logging."""
    kwargs = _client_kwargs(settings, base_url, http2 and _http2_available())
    if transport is not None:
        kwargs["transport"] = transport
    if limits is not None:
        kwargs["limits"] = limits
    kwargs["event_hooks"] = {"request": [_alog_request], "response": [_alog_response]}
    return httpx.AsyncClient(**kwargs)


class MsalHttpClient:
    """The ``http_client`` msal accepts: requests-like ``get``/``post`` over our httpx client.

    httpx responses already carry ``status_code``, ``text``, ``headers`` and
    ``raise_for_status()``, which is all msal reads. One correction: msal builds the user-realm
    URL from the authority's host *without its port* (msal/authority.py), so for an authority on a
    non-default port (the sandbox) the port is put back here.
    """

    def __init__(self, client: httpx.Client, port_fixes: dict[str, int] | None = None) -> None:
        self._client = client
        self._port_fixes = dict(port_fixes or {})

    def _fix(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.port is None and parts.hostname in self._port_fixes:
            netloc = f"{parts.hostname}:{self._port_fixes[parts.hostname]}"
            return urlunsplit(parts._replace(netloc=netloc))
        return url

    @staticmethod
    def _timeout(kwargs: dict[str, Any]) -> Any:
        timeout = kwargs.get("timeout")
        return timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        return self._client.get(
            self._fix(url), params=params, headers=_clean(headers), timeout=self._timeout(kwargs)
        )

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> Any:
        json_body = kwargs.get("json")
        return self._client.post(
            self._fix(url),
            params=params,
            data=data if isinstance(data, dict) else None,
            content=data if isinstance(data, (str, bytes)) else None,
            json=json_body,
            headers=_clean(headers),
            timeout=self._timeout(kwargs),
        )

    def close(self) -> None:
        self._client.close()


def _clean(headers: Any) -> dict[str, str] | None:
    if not headers:
        return None
    return {k: v for k, v in dict(headers).items() if v is not None}


def msal_http_client(settings: HttpSettings, transport: httpx.BaseTransport | None = None) -> MsalHttpClient:
    """An msal ``http_client`` that shares the profile's HTTP settings."""
    return MsalHttpClient(build_client(settings, transport=transport), settings.msal_port_fixes)
