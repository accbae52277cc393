"""sandbox serve: the local Entra ID + Graph + Connect stand-in."""

from __future__ import annotations

import typer

from presencectl.cli._stub import not_built

sandbox_app = typer.Typer(help="Run the local sandbox (Entra ID, Graph and Connect).", no_args_is_help=True)


@sandbox_app.command("serve")
def serve(port: int = typer.Option(0, "--port")) -> None:
    """Serve the sandbox on loopback over HTTPS."""
    not_built("sandbox serve")


def register(app: typer.Typer) -> None:
    app.add_typer(sandbox_app, name="sandbox")
