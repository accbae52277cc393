"""The one HTTP stack: every outbound call of presencectl goes through a client built here.

Owns: timeouts, proxy, the CA bundle (a TLS-inspecting corporate proxy, or the sandbox's own CA),
the User-Agent, debug logging with secrets redacted (:func:`redact`, also applied to every log
record by the CLI's log handler), and the adapter that lets msal (which speaks ``requests``) use
the same httpx stack. TLS verification is always on; a ``ca_bundle`` adds trust, it never
removes it.

Core code builds clients with :func:`build_client` / :func:`build_async_client`; tests pass a
``transport`` (``httpx.MockTransport`` or an ASGI transport) to stay off the network.

httpx is imported inside the functions that need it, so that importing :func:`redact` (the CLI's
log filter does) costs nothing at start-up.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from presencectl import __version__
from presencectl.errors import ConfigError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

USER_AGENT = f"presencectl/{__version__}"
DEFAULT_TIMEOUT = 30.0

# A key is secret when it names a password, secret, token, assertion or credential (any case,
# any prefix: client_secret, newPassword, secretText, refresh_token, client_assertion), a key
# (privateKey, dataKey, key_pem, api_key, sig), a Graph subscription's clientState, or an OAuth
# code (code, device_code, user_code).
_SECRET_KEY = (
    r"(?:[A-Za-z0-9_.-]*?(?:password|passwd|secret|token|assertion|credential|api[_-]?key"
    r"|client_?state)[A-Za-z0-9_.-]*|[A-Za-z0-9_.-]*key(?:_pem)?|sig|code|[A-Za-z0-9_.-]*_code)"
)
# key=value in a form body or a URL query.
_FORM_RE = re.compile(r"(?i)(?<![A-Za-z0-9_.-])(" + _SECRET_KEY + r")=([^&\s\"',;]+)")
# "key": "value" in JSON (escaped quotes inside the value included), and 'key': 'value' (repr).
_JSON_RE = re.compile(r'(?i)"(' + _SECRET_KEY + r')"(\s*:\s*)"(?:[^"\\]|\\.)*"')
_REPR_RE = re.compile(r"(?i)'(" + _SECRET_KEY + r")'(\s*:\s*)'(?:[^'\\]|\\.)*'")
# Authorization headers in any rendering: "Authorization: Bearer x", {'authorization': 'Basic x'}.
_AUTH_HEADER_RE = re.compile(
    r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:(bearer|basic|negotiate|ntlm)\s+)?[^\s\"',}]+"
)
_BEARER_RE = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}")
_BASIC_RE = re.compile(r"\b(Basic)\s+[A-Za-z0-9+/]{8,}={0,2}")
# Credentials in a URL: scheme://user:password@host (a proxy URL) keeps the user, not the password.
_URL_CREDENTIALS_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@\"']*:)[^/\s@\"']+@")
# A PEM private key, whole (a certificate's key printed by mistake).
_PEM_KEY_RE = re.compile(
    r"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S
)


def redact(text: str) -> str:
    """Return ``text`` with tokens, passwords, secrets and OAuth codes replaced by ``***``.

    Covers form bodies and URL queries (``client_secret=…``), JSON (``"newPassword": "…"``,
    ``"clientState": "…"``), Python reprs, Authorization headers (Bearer and Basic), the password
    of a URL (``http://user:***@proxy``) and PEM private keys.
    """
    text = _PEM_KEY_RE.sub(lambda m: f"-----BEGIN {m.group(1)}----- *** (redacted)", text)
    text = _URL_CREDENTIALS_RE.sub(lambda m: f"{m.group(1)}***@", text)
    text = _AUTH_HEADER_RE.sub(
        lambda m: m.group(1) + (f"{m.group(2)} " if m.group(2) else "") + "***", text
    )
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)} ***", text)
    text = _BASIC_RE.sub(lambda m: f"{m.group(1)} ***", text)
    text = _FORM_RE.sub(lambda m: f"{m.group(1)}=***", text)
    text = _JSON_RE.sub(lambda m: f'"{m.group(1)}"{m.group(2)}"***"', text)
    return _REPR_RE.sub(lambda m: f"'{m.group(1)}'{m.group(2)}'***'", text)


class RedactingFilter(logging.Filter):
    """A log filter that redacts secrets from every record (ours and third parties'): the message
    with its arguments, the traceback of ``log.exception`` and the stack of ``stack_info``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken log call must not break the program
            return True
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            # Formatters print exc_text when it is set: the traceback, rendered once, redacted.
            record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FORMATTER = logging.Formatter()


def path_segment(value: str) -> str:
    """``value`` (a user id or UPN, an object id from an answer) quoted for one path segment:
    ``/``, ``?``, ``#`` (a guest's ``#EXT#``) and ``..`` cannot change the request's target."""
    from urllib.parse import quote

    return quote(str(value), safe="@")


def route_uvicorn_logs(*, access: bool) -> None:
    """uvicorn's loggers without handlers of their own: their records reach the root logger, so
    the CLI's handler and RedactingFilter see them (uvicorn's default config prints to stdout and
    stderr directly, an access line with its query string unredacted). Call it after building
    ``uvicorn.Config(log_config=None, …)``, which still sets the loggers' levels."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = access or name != "uvicorn.access"


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
        """The system's trust store, plus ``ca_bundle`` when the profile names one.

        Built once per process and CA file (its path, size and mtime): loading the system store
        costs ~25 ms of CPU, and a one-shot sync builds ten clients (bench/cycle.py profile)."""
        path = Path(self.ca_bundle).expanduser() if self.ca_bundle else None
        key: tuple[str, int, int] | None = None
        if path is not None:
            try:
                st = path.stat()
                key = (str(path), st.st_size, st.st_mtime_ns)
            except OSError:
                key = None  # load_verify_locations below reports it
        cached = _SSL_CONTEXTS.get(key) if (key is not None or path is None) else None
        if cached is not None:
            return cached
        ctx = ssl.create_default_context()
        if path is not None:
            try:
                ctx.load_verify_locations(cafile=str(path))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"ca_bundle {path} cannot be used: {getattr(exc, 'strerror', None) or exc}",
                    hint="point the profile's ca_bundle key at a readable PEM file "
                    "(`presencectl config path` shows the file)",
                    code="ca_bundle_invalid",
                ) from exc
        if key is not None or path is None:
            _SSL_CONTEXTS[key] = ctx
        return ctx


_SSL_CONTEXTS: dict[tuple[str, int, int] | None, ssl.SSLContext] = {}


def _log_request(request: httpx.Request) -> None:
    if log.isEnabledFor(logging.DEBUG):
        body = ""
        try:
            content = request.content
        except Exception:  # a streaming body has no content to show
            content = b""
        if content and len(content) < 4096:
            body = " " + redact(content.decode("utf-8", "replace"))
        log.debug("→ %s %s%s", request.method, redact(str(request.url)), body)


def _log_response(response: httpx.Response) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "← %s %s %s",
            response.status_code,
            response.request.method,
            redact(str(response.request.url)),
        )


async def _alog_request(request: httpx.Request) -> None:
    _log_request(request)


async def _alog_response(response: httpx.Response) -> None:
    _log_response(response)


def _client_kwargs(settings: HttpSettings, base_url: str) -> dict[str, Any]:
    import httpx

    kwargs: dict[str, Any] = {
        "base_url": base_url,
        "timeout": httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
        "headers": {"User-Agent": settings.user_agent},
        "verify": settings.ssl_context(),
        # HTTP/1.1 only: Graph's presence path is bound by its throttle (50 requests/s), which a
        # pool of kept-alive connections already saturates; HTTP/2 would be a path no test
        # speaks (the sandbox is HTTP/1.1) for no measured gain (docs/performance.md).
        "http2": False,
        "follow_redirects": False,
        # A profile without a proxy key still honours HTTPS_PROXY / NO_PROXY, as curl does.
        "trust_env": True,
    }
    if settings.proxy:
        kwargs["proxy"] = settings.proxy
    return kwargs


def build_client(
    settings: HttpSettings,
    *,
    base_url: str = "",
    transport: httpx.BaseTransport | None = None,
    limits: httpx.Limits | None = None,
) -> httpx.Client:
    """A synchronous httpx client with the profile's TLS, proxy, timeout and logging."""
    import httpx

    kwargs = _client_kwargs(settings, base_url)
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
    limits: httpx.Limits | None = None,
) -> httpx.AsyncClient:
    """An asyncio httpx client with the profile's TLS, proxy, timeout and logging."""
    import httpx

    kwargs = _client_kwargs(settings, base_url)
    if transport is not None:
        kwargs["transport"] = transport
    if limits is not None:
        kwargs["limits"] = limits
    kwargs["event_hooks"] = {"request": [_alog_request], "response": [_alog_response]}
    return httpx.AsyncClient(**kwargs)


class MsalHttpClient:
    """The ``http_client`` msal accepts: requests-like ``get``/``post`` over our httpx client.

    httpx responses already carry ``status_code``, ``text``, ``headers`` and
    ``raise_for_status()``, which is all msal reads. Two corrections make it behave like the
    ``requests.Session`` msal expects:

    - msal builds the user-realm URL from the authority's *hostname*, dropping its port
      (``msal/authority.py``: ``"https://{netloc}/common/userrealm/…".format(netloc=self.instance)``),
      so for an authority on a non-default port (the sandbox) the port is put back here;
    - ``requests`` leaves out form fields and query parameters whose value is ``None``; httpx
      would send them as empty strings.
    """

    def __init__(self, client: httpx.Client, port_fixes: Mapping[str, int] | None = None) -> None:
        self._client = client
        self._port_fixes = {host.lower(): port for host, port in (port_fixes or {}).items()}

    def _fix(self, url: str) -> str:
        parts = urlsplit(url)
        host = parts.hostname
        if host is None or parts.port is not None or host not in self._port_fixes:
            return url
        shown = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo + '@' if userinfo else ''}{shown}:{self._port_fixes[host]}"
        return urlunsplit(parts._replace(netloc=netloc))

    @staticmethod
    def _timeout(kwargs: Mapping[str, Any]) -> Any:
        import httpx

        timeout = kwargs.get("timeout")
        return timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        return self._client.get(
            self._fix(url),
            params=_drop_none(params),
            headers=_drop_none(headers),
            timeout=self._timeout(kwargs),
        )

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> Any:
        form = _drop_none(data) if isinstance(data, Mapping) else None
        content = data if isinstance(data, (str, bytes)) else None
        return self._client.post(
            self._fix(url),
            params=_drop_none(params),
            data=form,
            content=content,
            json=kwargs.get("json"),
            headers=_drop_none(headers),
            timeout=self._timeout(kwargs),
        )

    def close(self) -> None:
        self._client.close()


def _drop_none(values: Any) -> dict[str, Any] | None:
    """requests-style parameters for httpx: None dropped, bytes decoded (msal hands a signed
    client assertion over as bytes; requests sends it as is, httpx would send ``b'…'``)."""
    if not values:
        return None
    return {
        k: v.decode() if isinstance(v, bytes) else v
        for k, v in dict(values).items()
        if v is not None
    }


def msal_http_client(
    settings: HttpSettings, transport: httpx.BaseTransport | None = None
) -> MsalHttpClient:
    """An msal ``http_client`` that shares the profile's HTTP settings."""
    return MsalHttpClient(build_client(settings, transport=transport), settings.msal_port_fixes)


def retry_after_seconds(
    source: httpx.Response | Mapping[str, str], now: float | None = None
) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or HTTP date); None if absent or unreadable.

    Takes a response or any header mapping (a ``$batch`` member's plain dict), looked up
    case-insensitively. Graph and Connect clients both use it.
    """
    import email.utils
    import time

    # A response carries .headers; a mapping is the headers (httpx stays lazily imported here).
    headers = cast("Mapping[str, str]", source.headers if hasattr(source, "headers") else source)
    value = next((str(v).strip() for k, v in headers.items() if k.lower() == "retry-after"), "")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
