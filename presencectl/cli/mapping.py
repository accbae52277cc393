"""mapping show / mapping check: the status mapping of both directions, as a table."""

from __future__ import annotations

import typer

from presencectl.cli._stub import not_built

mapping_app = typer.Typer(help="Show or check the status mapping.", no_args_is_help=True)


@mapping_app.command("show")
def show(direction: str = typer.Option("both", "--direction")) -> None:
    """Print the status mapping table."""
    not_built("mapping show")


@mapping_app.command("check")
def check(file: str = typer.Argument(...)) -> None:
    """Validate a mapping override file."""
    not_built("mapping check")


def register(app: typer.Typer) -> None:
    app.add_typer(mapping_app, name="mapping")
