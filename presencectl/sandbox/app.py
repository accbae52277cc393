"""Assembly of the sandbox's one Starlette app: Entra, Graph, Connect, SignalR hub, control API.

Owns the route table, the Graph error handler and the per-endpoint request counter
(``world.stats``, keyed by route name). Routes of the other sandbox modules are picked up when
their modules exist: ``graph_api.graph_presence_routes(world)``, ``connect_api.connect_routes(world,
hub)``, and their ``control_routes(world)`` for the ``/_sandbox/teams/*`` and
``/_sandbox/connect/*`` control endpoints.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from presencectl.sandbox.errors import GraphError
from presencectl.sandbox.world import World

log = logging.getLogger(__name__)

HUB_PATH = "/univerge/hub/presence"


class RequestCounter:
    """Counts every HTTP request by the name of the route that served it."""

    def __init__(self, app: ASGIApp, world: World) -> None:
        self.app = app
        self.world = world

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            name = getattr(route, "name", None) or "unmatched"
            self.world.stats.count(name)


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(f"presencectl.sandbox.{module}")
    except ImportError as exc:
        if exc.name != f"presencectl.sandbox.{module}":
            raise
        log.debug("sandbox module %s not built yet", module)
        return None


def make_hub(world: World) -> Any:
    """S2's SignalR hub authorising Connect tokens of this world, or None if not built."""
    signalr = _optional("signalr")
    if signalr is None:
        return None

    def authorize(token: str) -> bool:
        claims = world.verify_bearer(f"Bearer {token}")
        return (
            claims is not None
            and claims.kind == "connect"
            and "api.service.messaging" in claims.scp
        )

    return signalr.SignalRHub(
        path=HUB_PATH,
        authorize=authorize,
        affinity_cookie=lambda: world.faults.hub_affinity_cookie,
    )


def build_routes(world: World, hub: Any) -> list[BaseRoute]:
    from presencectl.sandbox import control, directory_api, entra

    routes: list[BaseRoute] = []
    routes += entra.entra_routes(world)
    routes += directory_api.directory_routes(world)
    routes += control.control_routes(world)
    graph_api = _optional("graph_api")
    if graph_api is not None:
        routes += graph_api.graph_presence_routes(world)
        if hasattr(graph_api, "control_routes"):
            routes += graph_api.control_routes(world)
    connect_api = _optional("connect_api")
    if connect_api is not None:
        routes += connect_api.connect_routes(world, hub)
        if hasattr(connect_api, "control_routes"):
            routes += connect_api.control_routes(world)
    if hub is not None:
        routes += hub.routes()
    return routes


async def _graph_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GraphError)
    return exc.to_response(request)


def build_app(world: World, hub: Any = None) -> Starlette:
    """The ASGI app serving ``world`` (the hub defaults to a new SignalR hub, if built)."""
    if hub is None:
        hub = make_hub(world)
    world.extra["hub"] = hub
    app = Starlette(routes=build_routes(world, hub), exception_handlers={GraphError: _graph_error})
    app.add_middleware(RequestCounter, world=world)
    from presencectl.sandbox.throttle import RetryAfterDelivery

    app.add_middleware(RetryAfterDelivery, world=world)  # outermost: arrival and 429 delivery

    from presencectl.sandbox.outage import OutageMiddleware

    app.add_middleware(OutageMiddleware, world=world)  # outside even that: the outage_s fault
    app.state.world = world
    app.state.hub = hub
    return app


__all__ = ["HUB_PATH", "Message", "build_app", "make_hub"]
