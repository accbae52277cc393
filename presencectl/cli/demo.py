"""demo: the whole product against an in-process sandbox, in one command."""

from __future__ import annotations

import typer

from presencectl.cli._stub import not_built


def demo(users: int = typer.Option(20, "--users"), duration: float = typer.Option(60, "--duration")) -> None:
    """Show the whole product on this machine, with no cloud account."""
    not_built("demo")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
