"""The root command: global options, command registration, and the one error boundary (run).

Global options (``--profile``, ``-o/--output``, ``-v``, ``-q``, ``--no-input``) may be written
before the command or anywhere after it (``presencectl mapping show -o json``): :func:`run` moves
them to the front unless the command defines an option of the same name.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Optional

import typer

from presencectl import __version__
from presencectl.cli import config_cmd, demo, doctor, identity, mapping, sandbox, sync
from presencectl.cli import connect as connect_cmd
from presencectl.cli.context import AppContext, env_output_default

log = logging.getLogger(__name__)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    md = "md"


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


def _complete_profile(incomplete: str) -> list[str]:
    """Shell completion of --profile: the profiles in config.toml."""
    try:
        from presencectl.config import list_profiles

        return [name for name in list_profiles() if name.startswith(incomplete)]
    except Exception:  # a broken config.toml must not break the shell's completion
        return []


def _version(value: bool) -> None:
    if value:
        typer.echo(f"presencectl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    profile: Optional[str] = typer.Option(  # noqa: UP045 - typer needs Optional on 3.11 too
        None,
        "--profile",
        envvar="PRESENCECTL_PROFILE",
        help="Profile (one tenant) to use.  [default: default]",
        autocompletion=_complete_profile,
    ),
    output_format: OutputFormat = typer.Option(
        OutputFormat.table,
        "-o",
        "--output",
        envvar="PRESENCECTL_OUTPUT",
        help="Output format for data on stdout.",
        case_sensitive=False,
    ),
    verbose: int = typer.Option(
        0, "-v", "--verbose", count=True, show_default=False, help="More logging (-vv: debug)."
    ),
    quiet: int = typer.Option(
        0, "-q", "--quiet", count=True, show_default=False, help="Less logging."
    ),
    no_input: bool = typer.Option(
        False,
        "--no-input",
        help="Never prompt; a missing answer is an error (implied without a TTY).",
    ),
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
connect_cmd.register(app)


def main() -> None:
    """Console entry point: run the app and turn every error into its exit code."""
    sys.exit(run(sys.argv[1:]))


# --- global options anywhere ------------------------------------------------------------------

_GLOBAL_VALUE_OPTIONS = ("--profile", "-o", "--output")
_GLOBAL_FLAG_OPTIONS = ("-v", "--verbose", "-q", "--quiet", "--no-input")


def _option_names(command: Any) -> dict[str, bool]:
    """{option name: takes a value} for one click command."""
    names: dict[str, bool] = {}
    for param in getattr(command, "params", []):
        if getattr(param, "param_type_name", "") != "option":
            continue
        takes_value = not (getattr(param, "is_flag", False) or getattr(param, "count", False))
        for name in [*param.opts, *param.secondary_opts]:
            names[name] = takes_value
    return names


def _global_option(token: str) -> tuple[str, bool] | None:
    """(name, value follows in the next token) when ``token`` is a global option."""
    if token in _GLOBAL_FLAG_OPTIONS:
        return token, False
    if len(token) > 2 and token[0] == "-" and set(token[1:]) <= {"v"}:
        return "-v", False  # -vv
    if len(token) > 2 and token[0] == "-" and set(token[1:]) <= {"q"}:
        return "-q", False
    if token in _GLOBAL_VALUE_OPTIONS:
        return token, True
    name = token.split("=", 1)[0]
    if "=" in token and name in ("--profile", "--output"):
        return name, False
    if token.startswith("-o") and not token.startswith("--"):
        return "-o", False  # -ojson
    return None


def hoist_global_options(argv: Sequence[str], root_command: Any) -> list[str]:
    """Move global options written after the command name in front of it.

    An option the command itself defines (same name) stays where it is; ``--`` ends the scan.
    """
    front: list[str] = []
    rest: list[str] = []
    command: Any = root_command
    entered = False  # past the first command name
    args = list(argv)
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            rest.extend(args[i:])
            break
        if not entered:
            front.append(token)
            if token in _GLOBAL_VALUE_OPTIONS and i + 1 < len(args):
                front.append(args[i + 1])
                i += 1
            elif not token.startswith("-"):
                entered = True
                command = getattr(command, "commands", {}).get(token)
                front.pop()
                rest.append(token)
            i += 1
            continue
        own = _option_names(command)
        hit = _global_option(token)
        if hit is not None and hit[0] not in own:
            front.append(token)
            if hit[1] and i + 1 < len(args):
                front.append(args[i + 1])
                i += 1
        else:
            rest.append(token)
            if not token.startswith("-") and command is not None and hasattr(command, "commands"):
                command = command.commands.get(token)  # a nested command (mapping show)
            elif own.get(token) and i + 1 < len(args):  # this option's value, taken as is
                rest.append(args[i + 1])
                i += 1
        i += 1
    return front + rest


_command: Any = None


def root_command() -> Any:
    """The click command tree of the app (built once per process)."""
    global _command
    if _command is None:
        _command = typer.main.get_command(app)
    return _command


# --- the error boundary -----------------------------------------------------------------------


def run(argv: Sequence[str]) -> int:
    """Run one command line and return its exit code; errors are rendered, never raised."""
    from presencectl.errors import ExitCode, PresencectlError

    global _last_context, _argv
    _last_context = None
    command = root_command()
    _argv = hoist_global_options(argv, command)
    try:
        result = command.main(args=list(_argv), prog_name="presencectl", standalone_mode=False)
        code = result if isinstance(result, int) and not isinstance(result, bool) else 0
    except PresencectlError as err:
        _report(err, exc_info=True)
        code = int(err.exit_code)
    except KeyboardInterrupt:
        code = int(ExitCode.INTERRUPTED)
    except SystemExit as exc:  # shell completion, or a sys.exit in a command
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BrokenPipeError:
        # `presencectl … | head`: the reader left; say nothing more, on a quiet stdout.
        _silence_stdout()
        code = int(ExitCode.ERROR)
    except Exception as exc:  # the one place a surprise becomes a clean error
        framework_code = _framework_exit(exc)
        if framework_code is not None:
            code = framework_code
        else:
            from presencectl.transport import redact

            surprise = PresencectlError(
                redact(f"unexpected {type(exc).__name__}: {exc}"),
                hint="run again with -vv for the traceback, and report it if it persists",
                code="unexpected",
            )
            _report(surprise, exc_info=True)
            code = int(ExitCode.ERROR)
    return int(code)


def _framework_exit(exc: Exception) -> int | None:
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

    hint = "see `presencectl --help`"
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        hint = f"see `{ctx.command_path} --help`"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    if type(exc).__name__ == "NoArgsIsHelpError":
        show()  # the help itself
        message = "a command is required"
        if _current_format() == "json":
            output.render_error_json(UsageError(message, hint=hint))
        return exit_code
    # One error format for every error: the usage line, then our "error:" and "hint:" lines
    # (click's own "Error:" would be the one capitalised prefix of the tool).
    usage = ctx.get_usage() if ctx is not None and hasattr(ctx, "get_usage") else ""
    if usage:
        sys.stderr.write(usage + "\n")
    output.render_error(UsageError(message, hint=hint), _current_format())
    return exit_code


def _report(err: Any, *, exc_info: bool) -> None:
    from presencectl import output

    output.render_error(err, _current_format())
    if exc_info and _verbosity() >= 2:
        import traceback

        traceback.print_exc(file=sys.stderr)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # an in-memory stdout (tests) has no file descriptor


_last_context: AppContext | None = None
_argv: list[str] = []


def _current_format() -> str:
    if _last_context is not None:
        return _last_context.output
    fmt = env_output_default()
    argv = _argv
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg in ("-o", "--output") and i + 1 < len(argv):
            fmt = argv[i + 1]
        elif arg.startswith("--output="):
            fmt = arg.split("=", 1)[1]
        elif arg.startswith("-o") and not arg.startswith("--") and len(arg) > 2:
            fmt = arg[2:]
    fmt = fmt.lower()
    return fmt if fmt in ("table", "json", "csv", "md") else "table"


def _verbosity() -> int:
    if _last_context is not None:
        return _last_context.verbosity
    count = 0
    for arg in _argv:
        if arg == "--":
            break
        if arg == "--verbose":
            count += 1
        elif len(arg) > 1 and arg[0] == "-" and set(arg[1:]) == {"v"}:
            count += len(arg) - 1
    return count
