"""mapping show / mapping check: the status mapping of both directions, as a table."""

from __future__ import annotations

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

mapping_app = typer.Typer(help="Show or check the status mapping.", no_args_is_help=True)
mapping_app.callback()(group_options)

DIRECTIONS = ("both", "teams-to-connect", "connect-to-teams")
_COLUMNS = ["direction", "source_label", "source", "target_label", "target", "origin", "note"]
_HEADERS = {
    "direction": "Direction",
    "source_label": "Status set",
    "source": "Source (Graph pair / Connect value)",
    "target_label": "Shown on the other side",
    "target": "Target",
    "origin": "Origin",
    "note": "Note",
}


@mapping_app.command("show")
def show(
    ctx: typer.Context,
    direction: str = typer.Option(
        "both",
        "--direction",
        help="both | teams-to-connect | connect-to-teams",
        autocompletion=lambda incomplete: [
            d for d in ("both", "teams-to-connect", "connect-to-teams") if d.startswith(incomplete)
        ],
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Print the status mapping table (the seed's table, plus extensions and profile overrides).

    Examples: presencectl mapping show · presencectl -o json mapping show --direction both
    """
    from dataclasses import asdict

    from presencectl.errors import UsageError
    from presencectl.mapping import Mapping

    if direction not in DIRECTIONS:
        raise UsageError(
            f"--direction is '{direction}'", hint="use one of: " + ", ".join(DIRECTIONS)
        )
    app = app_context(ctx)
    profile = app.load_profile(must_exist=False)
    mapping = Mapping.from_profile(profile)
    rows = [asdict(row) for row in mapping.rows(direction)]
    if app.json:
        app.render(rows)
        return
    for row in rows:
        if row["target"] == "unaltered" and row["note"]:
            row["target_label"] = f"Unaltered ({row['note']})"
            row["note"] = ""
    app.render(rows, columns=_COLUMNS, headers=_HEADERS, title="Status mapping")


@mapping_app.command("check")
def check(
    ctx: typer.Context,
    file: str = typer.Argument(
        ..., help="TOML file with [mapping.teams_to_connect] / [mapping.connect_to_teams]"
    ),
    apply: bool = typer.Option(
        False, "--apply", help="Store the checked overrides in the active profile."
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Validate a mapping override file (exit 3 naming every bad key; no such file: exit 2).

    The file holds [mapping.teams_to_connect] and/or [mapping.connect_to_teams] tables, or the
    same two tables at top level. With --apply the overrides replace the profile's.

    \b
    Examples:
      presencectl mapping check overrides.toml
      presencectl --profile contoso mapping check overrides.toml --apply
    """
    import tomllib
    from pathlib import Path

    from presencectl.errors import ConfigError, UsageError
    from presencectl.mapping import Mapping, override_problems

    path = Path(file)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file", hint="pass the path of a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", hint="fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}", hint="check the path") from None
    where = f"{path}: [mapping]"
    tables = doc.get("mapping", doc) if isinstance(doc.get("mapping", doc), dict) else None
    if tables is None:
        raise ConfigError(f"{path}: key 'mapping' must be a table", hint="see docs/mapping.md")
    if not tables:
        raise ConfigError(
            f"{path}: no [mapping.teams_to_connect] or [mapping.connect_to_teams] table",
            hint='write e.g. [mapping.connect_to_teams] on_break = "Away/Away"',
        )
    problems = override_problems(tables, where=where)
    if len(problems) > 1:
        raise ConfigError(
            f"{len(problems)} bad keys: " + "; ".join(p.message for p in problems),
            hint=" | ".join(dict.fromkeys(p.hint for p in problems if p.hint)),
        )
    mapping = Mapping(tables, where=where)
    overridden = [r for r in mapping.rows() if r.origin == "override"]
    summary = {
        "file": str(path),
        "status": "ok",
        "overrides": len(overridden),
        "teams_to_connect": len(tables.get("teams_to_connect", {}) or {}),
        "connect_to_teams": len(tables.get("connect_to_teams", {}) or {}),
    }
    app = app_context(ctx)
    if apply:
        from presencectl.config_edit import apply_mapping

        change = apply_mapping(app.profile_name, dict(tables))
        summary["applied_to"] = change.profile
    if app.json:
        app.render(summary)
        return
    app.render(summary, columns=list(summary))


def register(app: typer.Typer) -> None:
    app.add_typer(mapping_app, name="mapping")
