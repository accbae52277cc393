"""The global options, declared once: `--profile`, `-o/--output`, `-v`, `-q`, `--no-input`.

Owns the ``Annotated`` aliases that the root command, every command group and every command
take (so an option works before the command name or after it, as ``presencectl mapping show
-o json``), and the one rule that merges them into the run's :class:`AppContext`
(``ctx.obj``), applied by each option's callback as click parses it:

- at the root every source counts: the command line, then the environment
  (``PRESENCECTL_PROFILE``, ``PRESENCECTL_OUTPUT``), then the default; a stdin that is not a
  terminal implies ``--no-input``;
- below the root (a group or a command) only what the command line says counts, and it wins:
  ``--profile`` and ``-o`` replace the root's value, ``-v``/``-q`` add to the count,
  ``--no-input`` turns prompting off.

A command takes all five, last in its signature, as ``_profile: ProfileOption = None``,
``_output: OutputOption = OutputFormat.table`` and so on (the leading underscore: the body never
reads them; it reads :func:`~presencectl.cli.context.app_context`); a group takes them through
:func:`group_options`. A command that means something else by one of these names simply does not
take that alias (a test checks that every command of the tree takes them all).
:func:`options_in` reads the same declarations from a whole command line, for the error
boundary, when a usage error stopped click before it reached the options after the command.
"""

import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, Optional

import typer

from presencectl.cli.context import AppContext, app_context


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    md = "md"


def _complete_profile(incomplete: str) -> list[str]:
    """Shell completion of --profile: the profiles in config.toml."""
    try:
        from presencectl.config import list_profiles

        return [name for name in list_profiles() if name.startswith(incomplete)]
    except Exception:  # a broken config.toml must not break the shell's completion
        return []


def _at_root(ctx: typer.Context) -> bool:
    return ctx.parent is None


def _on_command_line(ctx: typer.Context, param: typer.CallbackParam) -> bool:
    source = ctx.get_parameter_source(param.name or "")
    return source is not None and source.name == "COMMANDLINE"


def _relog(ctx: typer.Context, app: AppContext) -> None:
    """Below the root the logging is already set up (root callback): set it up again."""
    if not _at_root(ctx):
        from presencectl import output

        output.setup_logging(app.verbosity)


def _merge_profile(
    ctx: typer.Context,
    param: typer.CallbackParam,
    value: Optional[str],  # noqa: UP045
) -> Optional[str]:  # noqa: UP045
    if _at_root(ctx) or _on_command_line(ctx, param):
        app_context(ctx).profile_name = value
    return value


def _merge_output(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    if value is not None and (_at_root(ctx) or _on_command_line(ctx, param)):
        app_context(ctx).output = str(getattr(value, "value", value)).lower()
    return value


def _merge_verbose(ctx: typer.Context, param: typer.CallbackParam, value: int) -> int:
    if value and (_at_root(ctx) or _on_command_line(ctx, param)):
        app = app_context(ctx)
        app.verbosity += value
        _relog(ctx, app)
    return value


def _merge_quiet(ctx: typer.Context, param: typer.CallbackParam, value: int) -> int:
    if value and (_at_root(ctx) or _on_command_line(ctx, param)):
        app = app_context(ctx)
        app.verbosity -= value
        _relog(ctx, app)
    return value


def _merge_no_input(ctx: typer.Context, param: typer.CallbackParam, value: bool) -> bool:
    app = app_context(ctx)
    if _at_root(ctx):
        app.no_input = value or not sys.stdin.isatty()
    elif value and _on_command_line(ctx, param):
        app.no_input = True
    return value


ProfileOption = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional on 3.11 too
    typer.Option(
        "--profile",
        envvar="PRESENCECTL_PROFILE",
        help="Profile (one tenant) to use.  [default: default]",
        autocompletion=_complete_profile,
        callback=_merge_profile,
    ),
]
OutputOption = Annotated[
    OutputFormat,
    typer.Option(
        "-o",
        "--output",
        envvar="PRESENCECTL_OUTPUT",
        help="Output format for data on stdout.",
        case_sensitive=False,
        callback=_merge_output,
    ),
]
VerboseOption = Annotated[
    int,
    typer.Option(
        "-v",
        "--verbose",
        count=True,
        show_default=False,
        help="More logging (-vv: debug).",
        callback=_merge_verbose,
    ),
]
QuietOption = Annotated[
    int,
    typer.Option(
        "-q", "--quiet", count=True, show_default=False, help="Less logging.", callback=_merge_quiet
    ),
]
NoInputOption = Annotated[
    bool,
    typer.Option(
        "--no-input",
        help="Never prompt; a missing answer is an error (implied without a TTY).",
        callback=_merge_no_input,
    ),
]


# A command group's callback (``config -o json path``). No docstring on purpose: a callback's
# docstring would replace the group's own help.
def group_options(
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    pass  # the options' callbacks did the work


GLOBAL_OPTION_NAMES = ("--profile", "--output", "--verbose", "--quiet", "--no-input")


def options_in(argv: Sequence[str], root: Any) -> AppContext:
    """The global options a whole command line holds, read with the root's declarations alone.

    For the error boundary: a usage error stops click before it reaches the options written
    after the command, yet ``config show --bogus -o json`` must still answer in JSON. Anything
    else on the line is skipped; a line these options cannot parse gives the defaults.
    """
    from typer.core import TyperCommand

    params = [p for p in root.params if set(p.opts) & set(GLOBAL_OPTION_NAMES)]
    reader = TyperCommand(
        name=root.name,
        params=params,
        context_settings={
            "ignore_unknown_options": True,
            "allow_extra_args": True,
            "help_option_names": [],
        },
    )
    found = AppContext()
    try:
        reader.make_context("presencectl", list(argv), obj=found)
    except Exception:  # a bad value (`-o yaml`): what the line says cannot be read
        import os

        found = AppContext()
        fallback = os.environ.get("PRESENCECTL_OUTPUT", "table").lower()
        found.output = fallback if fallback in OutputFormat.__members__ else "table"
    return found


__all__ = [
    "NoInputOption",
    "OutputFormat",
    "OutputOption",
    "ProfileOption",
    "QuietOption",
    "VerboseOption",
    "group_options",
    "options_in",
]
