"""Entra ID emulation: OpenID metadata, token endpoint (all grants), device code, admin consent, user realm."""

from __future__ import annotations

from starlette.routing import BaseRoute

from presencectl.sandbox.world import World


def entra_routes(world: World) -> list[BaseRoute]:
    return []
