"""Assembly of the sandbox's one Starlette app: Entra, Graph, Connect, SignalR hub, control API.

Owns the route table, the Graph error handler and the per-endpoint request counter
(``world.stats``, keyed by route name). The routes come from the other sandbox modules:
``entra``, ``directory_api``, ``control`` (the control API), ``graph_api.graph_presence_routes``,
``presence_control.control_routes`` (the ``/_sandbox/teams/*`` and ``/_sandbox/connect/*``
presence control endpoints), ``connect_api.connect_routes`` and the SignalR hub's own routes.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from presencectl.sandbox import (
    connect_api,
    control,
    directory_api,
    entra,
    graph_api,
    presence_control,
)
from presencectl.sandbox.errors import GraphError
from presencectl.sandbox.signalr import SignalRHub
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
        counted = False

        def count() -> None:
            nonlocal counted
            if not counted:
                counted = True
                route = scope.get("route")
                self.world.stats.count(getattr(route, "name", None) or "unmatched")

        async def counting_send(message: Message) -> None:
            # Counted before the answer leaves: a client that has its answer must find its
            # request in the stats (a test reading a counter right after a call).
            if message["type"] in ("http.response.start", "websocket.accept", "websocket.close"):
                count()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            count()


def make_hub(world: World) -> SignalRHub:
    """The SignalR hub, authorising Connect tokens of this world."""

    def authorize(token: str) -> bool:
        claims = world.verify_bearer(f"Bearer {token}")
        return (
            claims is not None
            and claims.kind == "connect"
            and "api.service.messaging" in claims.scp
        )

    return SignalRHub(
        path=HUB_PATH,
        authorize=authorize,
        affinity_cookie=lambda: world.faults.hub_affinity_cookie,
    )


def build_routes(world: World, hub: Any) -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    routes += entra.entra_routes(world)
    routes += directory_api.directory_routes(world)
    routes += control.control_routes(world)
    routes += graph_api.graph_presence_routes(world)
    routes += presence_control.control_routes(world)
    routes += connect_api.connect_routes(world, hub)
    if hub is not None:
        routes += hub.routes()
    return routes


async def _graph_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GraphError)
    return exc.to_response(request)


def build_app(world: World, hub: Any = None) -> Starlette:
    """The ASGI app serving ``world`` (the hub defaults to a new SignalR hub)."""
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


__all__ = ["HUB_PATH", "build_app", "make_hub"]
