"""config path / show / profiles: where the configuration lives and what it holds (no secrets)."""

from __future__ import annotations

import os
from dataclasses import fields
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

config_app = typer.Typer(
    help="Show and change the configuration file and profiles.", no_args_is_help=True
)
config_app.callback()(group_options)


@config_app.command("path")
def path(
    ctx: typer.Context,
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Print the path of config.toml.

    Example: `$EDITOR "$(presencectl config path)"`; with -o json also the state and secrets paths.
    """
    from presencectl.config import config_dir, config_path, state_dir
    from presencectl.secrets import fallback_path

    app_ctx = app_context(ctx)
    file = config_path()
    if app_ctx.output == "table":
        typer.echo(str(file))  # bare, for $(...) in scripts
        return
    app_ctx.render(
        {
            "config_file": str(file),
            "exists": file.exists(),
            "config_dir": str(config_dir()),
            "state_dir": str(state_dir()),
            "secrets_file": str(fallback_path()),
        }
    )


@config_app.command("show")
def show(
    ctx: typer.Context,
    env: bool = typer.Option(
        False,
        "--env",
        help="Print the environment docs/ci.md's pipeline needs for this profile, as shell "
        "`export` lines (secret values only for a sandbox profile, whose secrets are fake).",
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Show the active profile's settings; secrets only as "set (keyring|env|file)" or "not set".

    \b
    Examples:
      presencectl --profile contoso config show -o json
      eval "$(presencectl --profile sandbox config show --env)"   # then run docs/ci.md's script
    """
    from presencectl.config import Profile, config_path
    from presencectl.secrets import NAMED_SECRETS, describe_source

    app_ctx = app_context(ctx)
    profile = app_ctx.load_profile(check_mapping=False)  # shows a bad mapping, to be fixed
    if env:
        _show_env(app_ctx, profile)
        return
    defaults = Profile()
    settings: dict[str, Any] = {}
    for f in fields(Profile):
        if f.name == "name":
            continue
        settings[f.name] = getattr(profile, f.name)
    if settings.get("proxy"):
        from presencectl.transport import redact

        settings["proxy"] = redact(settings["proxy"])  # http://user:***@proxy:3128
    env_username = os.environ.get("PRESENCECTL_SYNC_USERNAME")
    secrets = {name: describe_source(profile.name, name) for name in NAMED_SECRETS}
    from presencectl.mapping import override_problem_text

    mapping_error = override_problem_text(profile.mapping)
    if app_ctx.output == "json":
        document: dict[str, Any] = {
            "profile": profile.name,
            "config_file": str(config_path()),
            "settings": settings,
            "sync_username_env": env_username,
            "secrets": secrets,
        }
        if mapping_error:
            document["mapping_error"] = mapping_error
        app_ctx.render(document)
        return
    if mapping_error:
        app_ctx.status(f"warning: the mapping overrides are invalid: {mapping_error}")
    rows: list[dict[str, Any]] = []
    for key, value in settings.items():
        origin = "default" if value == getattr(defaults, key) and value not in (None, {}) else ""
        if value is None or value == {}:
            value, origin = "", "not set"
        if isinstance(value, dict):  # one row per entry: a readable width, not one JSON blob
            rows.extend(
                {"key": f"{key}.{name}", "value": entry, "origin": ""}
                for name, entry in _flatten(value)
            )
            continue
        rows.append({"key": key, "value": value, "origin": origin})
    if env_username:
        rows.append(
            {"key": "sync_username", "value": env_username, "origin": "PRESENCECTL_SYNC_USERNAME"}
        )
    rows.extend({"key": key, "value": state, "origin": "secret"} for key, state in secrets.items())
    app_ctx.render(
        rows,
        columns=["key", "value", "origin"],
        title=f"profile {profile.name} ({config_path()})",
    )


def _show_env(app_ctx: Any, profile: Any) -> None:
    import shlex

    from presencectl.config_edit import ci_environment

    lines = ci_environment(profile)
    if app_ctx.json:
        app_ctx.render({line.name: line.value for line in lines})
        return
    out = [f"# docs/ci.md's pipeline environment for profile {profile.name}"]
    if any(line.comment.startswith("fake") for line in lines):
        out.append(
            "# A sandbox profile: its secrets are fake, made by this sandbox run, and open "
            "nothing else."
        )
    for line in lines:
        note = f"  # {line.comment}" if line.comment else ""
        if line.value:
            out.append(f"export {line.name}={shlex.quote(line.value)}{note}")
        else:
            out.append(f"# export {line.name}=…{note}")
    typer.echo("\n".join(out))


def _flatten(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, value in table.items():
        full = f"{prefix}{name}"
        if isinstance(value, dict):
            out.extend(_flatten(value, full + "."))
        else:
            out.append((full, value))
    return out


@config_app.command("profiles")
def profiles(
    ctx: typer.Context,
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """List the profiles in config.toml; the active one is marked.

    Example: `presencectl config profiles -o json`
    """
    from presencectl.config import (
        PROFILE_NAME_CHARS,
        config_path,
        list_profiles,
        load_profile,
        profile_name,
        valid_profile_name,
    )

    app_ctx = app_context(ctx)
    active = profile_name(app_ctx.profile_name)
    rows = []
    for name in list_profiles():
        if not valid_profile_name(name):  # from an earlier version: shown, to be renamed
            app_ctx.status(
                f"warning: profile name {name!r} is no longer accepted: rename it "
                f"({PROFILE_NAME_CHARS} only) in {config_path()}"
            )
            rows.append({"name": name, "active": False, "tenant_id": None,
                         "authority_url": None, "enabled_direction": None})  # fmt: skip
            continue
        profile = load_profile(name, check_mapping=False)
        rows.append(
            {
                "name": name,
                "active": name == active,
                "tenant_id": profile.tenant_id,
                "authority_url": profile.authority_url,
                "enabled_direction": profile.enabled_direction,
            }
        )
    app_ctx.render(rows, title=str(config_path()))


_CHANGE_COLUMNS = ["profile", "key", "value", "previous"]


def _shown(change: Any) -> Any:
    """The change as printed: a proxy URL's password as ``***`` (value and previous)."""
    if change.key != "proxy":
        return change
    from dataclasses import replace

    from presencectl.transport import redact

    def hide(value: Any) -> Any:
        return redact(value) if isinstance(value, str) else value

    return replace(change, value=hide(change.value), previous=hide(change.previous))


def _key_complete(incomplete: str) -> list[str]:
    from presencectl.config_edit import MAPPING_TABLES, settable_keys

    keys = settable_keys() + [f"mapping.{t}." for t in MAPPING_TABLES]
    return [k for k in keys if k.startswith(incomplete)]


# A value may start with "-" (`config set echo_window_s -5` is a value to check, not an option).
@config_app.command("set", context_settings={"ignore_unknown_options": True})
def set_(
    ctx: typer.Context,
    key: str = typer.Argument(
        ..., help="A profile key (`config show` lists them).", autocompletion=_key_complete
    ),
    value: str = typer.Argument(..., help="The new value."),
    create: bool = typer.Option(
        False,
        "--create",
        help="Create the profile when it does not exist yet (otherwise asked; required with "
        "--no-input).",
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Set one key of the active profile, validated like loading.

    A profile that does not exist yet is created after a question (or with --create): a
    misspelt --profile never makes a new profile silently. Secrets are refused: they go through
    setup-azure, sync-user set or the environment.

    \b
    Examples:
      presencectl --profile ci config set --create tenant_id contoso.onmicrosoft.com
      presencectl config set connect_client_id 3f2a…
      presencectl --profile contoso config set proxy http://proxy.contoso.example:3128
      presencectl config set mapping.connect_to_teams.on_break Away/Away
    """
    from presencectl.config import config_path, list_profiles, profile_name
    from presencectl.config_edit import check_key, set_key
    from presencectl.errors import UsageError

    app_ctx = app_context(ctx)
    check_key(key)
    name = profile_name(app_ctx.profile_name)
    existing = list_profiles()
    if not create and name not in existing:
        question = f"There is no profile '{name}' in {config_path()}. Create it?"
        if not app_ctx.interactive:
            shown = ", ".join(existing) if existing else "none yet"
            raise UsageError(
                f"there is no profile '{name}' (profiles: {shown}); `config set` creates one only "
                "when asked to",
                hint="pass --create to make it, or fix --profile / PRESENCECTL_PROFILE",
                code="profile_not_created",
            )
        if not typer.confirm(question, err=True):
            raise UsageError(f"profile '{name}' not created", code="profile_not_created")
    change = set_key(app_ctx.profile_name, key, value)
    app_ctx.render(_shown(change), columns=None if app_ctx.json else _CHANGE_COLUMNS)


@config_app.command("unset")
def unset(
    ctx: typer.Context,
    key: str = typer.Argument(..., help="A profile key.", autocompletion=_key_complete),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Remove one key of the active profile (it goes back to its default).

    Example: presencectl config unset proxy
    """
    from presencectl.config_edit import unset_key

    app_ctx = app_context(ctx)
    change = unset_key(app_ctx.profile_name, key)
    app_ctx.render(_shown(change), columns=None if app_ctx.json else _CHANGE_COLUMNS)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
