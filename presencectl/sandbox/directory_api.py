"""Graph v1.0 directory endpoints: /me, /users, /applications, /servicePrincipals, grants."""

from __future__ import annotations

from starlette.routing import BaseRoute

from presencectl.sandbox.world import World


def directory_routes(world: World) -> list[BaseRoute]:
    return []
