"""The local Entra ID + Microsoft Graph + Univerge Blue Connect stand-in (docs/architecture.md).

``running_sandbox(...)`` runs one in-process for tests, demo and bench; ``presencectl sandbox
serve`` runs one from the command line. Heavy modules load lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from presencectl.sandbox.server import Sandbox, SandboxServer, running_sandbox
    from presencectl.sandbox.world import World

__all__ = ["Sandbox", "SandboxServer", "World", "running_sandbox"]


def __getattr__(name: str) -> Any:
    if name in ("Sandbox", "SandboxServer", "running_sandbox"):
        from presencectl.sandbox import server

        return getattr(server, name)
    if name == "World":
        from presencectl.sandbox.world import World

        return World
    raise AttributeError(name)
