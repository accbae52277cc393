"""Placeholder for commands whose issue has not landed: exit 3 with one honest line."""

from __future__ import annotations

from presencectl.errors import NotBuiltError


def not_built(command: str) -> None:
    raise NotBuiltError(f"`presencectl {command}` is not built yet", hint="see the open issues")
