"""enable, disable, sync, status, users: running the sync and reporting on it."""

from __future__ import annotations

import typer

from presencectl.cli._stub import not_built


def enable(direction: str = typer.Option("both", "--direction")) -> None:
    """Turn the sync on for one direction or both."""
    not_built("enable")


def disable(yes: bool = typer.Option(False, "--yes")) -> None:
    """Turn the sync off and clear every session presencectl holds on both sides."""
    not_built("disable")


def sync(watch: bool = typer.Option(False, "--watch")) -> None:
    """Run one sync cycle, or keep syncing with --watch."""
    not_built("sync")


def status() -> None:
    """Show what is configured and enabled, the last sync, sessions held and health."""
    not_built("status")


def users(unmatched: bool = typer.Option(False, "--unmatched")) -> None:
    """Show how users are matched by email across Teams and Connect."""
    not_built("users")


def register(app: typer.Typer) -> None:
    for fn, name in ((enable, "enable"), (disable, "disable"), (sync, "sync"), (status, "status"), (users, "users")):
        app.command(name)(fn)
