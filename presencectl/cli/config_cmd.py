"""config path / config show: where the configuration lives and what it holds (never secrets)."""

from __future__ import annotations

import typer

from presencectl.cli._stub import not_built

config_app = typer.Typer(help="Show the configuration file and profiles.", no_args_is_help=True)


@config_app.command("path")
def path() -> None:
    """Print the path of config.toml."""
    not_built("config path")


@config_app.command("show")
def show() -> None:
    """Show the profile's settings (secrets never shown)."""
    not_built("config show")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
