"""doctor: every prerequisite checked, each with a remedy; the exit code follows the worst result.

Renders what :func:`presencectl.doctor.run_doctor` returns: on a terminal a table coloured by
status, piped the plain table (or csv / md), and with ``-o json`` one document
``{"profile", "checks": [{"name", "status", "detail", "remedy", "code"}], "worst", "exit_code"}``
for monitoring. Progress (one line per check, as it finishes) goes to stderr on a terminal.
"""

from __future__ import annotations

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
)

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim", "info": "cyan"}
_COLUMNS = ["name", "status", "detail", "remedy"]
_HEADERS = {"name": "Check", "status": "Status", "detail": "Detail", "remedy": "Remedy"}


def _coloured_table(checks: list[dict[str, Any]], title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    from presencectl import output

    table = Table(title=title)
    for column in _COLUMNS:
        table.add_column(_HEADERS[column], overflow="fold")
    for check in checks:
        style = _STYLE.get(check["status"], "")
        table.add_row(
            escape(check["name"]),
            f"[{style}]{check['status']}[/]",
            escape(check["detail"]),
            escape(check["remedy"]),
        )
    output.data_console(sys.stdout).print(table)


def doctor(
    ctx: typer.Context,
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Check everything a sync needs, each with a one-line remedy.

    Config and profile, keyring, secrets, reachability, clock skew, the Azure app and its
    secret's expiry, consent, the sync user's sign-in, the Connect token and account contact,
    and the email matching. Exit 0 when nothing failed (warnings allowed); otherwise 3
    (configuration or prerequisite), 4 (sign-in or consent) or 1 (network, other).

    Examples:

        presencectl doctor

        presencectl --profile contoso -o json doctor
    """
    from presencectl.doctor import run_doctor

    app_ctx = app_context(ctx)
    progress = app_ctx.output == "table" and sys.stderr.isatty() and app_ctx.verbosity >= 0

    def on_check(check: Any) -> None:
        if progress:
            app_ctx.status(f"[{_STYLE.get(check.status, '')}]{check.status:>4}[/] {check.name}")

    report = run_doctor(app_ctx.profile_name, on_check=on_check)
    data = report.to_dict()
    if app_ctx.json:
        app_ctx.render(data)
    elif app_ctx.output == "table" and sys.stdout.isatty():
        _coloured_table(data["checks"], f"presencectl doctor — profile {report.profile}")
    elif app_ctx.output == "csv":  # for scripts: the stable code too
        app_ctx.render(data["checks"], columns=[*_COLUMNS, "code"])
    else:
        app_ctx.render(data["checks"], columns=_COLUMNS, headers=_HEADERS)
    if app_ctx.output != "json" and app_ctx.verbosity >= 0:
        summary = {"ok": "all checks passed", "warn": "passed with warnings", "fail": "failed"}
        app_ctx.status(f"doctor: {summary.get(report.worst, report.worst)}")
    raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
