"""`config set` / `config unset`: change one profile key without a text editor.

Owns the rules for editing a profile key by key. The keys are the fields of
:class:`presencectl.config.Profile` (so a key added there is settable here without a change);
a value is converted by the field's declared type and then the whole profile is validated exactly
as loading validates it, so a bad value is the same ConfigError (exit 3, naming the key) that a
hand-edited file would give. Secrets are refused with the command that stores each one;
``verified`` is written only by the commands that prove something. Mapping overrides are
``mapping.teams_to_connect.<Availability/Activity>`` and ``mapping.connect_to_teams.<status>``.
Also owns the guard that keeps the sandbox and the demo from replacing a real tenant's profile.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, fields
from typing import Any

from presencectl import config
from presencectl.errors import ConfigError, UsageError

# Keys that look like settings but are secrets: where each one is stored instead.
SECRET_KEYS = {
    "client_secret": "`presencectl setup-azure` stores it (`--rotate-secret` makes a new one); "
    "CI passes it as PRESENCECTL_CLIENT_SECRET",
    "sync_password": "`presencectl sync-user set --username U` stores it; "
    "CI passes it as PRESENCECTL_SYNC_PASSWORD",
    "password": "`presencectl sync-user set --username U` stores the sync user's password",
    "connect_client_secret": "`presencectl connect set` stores it (docs/connect-setup.md); "
    "CI passes it as PRESENCECTL_CONNECT_CLIENT_SECRET",
}
_WRITTEN_BY_COMMANDS = {
    "verified": "setup-azure, consent and sync-user validate record it",
    "sync_users": "`presencectl sync-user add` / `remove` change the pool",
}
_TABLE_KEYS = ("verified", "mapping", "sync_users")
MAPPING_TABLES = ("teams_to_connect", "connect_to_teams")


@dataclass
class KeyChange:
    profile: str
    key: str
    value: Any
    previous: Any
    config_file: str


def settable_keys() -> list[str]:
    """Every plain key of a profile (the Profile fields), sorted."""
    return sorted(f.name for f in fields(config.Profile) if f.name not in ("name", *_TABLE_KEYS))


def _field_type(key: str) -> str:
    for f in fields(config.Profile):
        if f.name == key:
            return str(f.type)
    return "str"


def _convert(key: str, text: str) -> Any:
    """The TOML value for ``text``, by the field's declared type (str unless it says otherwise)."""
    # "int | None", "Optional[int]", "float": the scalar types the annotation names.
    kinds = set(re.findall(r"[A-Za-z_]+", _field_type(key))) - {"None", "Optional", "Union"}
    if kinds == {"bool"}:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"key '{key}' must be true or false, not {text!r}", hint="e.g. true")
    if kinds == {"int"}:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(
                f"key '{key}' must be a whole number, not {text!r}", hint="e.g. 120"
            ) from None
    if kinds == {"float"} or kinds == {"float", "int"}:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(
                f"key '{key}' must be a number, not {text!r}", hint="e.g. 2.5"
            ) from None
    return text


def _check_key(key: str) -> list[str]:
    """The path of ``key`` in the profile table; refuses secrets and unknown keys."""
    if key in SECRET_KEYS:
        raise ConfigError(
            f"'{key}' is a secret and is never kept in config.toml",
            hint=SECRET_KEYS[key],
            code="config_secret_refused",
        )
    if key in _WRITTEN_BY_COMMANDS:
        raise ConfigError(
            f"'{key}' is not set by hand", hint=_WRITTEN_BY_COMMANDS[key], code="config_read_only"
        )
    parts = key.split(".", 2)
    if parts[0] == "mapping":
        if len(parts) != 3 or parts[1] not in MAPPING_TABLES or not parts[2]:
            raise UsageError(
                f"'{key}' is not a mapping key",
                hint="write mapping.teams_to_connect.<Availability/Activity> or "
                "mapping.connect_to_teams.<connect status>, e.g. mapping.connect_to_teams.on_break",
            )
        return parts
    if key not in settable_keys():
        close = difflib.get_close_matches(key, settable_keys(), n=1)
        guess = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"unknown key '{key}'",
            hint=f"{guess}keys: {', '.join(settable_keys())}, mapping.<table>.<source>",
            code="config_unknown_key",
        )
    return [key]


