"""The built-in receiver of Graph change notifications (``sync --watch --notify-url``).

Owns a small Starlette app served by uvicorn inside the sync's own event loop, on ``--listen``
(plain HTTP behind a reverse proxy that terminates TLS, or HTTPS with a certificate and key):

- ``POST ?validationToken=…`` answers 200 ``text/plain`` with the decoded token (Graph's
  handshake, within 10 s: change-notifications-delivery-webhooks.md);
- any other ``POST`` is a ``changeNotificationCollection``: each item's ``clientState`` is checked
  (a mismatch is dropped and counted, never trusted) and the rest are handed to ``sink`` at once;
  the answer is 202, before any processing (Graph wants a 2xx within 3 s, and the resource-data
  page says to answer before validating so a rogue sender learns nothing); with
  ``check_tokens`` the batch's ``validationTokens`` are verified after the answer, and a batch
  that fails is dropped whole (``dropped_untrusted``).

The endpoint faces the internet, so the HTTP layer bounds what one sender can cost (issue 26):
a body over ``max_body`` (1 MiB) is answered 413 without being read past the limit (a
``Content-Length`` over it is refused before any of the body is read); a body that is not a
JSON change-notification collection — including one nested deep enough to exhaust the parser's
recursion — is answered 400 without a traceback; JSON is parsed in a worker thread, off the
sync's event loop; at most ``max_items`` items of one POST are looked at (the rest are dropped
and counted); each POST logs at most one summary warning, never one per item; and uvicorn's
``limit_concurrency`` answers 503 beyond ``max_connections`` open connections and tasks.

``sink`` must not block (``sync/notify.py`` puts into a bounded queue). The receiver never logs a
notification's content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from presencectl.graph.notifications import Untrusted, client_state_ok, parse_collection

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8765"
Sink = Callable[[list[Mapping[str, Any]]], None]

# Limits of the HTTP layer (docs/running-as-a-service.md repeats them for the reverse proxy).
# Graph documents no largest POST; a rich presence item is ~2 KB, so 1 MiB holds hundreds.
MAX_BODY = 1024 * 1024
MAX_ITEMS = 1000
MAX_CONNECTIONS = 64


class _BadBody(Exception):
    """A POST body that is not a change-notification collection (answered 400)."""


class _TooLarge(Exception):
    """A POST body over the limit (answered 413)."""


def _decode(raw: bytes) -> tuple[dict[str, Any], list[Mapping[str, Any]]]:
    """The document of one POST body and its items; _BadBody for anything else. Runs in a
    worker thread."""
    import json

    try:
        doc = json.loads(raw)
        return doc, parse_collection(doc)
    except (ValueError, RecursionError, Untrusted) as exc:
        # RecursionError: "[[[[…" nested past the interpreter's limit.
        raise _BadBody(type(exc).__name__) from None


async def _read_limited(request: Any, limit: int) -> bytes:
    """The request body, refused (_TooLarge) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class ReceiverCounts:
    """What arrived (for ``status``): items received, dropped by reason, last arrival (epoch)."""

    received: int = 0
    dropped_client_state: int = 0
    dropped_untrusted: int = 0
    dropped_excess: int = 0  # items past MAX_ITEMS in one POST
    refused_large: int = 0  # POSTs answered 413
    overflows: int = 0
    last_at: float | None = None
    validations: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_client_state + self.dropped_untrusted + self.dropped_excess


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port); ValueError when malformed."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen wants HOST:PORT, not {text!r}")
    return host, int(port)


