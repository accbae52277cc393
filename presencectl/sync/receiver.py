"""The built-in receiver of Graph change notifications (``sync --watch --notify-url``).

Owns a small Starlette app served by uvicorn inside the sync's own event loop, on ``--listen``
(plain HTTP behind a reverse proxy that terminates TLS, or HTTPS with a certificate and key):

- ``POST ?validationToken=…`` answers 200 ``text/plain`` with the decoded token (Graph's
  handshake, within 10 s: change-notifications-delivery-webhooks.md);
- any other ``POST`` is a ``changeNotificationCollection``: each item's ``clientState`` is checked
  (a mismatch is dropped and counted, never trusted) and the rest are handed to ``sink`` at once;
  the answer is always 202, before any processing (Graph wants a 2xx within 3 s, and the
  resource-data page says to answer before validating so a rogue sender learns nothing); with
  ``check_tokens`` the batch's ``validationTokens`` are verified after the answer, and a batch
  that fails is dropped whole (``dropped_untrusted``).

``sink`` must not block (``sync/notify.py`` puts into a bounded queue). The receiver never logs a
notification's content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from presencectl.graph.notifications import Untrusted, client_state_ok, parse_collection

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8765"
Sink = Callable[[list[Mapping[str, Any]]], None]


@dataclass
class ReceiverCounts:
    """What arrived (for ``status``): items received, dropped by reason, last arrival (epoch)."""

    received: int = 0
    dropped_client_state: int = 0
    dropped_untrusted: int = 0
    overflows: int = 0
    last_at: float | None = None
    validations: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_client_state + self.dropped_untrusted


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
        sink: Sink,
        *,
        certfile: str | None = None,
        keyfile: str | None = None,
        clock: Callable[[], float] | None = None,
        check_tokens: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        import time

        self.host, self.port = parse_listen(listen)
        self.client_state = client_state
        self.sink = sink
        # The batch's validationTokens (graph/notifications.py ValidationTokenChecker.check):
        # a batch that fails is answered 202 like any other and dropped whole.
        self.check_tokens = check_tokens
        self.certfile, self.keyfile = certfile, keyfile
        self.counts = ReceiverCounts()
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
            raw = await request.body()
            if self.check_tokens is None:
                self.accept(raw)
                return Response(status_code=202)
            # The 202 goes out first; the tokens are checked after (the keys may need a fetch).
            later = BackgroundTask(self._verify_then_accept, raw)
            return Response(status_code=202, background=later)

        async def health(request: Request) -> Response:
            return PlainTextResponse("ok")

        return Starlette(
            routes=[
                Route("/healthz", health, methods=["GET"]),
                Route("/{path:path}", notify, methods=["POST"]),
            ]
        )

    async def _verify_then_accept(self, raw: bytes) -> None:
        if await self._tokens_verified(raw):
            self.accept(raw)

    async def _tokens_verified(self, raw: bytes) -> bool:
        """False (the batch counted as dropped_untrusted) when its validationTokens fail."""
        import json

        try:
            doc = json.loads(raw)
        except ValueError:
            return True  # not a collection: accept() counts and drops it
        if not isinstance(doc, dict) or self.check_tokens is None:
            return True
        try:
            await self.check_tokens(doc)
        except Untrusted as exc:
            items = doc.get("value")
            dropped = len(items) if isinstance(items, list) and items else 1
            self.counts.received += dropped
            self.counts.dropped_untrusted += dropped
            log.warning("dropped %d notification(s) whose validation tokens failed: %s",
                        dropped, exc)
            return False
        return True

    def accept(self, raw: bytes) -> None:
        """Check and hand on one POST body; never raises (the answer is 202 whatever it held)."""
        import json

        try:
            items = parse_collection(json.loads(raw))
        except (ValueError, Untrusted):
            self.counts.dropped_untrusted += 1
            log.warning("dropped a notification POST that is not a change notification collection")
            return
        trusted = []
        for item in items:
            self.counts.received += 1
            if client_state_ok(item, self.client_state):
                trusted.append(item)
            else:
                self.counts.dropped_client_state += 1
                log.warning("dropped a notification with a wrong clientState (not from our Graph "
                            "subscription)")
        if trusted:
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
        config = uvicorn.Config(
            self.app(),
            log_level="warning",
            lifespan="off",
            access_log=False,
            server_header=False,
            ssl_certfile=self.certfile,
            ssl_keyfile=self.keyfile,
            timeout_graceful_shutdown=1,
        )
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
