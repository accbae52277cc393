"""doctor: every prerequisite checked, each with a remedy."""

from __future__ import annotations

import typer

from presencectl.cli._stub import not_built


def doctor() -> None:
    """Check everything a sync needs, each with a remedy."""
    not_built("doctor")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
