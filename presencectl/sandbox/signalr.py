"""The sandbox's SignalR hub: negotiate + WebSocket transport + the JSON hub protocol, server side.

Owns the wire behaviour of an ASP.NET Core SignalR hub as far as the Connect change feed needs it,
so that the real ``pysignalr`` client (and any other SignalR client) runs unchanged against it:

- ``POST {path}/negotiate`` → ``{"connectionId", "availableTransports": [WebSockets/Text+Binary]}``;
  a client that asks for ``negotiateVersion=1`` also gets ``negotiateVersion`` and a separate
  ``connectionToken`` (which it must then send as ``id``), as ASP.NET Core does. ``pysignalr``
  sends no version, so it gets a version-0 answer and connects with ``id=connectionId``.
- ``WebSocket {path}?id=…`` (``id`` optional: clients may skip negotiation on WebSockets); an
  unknown or already used ``id`` is refused with 404.
- Sticky sessions (``affinity_cookie``, the fault key ``hub_affinity_cookie``): negotiate sets a
  cookie naming the server instance, and a WebSocket that does not send it back reaches
  "another instance", which does not know the connection id: 404, as a load-balanced ASP.NET
  Core hub answers. (pysignalr replays negotiate cookies from 1.3.3.)
- Auth on both: ``access_token`` query parameter or ``Authorization: Bearer``; checked by the
  ``authorize`` callable; refused with 401.
- JSON hub protocol: records end with ``\\x1e``; handshake ``{"protocol":"json","version":1}`` →
  ``{}``; pings (type 6) both ways; server-to-client invocations (type 1); close (type 7). A client
  silent for ``client_timeout`` seconds is closed with an error, like the real server.

Publishing (:meth:`SignalRHub.publish`) must run on the event loop that serves the app;
:meth:`SignalRHub.publish_threadsafe` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

log = logging.getLogger(__name__)

RECORD_SEPARATOR = "\x1e"
INVOCATION = 1
COMPLETION = 3
PING = 6
CLOSE = 7

DEFAULT_PATH = "/univerge/hub/presence"
AFFINITY_COOKIE = "ARRAffinity"
_PENDING_TTL = 60.0  # seconds a negotiated connection id stays usable (ASP.NET: disconnect timeout)

Authorize = Callable[[str], bool]
Switch = Callable[[], bool]
SubscriptionCheck = Callable[[str], bool]


def encode_record(message: dict[str, Any]) -> str:
    """One JSON hub protocol record."""
    return json.dumps(message, separators=(",", ":")) + RECORD_SEPARATOR


def decode_records(text: str) -> list[dict[str, Any]]:
    """Every complete record in ``text`` (a frame may carry several)."""
    out: list[dict[str, Any]] = []
    for part in text.split(RECORD_SEPARATOR):
        if part.strip():
            value = json.loads(part)
            if isinstance(value, dict):
                out.append(value)
    return out


def bearer_token(authorization: str | None, query_token: str | None) -> str | None:
    """The access token a SignalR client sent: ``access_token`` query first, then the header."""
    if query_token:
        return query_token
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


@dataclass(eq=False)
class HubConnection:
    """One live WebSocket client of the hub."""

    connection_id: str
    subscription_id: str | None
    websocket: WebSocket
    connected_at: float = field(default_factory=time.time)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False

    async def send(self, message: dict[str, Any]) -> bool:
        if self.closed:
            return False
        try:
            async with self.send_lock:
                await self.websocket.send_text(encode_record(message))
        except Exception as exc:  # a dead client must not break a publish
            log.debug("hub send to %s failed: %s", self.connection_id, type(exc).__name__)
            self.closed = True
            return False
        return True


class SignalRHub:
    """A SignalR hub endpoint pair for a Starlette app.

    ``authorize(token) -> bool`` decides whether a bearer token may connect (None: anyone may).
    ``subscription_exists(id) -> bool``, when given, refuses a ``subscriptionId`` that is unknown.
    """

    def __init__(
        self,
        path: str = DEFAULT_PATH,
        authorize: Authorize | None = None,
        *,
        subscription_exists: SubscriptionCheck | None = None,
        affinity_cookie: Switch | None = None,
        keep_alive_interval: float = 15.0,
        client_timeout: float = 30.0,
    ) -> None:
        self.path = path.rstrip("/")
        self.authorize = authorize
        self.subscription_exists = subscription_exists
        self.affinity_cookie = affinity_cookie
        self._affinity: dict[str, str] = {}  # connection id the client will send → cookie value
        self.affinity_refused = 0
        self.keep_alive_interval = keep_alive_interval
        self.client_timeout = client_timeout
        self._pending: dict[
            str, tuple[str, float]
        ] = {}  # id the client will send → (connectionId, when)
        self._connections: dict[str, HubConnection] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[int]] = set()
        self.published = 0  # invocation records delivered, for stats and tests

    # -- routes -------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{self.path}/negotiate", self._negotiate, methods=["POST"]),
            WebSocketRoute(self.path, self._websocket),
        ]

    # -- public API -----------------------------------------------------------------------------
    def connections(self, subscription_id: str | None = None) -> list[HubConnection]:
        """Live connections (all, or those of one subscription)."""
        return [
            c
            for c in self._connections.values()
            if not c.closed and (subscription_id is None or c.subscription_id == subscription_id)
        ]

    async def publish(
        self, target: str, arguments: list[Any], subscription_id: str | None = None
    ) -> int:
        """Invoke ``target(*arguments)`` on every live client (or those of one subscription).

        Returns how many clients it reached.
        """
        message = {"type": INVOCATION, "target": target, "arguments": list(arguments)}
        targets = self.connections(subscription_id)
        if not targets:
            return 0
        results = await asyncio.gather(*(c.send(message) for c in targets))
        delivered = sum(1 for ok in results if ok)
        self.published += delivered
        return delivered

    def publish_threadsafe(
        self, target: str, arguments: list[Any], subscription_id: str | None = None
    ) -> concurrent.futures.Future[int] | None:
        """Schedule :meth:`publish` on the hub's loop from any thread.

        Returns a future of the delivery count, or None when nothing can be delivered (nobody
        ever connected) or when called on the hub's own loop (then the publish is a task).
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(self.publish(target, arguments, subscription_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return None
        return asyncio.run_coroutine_threadsafe(
            self.publish(target, arguments, subscription_id), loop
        )

    async def disconnect(
        self,
        subscription_id: str | None = None,
        *,
        error: str | None = None,
        allow_reconnect: bool = True,
    ) -> int:
        """Close connections (all, or one subscription's) with a close record, as a server restart
        or a deleted subscription would. Returns how many were closed."""
        closing = self.connections(subscription_id)
        for conn in closing:
            message: dict[str, Any] = {"type": CLOSE, "allowReconnect": allow_reconnect}
            if error:
                message["error"] = error
            await conn.send(message)
            conn.closed = True
            with contextlib.suppress(Exception):
                await conn.websocket.close(code=1000)
        return len(closing)

    # -- negotiate ----------------------------------------------------------------------------
    def _token_ok(self, token: str | None) -> bool:
        if self.authorize is None:
            return True
        if not token:
            return False
        try:
            return bool(self.authorize(token))
        except Exception:  # a broken token is an unauthorised one
            log.debug("hub authorize raised", exc_info=True)
            return False

    def _subscription_ok(self, subscription_id: str | None) -> bool:
        if self.subscription_exists is None or subscription_id is None:
            return True
        return bool(self.subscription_exists(subscription_id))

    def _purge_pending(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, when) in self._pending.items() if now - when > _PENDING_TTL]:
            del self._pending[key]
            self._affinity.pop(key, None)

    async def _negotiate(self, request: Request) -> Response:
        token = bearer_token(
            request.headers.get("authorization"), request.query_params.get("access_token")
        )
        if not self._token_ok(token):
            return PlainTextResponse(
                "Unauthorized", status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        if not self._subscription_ok(request.query_params.get("subscriptionId")):
            return PlainTextResponse("Subscription not found", status_code=404)
        try:
            version = int(request.query_params.get("negotiateVersion", "0"))
        except ValueError:
            version = 0
        version = max(0, min(version, 1))
        self._purge_pending()
        connection_id = secrets.token_urlsafe(16)
        body: dict[str, Any] = {"connectionId": connection_id}
        if version >= 1:
            connection_token = secrets.token_urlsafe(16)
            body = {
                "negotiateVersion": 1,
                "connectionId": connection_id,
                "connectionToken": connection_token,
            }
            self._pending[connection_token] = (connection_id, time.monotonic())
        else:
            self._pending[connection_id] = (connection_id, time.monotonic())
        body["availableTransports"] = [
            {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}
        ]
        response = JSONResponse(body)
        if self.affinity_cookie is not None and self.affinity_cookie():
            instance = secrets.token_hex(16)
            self._affinity[body.get("connectionToken", connection_id)] = instance
            response.set_cookie(AFFINITY_COOKIE, instance, path="/", secure=True, httponly=True)
        return response

    # -- websocket ----------------------------------------------------------------------------
    async def _deny(self, websocket: WebSocket, status: int, text: str) -> None:
        try:
            await websocket.send_denial_response(PlainTextResponse(text, status_code=status))
        except Exception:  # servers without the denial extension: plain 403
            with contextlib.suppress(Exception):
                await websocket.close(code=1008)

    async def _websocket(self, websocket: WebSocket) -> None:
        self._loop = asyncio.get_running_loop()
        params = websocket.query_params
        token = bearer_token(websocket.headers.get("authorization"), params.get("access_token"))
        if not self._token_ok(token):
            await self._deny(websocket, 401, "Unauthorized")
            return
        subscription_id = params.get("subscriptionId")
        if not self._subscription_ok(subscription_id):
            await self._deny(websocket, 404, "Subscription not found")
            return
        client_id = params.get("id")
        if client_id is not None:
            self._purge_pending()
            expected = self._affinity.pop(client_id, None)
            if expected is not None and websocket.cookies.get(AFFINITY_COOKIE) != expected:
                self.affinity_refused += 1
                await self._deny(websocket, 404, "No Connection with that ID")
                return
            pending = self._pending.pop(client_id, None)
            if pending is None:
                await self._deny(websocket, 404, "No Connection with that ID")
                return
            connection_id = pending[0]
        elif self.affinity_cookie is not None and self.affinity_cookie():
            self.affinity_refused += 1  # no negotiate, no cookie: some other instance
            await self._deny(websocket, 404, "No Connection with that ID")
            return
        else:
            connection_id = secrets.token_urlsafe(16)

        await websocket.accept()
        conn = HubConnection(connection_id, subscription_id, websocket)
        try:
            if not await self._handshake(conn):
                return
            self._connections[connection_id] = conn
            log.debug("hub: %s connected (subscription %s)", connection_id, subscription_id)
            keep_alive = asyncio.create_task(self._keep_alive(conn))
            try:
                await self._receive_loop(conn)
            finally:
                keep_alive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keep_alive
        except WebSocketDisconnect:
            pass
        finally:
            conn.closed = True
            self._connections.pop(connection_id, None)
            log.debug("hub: %s gone", connection_id)

    async def _receive_text(self, websocket: WebSocket, timeout: float) -> str | None:
        """The next frame as text; None when the client closed."""
        message = await asyncio.wait_for(websocket.receive(), timeout)
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("text") is not None:
            return str(message["text"])
        data = message.get("bytes") or b""
        return data.decode("utf-8", "replace")

    async def _handshake(self, conn: HubConnection) -> bool:
        buffer = ""
        try:
            while RECORD_SEPARATOR not in buffer:
                text = await self._receive_text(conn.websocket, self.client_timeout)
                if text is None:
                    return False
                buffer += text
        except TimeoutError:
            await self._close_with(conn, "Handshake was canceled.")
            return False
        head, _, rest = buffer.partition(RECORD_SEPARATOR)
        try:
            request = json.loads(head)
        except ValueError:
            request = None
        if not isinstance(request, dict) or request.get("protocol") != "json":
            protocol = request.get("protocol") if isinstance(request, dict) else None
            await conn.send({"error": f"The protocol '{protocol}' is not supported."})
            await self._close_with(conn, None)
            return False
        if request.get("version") != 1:
            await conn.send(
                {
                    "error": f"The server does not support version {request.get('version')} "
                    "of the 'json' protocol."
                }
            )
            await self._close_with(conn, None)
            return False
        await conn.send({})
        if rest.strip():
            await self._handle_records(conn, rest)
        return True

    async def _close_with(self, conn: HubConnection, error: str | None) -> None:
        if error:
            await conn.send({"type": CLOSE, "error": error, "allowReconnect": True})
        conn.closed = True
        with contextlib.suppress(Exception):
            await conn.websocket.close(code=1000)

    async def _receive_loop(self, conn: HubConnection) -> None:
        while not conn.closed:
            try:
                text = await self._receive_text(conn.websocket, self.client_timeout)
            except TimeoutError:
                await self._close_with(
                    conn, "Server timeout elapsed without receiving a message from the client."
                )
                return
            if text is None:
                return
            if not await self._handle_records(conn, text):
                return

    async def _handle_records(self, conn: HubConnection, text: str) -> bool:
        """Handle client records; False when the client asked to close."""
        try:
            records = decode_records(text)
        except ValueError:
            await self._close_with(conn, "Connection closed with an error. InvalidDataException")
            return False
        for record in records:
            kind = record.get("type")
            if kind == PING:
                continue
            if kind == CLOSE:
                await self._close_with(conn, None)
                return False
            if kind == INVOCATION and record.get("invocationId"):
                # The Connect hub exposes no client-callable methods.
                await conn.send(
                    {
                        "type": COMPLETION,
                        "invocationId": record["invocationId"],
                        "error": f"Unknown hub method '{record.get('target')}'",
                    }
                )
        return True

    async def _keep_alive(self, conn: HubConnection) -> None:
        while not conn.closed:
            await asyncio.sleep(self.keep_alive_interval)
            if not await conn.send({"type": PING}):
                return
