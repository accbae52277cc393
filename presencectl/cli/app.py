"""The root command: global options, command registration, and the one error boundary (run).

Global options (``--profile``, ``-o/--output``, ``-v``, ``-q``, ``--no-input``) may be written
before the command or anywhere after it (``presencectl mapping show -o json``): the root and
every command declare them (``cli/options.py``), and :func:`run` hands click the command line
as it is, with the run's :class:`AppContext` as the context object they fill.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Sequence
from typing import Any

import typer

from presencectl import __version__
from presencectl.cli import config_cmd, demo, doctor, identity, mapping, sandbox, sync
from presencectl.cli import connect as connect_cmd
from presencectl.cli.context import AppContext, app_context
from presencectl.cli.options import (
    NoInputOption,
    OutputFormat,
    OutputOption,
    ProfileOption,
    QuietOption,
    VerboseOption,
    options_in,
)

log = logging.getLogger(__name__)

app = typer.Typer(
    name="presencectl",
    help=(
        "Keep presence in step between Microsoft Teams and Univerge Blue Connect.\n\n"
        "Start with `presencectl demo` (no account needed), then `presencectl setup-azure`. "
        "Global options may also follow the command: `presencectl mapping show -o json`."
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
    profile: ProfileOption = None,
    output_format: OutputOption = OutputFormat.table,
    verbose: VerboseOption = 0,
    quiet: QuietOption = 0,
    no_input: NoInputOption = False,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Keep presence in step between Microsoft Teams and Univerge Blue Connect."""
    from presencectl import output

    # The options' callbacks filled ctx.obj (cli/options.py); those after the command add to it.
    output.setup_logging(app_context(ctx).verbosity)


for module in (identity, sync, mapping, doctor, sandbox, demo, config_cmd):
    module.register(app)
connect_cmd.register(app)


def main() -> None:
    """Console entry point: run the app and turn every error into its exit code."""
    sys.exit(run(sys.argv[1:]))


@functools.cache
def root_command() -> Any:
    """The click command tree of the app (built once per process)."""
    return typer.main.get_command(app)


# --- the error boundary -----------------------------------------------------------------------


def run(argv: Sequence[str], context: AppContext | None = None) -> int:
    """Run one command line and return its exit code; errors are rendered, never raised.

    ``context`` receives the global options as parsed (a test may pass its own to look at it).
    """
    from presencectl.errors import ExitCode, PresencectlError

    app_ctx = context if context is not None else AppContext()
    command = root_command()
    try:
        result = command.main(
            args=list(argv), prog_name="presencectl", standalone_mode=False, obj=app_ctx
        )
        code = result if isinstance(result, int) and not isinstance(result, bool) else 0
    except PresencectlError as err:
        _report(err, app_ctx, exc_info=True)
        code = int(err.exit_code)
    except KeyboardInterrupt:
        code = int(ExitCode.INTERRUPTED)
    except SystemExit as exc:  # shell completion, or a sys.exit in a command
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BrokenPipeError:
        # `presencectl … | head`: the reader left; say nothing more, on a quiet stdout.
        from presencectl.cli.pipe import silence_stdout

        silence_stdout()
        code = int(ExitCode.ERROR)
    except Exception as exc:  # the one place a surprise becomes a clean error
        framework_code = _framework_exit(exc, argv)
        if framework_code is not None:
            code = framework_code
        else:
            from presencectl.transport import redact

            surprise = PresencectlError(
                redact(f"unexpected {type(exc).__name__}: {exc}"),
                hint="run again with -vv for the traceback, and report it if it persists",
                code="unexpected",
            )
            _report(surprise, app_ctx, exc_info=True)
            code = int(ExitCode.ERROR)
    return int(code)


def _framework_exit(exc: Exception, argv: Sequence[str]) -> int | None:
    """Exit code for typer/click's own exceptions (usage errors → 2, abort → 130); else None.

    typer ≥ 0.20 carries its own copy of click (``typer.TyperException``); older typer raises
    click's exceptions. Both are recognised by shape, not by module.
    """
    from presencectl.errors import ExitCode, UsageError

    if isinstance(exc, typer.Abort) or type(exc).__name__ == "Abort":
        sys.stderr.write("aborted\n")
        return int(ExitCode.INTERRUPTED)
    if isinstance(exc, typer.Exit) or type(exc).__name__ == "Exit":
        return int(getattr(exc, "exit_code", 0))
    exit_code = getattr(exc, "exit_code", None)
    show = getattr(exc, "show", None)
    if not isinstance(exit_code, int) or not callable(show):
        return None
    from presencectl import output

    # Click stopped parsing at the error: read -o from the whole line (before or after the command).
    output_format = options_in(argv, root_command()).output
    hint = "see `presencectl --help`"
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        hint = f"see `{ctx.command_path} --help`"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    if type(exc).__name__ == "NoArgsIsHelpError":
        show()  # the help itself
        message = "a command is required"
        if output_format == "json":
            output.render_error_json(UsageError(message, hint=hint))
        return exit_code
    # One error format for every error: the usage line, then our "error:" and "hint:" lines
    # (click's own "Error:" would be the one capitalised prefix of the tool).
    usage = ctx.get_usage() if ctx is not None and hasattr(ctx, "get_usage") else ""
    if usage:
        sys.stderr.write(usage + "\n")
    output.render_error(UsageError(message, hint=hint), output_format)
    return exit_code


def _report(err: Any, app_ctx: AppContext, *, exc_info: bool) -> None:
    from presencectl import output

    output.render_error(err, app_ctx.output)
    if exc_info and app_ctx.verbosity >= 2:
        import traceback

        from presencectl.transport import redact

        sys.stderr.write(redact(traceback.format_exc()))
