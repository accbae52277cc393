"""setup-azure, consent, sync-user: the Azure side of the seed's setup steps."""

from __future__ import annotations

from typing import Optional

import typer

from presencectl.cli._stub import not_built

sync_user_app = typer.Typer(help="Store, validate or forget the dedicated Azure sync user.", no_args_is_help=True)


def setup_azure(
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Tenant id or domain."),
) -> None:
    """Sign in as the Azure admin, check prerequisites, create the app and grant consent."""
    not_built("setup-azure")


def consent(check: bool = typer.Option(False, "--check", help="Only verify.")) -> None:
    """Grant (or with --check verify) the presence permissions of the app."""
    not_built("consent")


@sync_user_app.command("set")
def sync_user_set(username: str = typer.Option(..., "--username")) -> None:
    """Store the sync user's name and password."""
    not_built("sync-user set")


@sync_user_app.command("validate")
def sync_user_validate() -> None:
    """Sign in as the sync user and prove it can read presence."""
    not_built("sync-user validate")


@sync_user_app.command("forget")
def sync_user_forget() -> None:
    """Remove the stored sync user credentials."""
    not_built("sync-user forget")


def register(app: typer.Typer) -> None:
    app.command("setup-azure")(setup_azure)
    app.command("consent")(consent)
    app.add_typer(sync_user_app, name="sync-user")
