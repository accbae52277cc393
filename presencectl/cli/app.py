"""The root command: global options, command registration, and the one error boundary (main)."""

from __future__ import annotations

import logging
import sys
from enum import Enum
from typing import Optional

import typer

from presencectl import __version__
from presencectl.cli import config_cmd, demo, doctor, identity, mapping, sandbox, sync
from presencectl.cli.context import AppContext, env_output_default

log = logging.getLogger(__name__)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    md = "md"


app = typer.Typer(
    name="presencectl",
    help=(
        "Keep presence in step between Microsoft Teams and Univerge Blue Connect.\n\n"
        "Start with `presencectl demo` (no account needed), then `presencectl setup-azure`."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"presencectl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    profile: Optional[str] = typer.Option(
        None, "--profile", envvar="PRESENCECTL_PROFILE", help="Profile (one tenant) to use."
    ),
    output_format: OutputFormat = typer.Option(
        env_output_default(), "-o", "--output", envvar="PRESENCECTL_OUTPUT",
        help="Output format for data on stdout.", case_sensitive=False,
    ),
    verbose: int = typer.Option(0, "-v", "--verbose", count=True, help="More logging (-vv: debug)."),
    quiet: int = typer.Option(0, "-q", "--quiet", count=True, help="Less logging."),
    no_input: bool = typer.Option(False, "--no-input", help="Never prompt; a missing answer is an error."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Keep presence in step between Microsoft Teams and Univerge Blue Connect."""
    from presencectl import output

    global _last_context
    verbosity = verbose - quiet
    output.setup_logging(verbosity)
    ctx.obj = _last_context = AppContext(
        profile_name=profile,
        output=output_format.value,
        verbosity=verbosity,
        no_input=no_input or not sys.stdin.isatty(),
    )


for module in (identity, sync, mapping, doctor, sandbox, demo, config_cmd):
    module.register(app)


def main() -> None:
    """Console entry point: run the app and turn every error into its exit code."""
    sys.exit(run(sys.argv[1:]))


def run(argv: list[str]) -> int:
    """Run one command line and return its exit code; errors are rendered, never raised."""
    from presencectl.errors import ExitCode, PresencectlError

    global _last_context, _argv
    _last_context, _argv = None, list(argv)
    try:
        result = app(args=list(argv), prog_name="presencectl", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except PresencectlError as err:
        from presencectl import output

        output.render_error(err, _current_format())
        if _verbosity() >= 2:
            log.debug("traceback", exc_info=True)
        code = int(err.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = int(ExitCode.INTERRUPTED)
    except SystemExit as exc:  # typer.Exit inside callbacks
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:  # noqa: BLE001 - the one place a surprise becomes a clean error
        import click

        if isinstance(exc, click.exceptions.Abort):
            sys.stderr.write("aborted\n")
            code = int(ExitCode.INTERRUPTED)
        elif isinstance(exc, click.exceptions.Exit):
            code = exc.exit_code
        elif isinstance(exc, click.ClickException):
            exc.show()
            code = exc.exit_code
        else:
            from presencectl import output
            from presencectl.errors import PresencectlError as _E

            err = _E(
                f"unexpected {type(exc).__name__}: {exc}",
                hint="run again with -vv for the traceback, and report it if it persists",
                code="unexpected",
            )
            output.render_error(err, _current_format())
            if _verbosity() >= 2:
                import traceback

                traceback.print_exc()
            code = int(ExitCode.ERROR)
    return int(code)


def _ctx_obj() -> AppContext | None:
    import click

    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if isinstance(ctx.obj, AppContext):
            return ctx.obj
        ctx = ctx.parent
    return _last_context


_last_context: AppContext | None = None
_argv: list[str] = []


def _current_format() -> str:
    obj = _ctx_obj()
    if obj is not None:
        return obj.output
    argv = _argv
    for i, arg in enumerate(argv):
        if arg in ("-o", "--output") and i + 1 < len(argv):
            return argv[i + 1].lower()
        if arg.startswith("--output="):
            return arg.split("=", 1)[1].lower()
    return env_output_default()


def _verbosity() -> int:
    obj = _ctx_obj()
    if obj is not None:
        return obj.verbosity
    return sum(a.count("v") for a in _argv if a.startswith("-v") and set(a[1:]) == {"v"})
