"""sandbox serve: the local Entra ID + Graph + Connect stand-in, from the command line."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from presencectl.cli.context import app_context
from presencectl.cli.options import (
    NoInputOption,
    OutputFormat,
    OutputOption,
    ProfileOption,
    QuietOption,
    VerboseOption,
    group_options,
)
from presencectl.errors import UsageError

SAVE_EVERY_TICKS = 5  # the world is saved (when it changed) once a second while serving

sandbox_app = typer.Typer(
    help="Run the local sandbox (Entra ID, Graph and Connect).", no_args_is_help=True
)
sandbox_app.callback()(group_options)


@sandbox_app.command("serve")
def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Loopback address to listen on."),
    port: int = typer.Option(0, "--port", help="Port (0 picks a free one)."),
    users: int = typer.Option(25, "--users", min=2, help="People in the simulated organisation."),
    seed: int = typer.Option(
        1, "--seed", help="Seed of the organisation (same seed, same people)."
    ),
    throttle: int = typer.Option(
        1500, "--throttle", min=1, help="Presence requests per window per app."
    ),
    throttle_window: float = typer.Option(
        30.0, "--throttle-window", min=0.1, help="Throttle window, seconds."
    ),
    fault_rate: float = typer.Option(
        0.0, "--fault-rate", min=0.0, max=1.0, help="Share of 5xx answers."
    ),
    write_profile: str | None = typer.Option(
        None,
        "--write-profile",
        metavar="NAME",
        help="Write a presencectl profile pointing at the sandbox.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Let --write-profile replace a profile that is not a sandbox one."
    ),
    auto_approve: list[str] | None = typer.Option(
        None,
        "--auto-approve",
        metavar="EMAIL",
        help="Approve this user's device-code and browser sign-ins at once (repeatable: the "
        "admin and each sync user).",
    ),
    token_lifetime: int = typer.Option(
        3600, "--token-lifetime", min=30, help="Access token lifetime, seconds."
    ),
    allow_http_notifications: bool = typer.Option(
        False,
        "--allow-http-notifications",
        help="Also accept http:// loopback notification URLs (Graph demands https).",
    ),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Start a new world (new tenant id) instead of the one kept for this port and profile.",
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Serve the sandbox on loopback over HTTPS until Ctrl-C.

    Prints one JSON line on stdout, {"base_url", "ca_bundle", "world", "home"}; logs go to
    stderr. With a fixed --port the world (app registrations, secrets, consents, users and
    passwords, presence, subscriptions) and the CA are kept in the state directory for that
    port and --write-profile, and loaded on the next start (--users and --seed shape a new
    world only); --fresh starts a new one.

    \b
    Examples:
      presencectl sandbox serve --port 8765 --write-profile sandbox \\
          --auto-approve admin@contoso.example
      curl --cacert CA https://127.0.0.1:8765/_sandbox/profile
    """
    from presencectl.cli.signals import stop_on_signals
    from presencectl.sandbox.server import running_sandbox

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise UsageError(
            f"--host {host} is not a loopback address",
            hint="the sandbox serves 127.0.0.1 or ::1 only",
        )
    if host == "localhost":
        host = "127.0.0.1"
    home = None
    if write_profile:
        from presencectl.config import check_profile_name
        from presencectl.config_edit import guard_sandbox_profile, guard_served_profile

        check_profile_name(write_profile)  # before the sandbox starts, not after

        guard_sandbox_profile(write_profile, force=force, command="sandbox serve --write-profile")
        guard_served_profile(write_profile, command="sandbox serve --write-profile")
    if port:
        from presencectl.sandbox.persist import SandboxHome

        home = SandboxHome.for_serve(port, write_profile)
    app_ctx = app_context(ctx)
    verbosity = app_ctx.verbosity
    log_level = "debug" if verbosity >= 2 else "info" if verbosity >= 1 else "warning"
    with (
        stop_on_signals() as stop,
        running_sandbox(
            users=users,
            seed=seed,
            throttle=throttle,
            throttle_window=throttle_window,
            fault_rate=fault_rate,
            auto_approve=auto_approve,
            host=host,
            port=port,
            token_lifetime=token_lifetime,
            log_level=log_level,
            allow_http_notifications=allow_http_notifications,
            home=home,
            fresh=fresh,
        ) as sb,
    ):
        world = "loaded" if sb.loaded else "new" if home is not None else "temporary"
        line: dict[str, Any] = {
            "base_url": sb.base_url,
            "ca_bundle": sb.ca_bundle,
            "world": world,
            "home": str(home.path) if home is not None else None,
        }
        if write_profile:
            sb.write_profile(write_profile)
            line["profile"] = write_profile
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        if home is None:
            kept = "a temporary world (--port 0: nothing kept)"
        elif sb.loaded:
            kept = f"the world kept in {home.path} (--fresh for a new one)"
        else:
            kept = f"a new world, kept in {home.path}"
        app_ctx.status(
            f"sandbox on {sb.base_url} (tenant {sb.world.tenant_id}, {kept}); Ctrl-C stops it"
        )
        ticks = 0
        while not stop.wait(0.2):
            ticks += 1
            if home is not None and ticks % SAVE_EVERY_TICKS == 0:
                sb.save()


def register(app: typer.Typer) -> None:
    app.add_typer(sandbox_app, name="sandbox")
