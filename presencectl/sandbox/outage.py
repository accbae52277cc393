"""The ``outage_s`` fault: the whole service unreachable for a while, as a network outage looks.

Owns :class:`OutageMiddleware` and :func:`arm`. ``POST /_sandbox/faults {"outage_s": N}`` makes
every request of Entra ID, Graph and Connect — the SignalR hub included — fail for N seconds of
the sandbox clock from that moment (setting it again re-arms it; 0 ends it at once). The control
API (``/_sandbox/…``) keeps answering, so that a test can drive the outage.

``outage_target`` narrows it to one side, as when only one provider's network path is down:
``"connect"`` refuses Connect alone (its sign-in, API and hub, everything under ``/univerge/``),
``"microsoft"`` refuses Entra ID and Graph alone; ``"all"`` (the default) refuses both.

What "unreachable" looks like: the TCP connection is dropped without an answer (uvicorn's
transport aborted), which a client sees as a connection reset or a closed connection — the
closest a server in the same process can come to a refused connection or a dead network path.
A 503 would be a different fault (a service that is up but unhealthy): that is ``error_rate``.
Established WebSocket connections (the Connect change feed) are cut at their next message, as a
dead network path cuts a long-lived connection only when something tries to use it.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from presencectl.sandbox.world import World

log = logging.getLogger(__name__)

ARMED_AT = "outage_armed_at"  # world.extra: sandbox-clock time the outage was set
CONTROL_PREFIX = "/_sandbox/"
CONNECT_PREFIX = "/univerge/"  # Connect's sign-in, API and hub (sandbox/control.py's profile)


def arm(world: World) -> None:
    """Start the outage clock (the control API calls this whenever ``outage_s`` is set)."""
    world.extra[ARMED_AT] = world.clock.now()


def active(world: World, path: str | None = None) -> bool:
    """Whether the outage refuses a request for ``path`` now (any request, without a path)."""
    seconds = float(world.faults.outage_s)
    armed = world.extra.get(ARMED_AT)
    if not (seconds > 0 and armed is not None and world.clock.now() < float(armed) + seconds):
        return False
    return path is None or _targets(world.faults.outage_target, path)


def _targets(target: str, path: str) -> bool:
    if target == "all":
        return True
    return path.startswith(CONNECT_PREFIX) is (target == "connect")


def _abort(receive: Receive) -> bool:
    """Drop the connection under uvicorn; False where there is no socket (in-memory ASGI)."""
    owner = getattr(receive, "__self__", None)
    transport = getattr(owner, "transport", None)
    if transport is None:
        return False
    transport.abort()
    return True


async def _abort_and_settle(receive: Receive) -> None:
    """Drop the connection and let uvicorn see it gone before anything else is sent."""
    if not _abort(receive):
        return
    owner = getattr(receive, "__self__", None)
    for _ in range(5):
        await asyncio.sleep(0)
        if getattr(owner, "disconnected", False):
            break


class OutageMiddleware:
    """Drops every connection to the emulated services while the outage lasts."""

    def __init__(self, app: ASGIApp, world: World) -> None:
        self.app = app
        self.world = world

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or str(scope.get("path", "")).startswith(
            CONTROL_PREFIX
        ):
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if active(self.world, path):
            self.world.stats.faults_injected += 1
            await _abort_and_settle(receive)
            # Never sent when the connection is gone (uvicorn drops it; answering keeps it from
            # logging an app that "returned without starting response"); in-memory ASGI gets it.
            if scope["type"] == "http":
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "websocket.close", "code": 1011})
            return
        if scope["type"] == "websocket":
            send = self._cut_when_out(receive, send, path)
        await self.app(scope, receive, send)

    def _cut_when_out(self, receive: Receive, send: Send, path: str) -> Send:
        world = self.world

        async def guarded(message: Message) -> None:
            if active(world, path) and message.get("type") == "websocket.send":
                world.stats.faults_injected += 1
                _abort(receive)
                raise ConnectionResetError("sandbox outage: the connection is gone")
            await send(message)

        return guarded


__all__ = ["OutageMiddleware", "active", "arm"]