def _edit(profile_name: str | None, key: str, value: Any, *, remove: bool) -> KeyChange:
    path = config.config_path()
    name = config.profile_name(profile_name)
    parts = _check_key(key)
    doc = config.read_config(path)
    profiles = doc.setdefault("profiles", {})
    if remove and name not in profiles:
        raise config.missing_profile_error(name, path, sorted(profiles))
    table = copy.deepcopy(profiles.get(name, {}))
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [profiles.{name}] must be a table", hint="fix the file")
    holder: dict[str, Any] = table
    for part in parts[:-1]:
        child = holder.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{path}: [profiles.{name}] key '{part}' must be a table")
        holder = child
    previous = holder.get(parts[-1])
    if remove:
        holder.pop(parts[-1], None)
        if parts[0] == "mapping":  # drop tables left empty
            if not table["mapping"].get(parts[1]):
                table["mapping"].pop(parts[1], None)
            if not table["mapping"]:
                table.pop("mapping")
    else:
        holder[parts[-1]] = value if parts[0] == "mapping" else _convert(key, value)
    config.profile_from_table(name, table, path)  # exactly the validation of loading
    profiles[name] = table
    config.write_config(doc, path)
    return KeyChange(
        profile=name,
        key=key,
        value=None if remove else holder[parts[-1]],
        previous=previous,
        config_file=str(path),
    )


def set_key(profile_name: str | None, key: str, value: str) -> KeyChange:
    """Set one key of the profile (created when missing); validated before anything is written."""
    return _edit(profile_name, key, value, remove=False)


def unset_key(profile_name: str | None, key: str) -> KeyChange:
    """Remove one key of the profile (back to its default)."""
    return _edit(profile_name, key, None, remove=True)


def apply_mapping(profile_name: str | None, tables: dict[str, Any]) -> KeyChange:
    """Store checked mapping overrides in the profile (replacing its overrides), validated."""
    path = config.config_path()
    name = config.profile_name(profile_name)
    doc = config.read_config(path)
    profiles = doc.get("profiles", {})
    if name not in profiles:
        raise config.missing_profile_error(name, path, sorted(profiles))
    table = copy.deepcopy(profiles[name])
    previous = table.get("mapping")
    if tables:
        table["mapping"] = tables
    else:
        table.pop("mapping", None)
    config.profile_from_table(name, table, path)
    profiles[name] = table
    config.write_config(doc, path)
    return KeyChange(name, "mapping", tables, previous, str(path))


def _is_sandbox_table(table: Any) -> bool:
    """A sandbox profile signs in against loopback (the sandbox serves nothing else)."""
    from urllib.parse import urlsplit

    if not isinstance(table, dict):
        return False
    url = str(table.get("authority_url") or "")
    host = (urlsplit(url).hostname or "").lower() if url else ""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def guard_sandbox_profile(name: str, *, force: bool, command: str) -> None:
    """Refuse to overwrite profile ``name`` with a sandbox profile unless it is one (or --force).

    A real tenant's profile (tenant, app, enabled direction, verified steps) must never be
    replaced by surprise because its name was reused.
    """
    path = config.config_path()
    table = config.read_config(path).get("profiles", {}).get(name)
    if table is None or force or _is_sandbox_table(table):
        return
    url = table.get("authority_url") if isinstance(table, dict) else None
    url = url or "https://login.microsoftonline.com"
    raise ConfigError(
        f"profile '{name}' in {path} is not a sandbox profile "
        f"(it signs in at {url}); {command} would replace it",
        hint=f"pick another name (e.g. `--profile sandbox`), or pass --force to replace '{name}'",
        code="profile_not_sandbox",
    )