class NotificationReceiver:
    """Listens for Graph notifications; ``start`` binds (OSError when it cannot)."""

    def __init__(
        self,
        listen: str,
        client_state: str,
        sink: Sink | None,
        *,
        certfile: str | None = None,
        keyfile: str | None = None,
        clock: Callable[[], float] | None = None,
        max_body: int = MAX_BODY,
        max_items: int = MAX_ITEMS,
        max_connections: int = MAX_CONNECTIONS,
        routes: Sequence[Any] = (),
        check_tokens: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        import time

        self.host, self.port = parse_listen(listen)
        self.client_state = client_state
        self.sink = sink  # None: no notifications, only the routes below (health, metrics)
        self.routes = list(routes)  # served first: sync/probes.py's /healthz, /readyz, /metrics
        # The batch's validationTokens (graph/notifications.py ValidationTokenChecker.check):
        # a batch that fails is answered 202 like any other and dropped whole.
        self.check_tokens = check_tokens
        self.certfile, self.keyfile = certfile, keyfile
        self.counts = ReceiverCounts()
        self.max_body, self.max_items = max_body, max_items
        self.max_connections = max_connections
        self._clock = clock or time.time
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.certfile else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/"

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.background import BackgroundTask
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, Response
        from starlette.routing import Route

        async def notify(request: Request) -> Response:
            token = request.query_params.get("validationToken")
            if token is not None:
                self.counts.validations += 1
                return PlainTextResponse(token, status_code=200)
            try:
                raw = await _read_limited(request, self.max_body)
            except _TooLarge:
                self.counts.refused_large += 1
                log.warning("refused a notification POST over %d bytes (413)", self.max_body)
                # Connection: close — uvicorn then drops the connection instead of reading
                # and discarding the rest of a body that may never end.
                return PlainTextResponse(
                    "body too large", status_code=413, headers={"connection": "close"}
                )
            try:
                doc, items = await asyncio.to_thread(_decode, raw)
            except _BadBody:
                self.counts.dropped_untrusted += 1
                log.warning(
                    "dropped a notification POST that is not a change notification collection (400)"
                )
                return PlainTextResponse("not a change notification collection", status_code=400)
            if self.check_tokens is None:
                self.accept(items)
                return Response(status_code=202)
            # The 202 goes out first; the tokens are checked after (the keys may need a fetch).
            later = BackgroundTask(self._verify_then_accept, doc, items)
            return Response(status_code=202, background=later)

        async def health(request: Request) -> Response:
            return PlainTextResponse("ok")

        routes = [*self.routes, Route("/healthz", health, methods=["GET"])]
        if self.sink is not None:
            routes.append(Route("/{path:path}", notify, methods=["POST"]))
        return Starlette(routes=routes)

    async def _verify_then_accept(
        self, doc: Mapping[str, Any], items: list[Mapping[str, Any]]
    ) -> None:
        if await self._tokens_verified(doc, items):
            self.accept(items)

    async def _tokens_verified(
        self, doc: Mapping[str, Any], items: list[Mapping[str, Any]]
    ) -> bool:
        """False (the batch counted as dropped_untrusted) when its validationTokens fail."""
        if self.check_tokens is None:
            return True
        try:
            await self.check_tokens(doc)
        except Untrusted as exc:
            dropped = min(len(items), self.max_items) or 1
            self.counts.received += dropped
            self.counts.dropped_untrusted += dropped
            log.warning(
                "dropped %d notification(s) whose validation tokens failed: %s", dropped, exc
            )
            return False
        return True

    def accept(self, items: list[Mapping[str, Any]]) -> None:
        """Check and hand on the items of one POST; never raises (the answer is 202).

        At most ``max_items`` are looked at; one summary warning for what was dropped."""
        excess = max(0, len(items) - self.max_items)
        if excess:
            items = items[: self.max_items]
            self.counts.dropped_excess += excess
        trusted = []
        wrong_state = 0
        for item in items:
            self.counts.received += 1
            if client_state_ok(item, self.client_state):
                trusted.append(item)
            else:
                wrong_state += 1
        self.counts.dropped_client_state += wrong_state
        if wrong_state or excess:
            log.warning(
                "dropped %d of %d notifications in one POST: %d with a wrong clientState (not "
                "from our Graph subscription), %d past the limit of %d per POST",
                wrong_state + excess,
                len(items) + excess,
                wrong_state,
                excess,
                self.max_items,
            )
        if trusted and self.sink is not None:
            self.counts.last_at = self._clock()
            self.sink(trusted)

    async def start(self) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        self._socket = sock
        self.port = sock.getsockname()[1]
        from presencectl.transport import route_uvicorn_logs

        config = uvicorn.Config(
            self.app(),
            log_config=None,  # uvicorn's records go through our handler (route_uvicorn_logs)
            log_level="warning",
            lifespan="off",
            access_log=False,
            server_header=False,
            ssl_certfile=self.certfile,
            ssl_keyfile=self.keyfile,
            timeout_graceful_shutdown=1,
            # Beyond this many open connections and tasks uvicorn answers 503 (issue 26).
            limit_concurrency=self.max_connections,
        )
        route_uvicorn_logs(access=False)
        self._server = _quiet_server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        for _ in range(500):
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it
        log.info("notification receiver listening on %s", self.url)

    async def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=3)
            self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _quiet_server_class() -> Any:
    import uvicorn

    class QuietServer(uvicorn.Server):
        """uvicorn without its signal handlers: the sync owns SIGINT/SIGTERM."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        def install_signal_handlers(self) -> None:  # uvicorn < 0.29
            return

    return QuietServer


def _quiet_server(config: Any) -> Any:
    return _quiet_server_class()(config)


__all__ = ["DEFAULT_LISTEN", "NotificationReceiver", "ReceiverCounts", "parse_listen"]
