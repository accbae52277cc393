"""Profiles in ``config.toml``: where they live, what they hold, how they are validated and saved.

Owns the file ``$PRESENCECTL_CONFIG_DIR/config.toml`` (default ``typer.get_app_dir("presencectl")``
resolved without importing typer) and the state dir. Read with tomllib, written atomically
with tomli-w (temp file + ``os.replace``, mode 0600). Never holds a secret: secrets go through
``presencectl.secrets``. Validation errors are ``ConfigError`` naming the file, the key and what is
allowed.

Layout::

    [profiles.NAME]
    tenant_id = "…"                       # Entra tenant (GUID or domain)
    authority_url = "https://login.microsoftonline.com"
    graph_url = "https://graph.microsoft.com/v1.0"
    ca_bundle = "/path/ca.pem"            # optional: extra CA to trust (proxy, sandbox)
    proxy = "http://proxy:3128"           # optional
    client_id = "…"                        # our app registration
    bootstrap_client_id = "…"              # public client used before our app exists
    admin_email = "…"
    sync_username = "…"                    # the sync user (the first of the pool)
    sync_user_sign_in = "password"         # how it signs in: password | device_code | browser
    connect_login_url = "https://login.univerge.blue"
    connect_api_url = "https://api.univerge.blue"
    connect_client_id = "…"
    connect_account_email = "…"
    connect_directory_scope = "api.service.address-book"   # one api.service.* scope, no api.user.*
    connect_directory_fields = "_all"     # the directory's `fields`; "" = never sent
    connect_feed_user_field = "userId"    # the events' user-id field; unset = the plausible ones
    connect_feed_event_scope = "auto"     # auto | user | session: what an event's state is
    connect_resource_id = "…"             # our Connect session (a GUID), made on first use
    connect_rate_per_min = 250            # Connect requests a minute (0 = no budget: testing only)
    echo_window_s = 60                    # how long a write of ours may take to show (2–600 s)
    enabled_direction = "both"            # absent = sync disabled
    notify_url = "https://sync.example.com/presencectl"  # optional: Teams change notifications
    [[profiles.NAME.sync_users]]          # further sync users, in the order added
    username = "…"; sign_in = "device_code"; validated_at = "…"
    [profiles.NAME.verified]              # what setup-azure / consent / validate proved, with dates
    [profiles.NAME.mapping.teams_to_connect]   # overrides: "Busy/InAMeeting" = "meeting"
    [profiles.NAME.mapping.connect_to_teams]   # overrides: "on_break" = "Available/Available"
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from presencectl.errors import ConfigError

if TYPE_CHECKING:
    from presencectl.transport import HttpSettings

DEFAULT_PROFILE = "default"
SANDBOX_DIR_PREFIX = "presencectl-sandbox-"  # the sandbox's temporary dir (its CA, its key)
DIRECTIONS = ("both", "connect-to-teams", "teams-to-connect")
GRAPH_CLI_CLIENT_ID = "14d82eec-204b-4c2f-b7e8-296a70dab67e"


@dataclass
class Profile:
    """One tenant's settings. Field names are the TOML keys."""

    name: str = DEFAULT_PROFILE
    tenant_id: str | None = None
    authority_url: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com/v1.0"
    ca_bundle: str | None = None
    proxy: str | None = None
    client_id: str | None = None
    bootstrap_client_id: str = GRAPH_CLI_CLIENT_ID
    admin_email: str | None = None
    sync_username: str | None = None
    # The pool of sync users (identity/sync_pool.py): how the first signs in, and the others.
    sync_user_sign_in: str = "password"
    sync_users: list[dict[str, str]] = field(default_factory=list)
    connect_login_url: str = "https://login.univerge.blue"
    connect_api_url: str = "https://api.univerge.blue"
    connect_client_id: str | None = None
    connect_account_email: str | None = None
    connect_directory_scope: str = "api.service.address-book"
    # What `connect verify --apply` found the account to do (docs/connect-setup.md)
    connect_directory_fields: str = "_all"
    connect_feed_user_field: str | None = None
    connect_feed_event_scope: str = "auto"
    connect_resource_id: str | None = None
    connect_rate_per_min: int = 250
    # How long a write of ours may take to show on a side (the echo rule's window, sync/plan.py).
    # While it runs, the side showing the value our write replaced is read as our echo, not as
    # the user's doing; no public source gives either service's propagation delay, hence 60 s.
    echo_window_s: int = 60
    enabled_direction: str | None = None
    notify_url: str | None = None  # public HTTPS URL of the notification receiver (sync --watch)
    # How the app proves itself: secret | certificate | federated (identity/app_credentials.py)
    app_credential: str = "secret"
    federated_token_file: str | None = None  # federated: the token file read at each sign-in
    verified: dict[str, Any] = field(default_factory=dict)
    mapping: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def authority(self) -> str:
        """The tenant-specific authority msal signs in against."""
        if not self.tenant_id:
            raise ConfigError(
                f"profile '{self.name}' has no tenant_id",
                hint="run `presencectl setup-azure --tenant <tenant id or domain>`",
                code="config_missing",
            )
        return f"{self.authority_url.rstrip('/')}/{self.tenant_id}"

    def http_settings(self) -> HttpSettings:
        """The shared HTTP settings for this profile (CA bundle, proxy, msal's port fix)."""
        from presencectl.transport import HttpSettings

        if self.ca_bundle and sandbox_serving(self.ca_bundle) is False:
            # A sandbox's CA sits next to the lock its serving process holds (or in a temporary
            # dir that went with it): say the sandbox is stopped instead of blaming a key.
            from presencectl.errors import NetworkError

            port = urlsplit(self.authority_url).port
            raise NetworkError(
                f"the sandbox at {self.authority_url} is not running (the one profile "
                f"'{self.name}' was written for)",
                hint=f"start it again: `presencectl sandbox serve --port {port} "
                f"--write-profile {self.name} --auto-approve admin@contoso.example` "
                "(it keeps its world; the profile's setup stays valid)",
                code="sandbox_not_running",
            )
        fixes: dict[str, int] = {}
        parts = urlsplit(self.authority_url)
        if parts.hostname and parts.port and parts.port != 443:
            fixes[parts.hostname] = parts.port
        return HttpSettings(ca_bundle=self.ca_bundle, proxy=self.proxy, msal_port_fixes=fixes)

    def to_toml(self) -> dict[str, Any]:
        """The profile's TOML table: only keys that differ from the defaults."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "name":
                continue
            value = getattr(self, f.name)
            if value is None or value == {} or value == [] or value == f.default:
                continue
            out[f.name] = value
        return out


_KNOWN_KEYS = {f.name for f in fields(Profile)} - {"name"}
_TOP_LEVEL_KEYS = ("profiles",)
_INT_KEYS = ("connect_rate_per_min", "echo_window_s")
_INT_HINTS = {"connect_rate_per_min": " (0 = no budget: testing only)"}
ECHO_WINDOW_RANGE = (2, 600)
APP_CREDENTIALS = ("secret", "certificate", "federated")  # identity/app_credentials.py KINDS
# A tenant is named by its GUID or one of its domains (contoso.onmicrosoft.com, contoso.com).
_DOMAIN = re.compile(r"(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", re.I)
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_URL_KEYS = ("authority_url", "graph_url", "connect_login_url", "connect_api_url")
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


def _unknown_key_error(where: str, unknown: list[str], allowed: list[str]) -> ConfigError:
    key = unknown[0]
    close = difflib.get_close_matches(key, allowed, n=1)
    more = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    guess = f"did you mean '{close[0]}'? " if close else ""
    return ConfigError(
        f"{where}: unknown key '{key}'{more}",
        hint=f"{guess}allowed keys: {', '.join(allowed)}",
        code="config_unknown_key",
    )


def config_dir() -> Path:
    """``$PRESENCECTL_CONFIG_DIR``, else the platform's app dir (as typer.get_app_dir does)."""
    env = os.environ.get("PRESENCECTL_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(base) / "presencectl"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "presencectl"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "presencectl"


def sandbox_serving(ca_bundle: str) -> bool | None:
    """Whether the sandbox whose CA is ``ca_bundle`` runs now; None if it is no sandbox's CA.

    Every sandbox keeps its CA in a directory named ``presencectl-sandbox-…`` and holds the
    OS lock of ``serving.lock`` there while it serves (``sandbox/server.py``); a temporary one
    is removed at stop. The lock is probed, never kept.
    """
    ca_dir = Path(ca_bundle).parent
    if not ca_dir.name.startswith(SANDBOX_DIR_PREFIX):
        return None
    lock = ca_dir / "serving.lock"
    if not Path(ca_bundle).exists() or not lock.exists():
        return False
    if sys.platform == "win32":
        return None  # no probe there: the connection error speaks instead
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # a lock we got goes with the descriptor
    return False


def config_path() -> Path:
    """The config file: ``config_dir() / "config.toml"``."""
    return config_dir() / "config.toml"


def state_dir() -> Path:
    """Where the per-profile SQLite state lives (0700). ``$PRESENCECTL_STATE_DIR`` overrides."""
    env = os.environ.get("PRESENCECTL_STATE_DIR")
    if env:
        return Path(env).expanduser()
    if os.environ.get("PRESENCECTL_CONFIG_DIR"):
        return config_dir() / "state"
    if sys.platform == "win32" or sys.platform == "darwin":
        return config_dir() / "state"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "presencectl"


def profile_name(explicit: str | None = None) -> str:
    """The active profile: ``--profile``, else ``$PRESENCECTL_PROFILE``, else "default".

    A name outside letters, digits, ``.``, ``_`` and ``-`` is a usage error (check_profile_name).
    """
    return check_profile_name(explicit or os.environ.get("PRESENCECTL_PROFILE") or DEFAULT_PROFILE)


PROFILE_NAME_CHARS = "letters, digits, '.', '_' and '-'"


def valid_profile_name(name: str) -> bool:
    """ASCII letters, digits, ``.``, ``_``, ``-``; 1–64 of them, not ``.`` or ``..``.

    The name is the state database's file name and the keyring's service name as it is: with
    nothing to replace, ``a b``, ``a/b`` and ``a_b`` can no longer share one database and lock."""
    return (
        0 < len(name) <= 64
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
        and name not in (".", "..")
    )


def check_profile_name(name: str) -> str:
    """``name`` when valid; otherwise a usage error (exit 2), with the way out when config.toml
    already holds a profile of that name (earlier versions accepted any name)."""
    if valid_profile_name(name):
        return name
    from presencectl.errors import UsageError

    suggestion = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
    suggestion = suggestion.strip(".")[:64] or DEFAULT_PROFILE
    try:
        existing = name in read_config().get("profiles", {})
    except Exception:  # an unreadable config is reported by the command that reads it
        existing = False
    if existing:
        hint = (
            f"config.toml ({config_path()}) has a profile '{name}' from an earlier version: "
            f"rename its table to [profiles.{suggestion}] (its state database is already "
            f"{suggestion}.db), then store its secrets again under the new name "
            f"(`presencectl --profile {suggestion} connect set …`, `sync-user set …`)"
        )
    else:
        hint = f"use {PROFILE_NAME_CHARS} only, e.g. --profile {suggestion}"
    raise UsageError(
        f"profile name {name!r} is not allowed: {PROFILE_NAME_CHARS} only",
        hint=hint,
        code="profile_name_invalid",
    )


def read_config(path: Path | None = None) -> dict[str, Any]:
    """The whole config document; ``{}`` when the file does not exist."""
    path = path or config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}", hint="check the file's permissions"
        ) from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path} is not valid TOML: {exc}",
            hint="fix the file, or move it away and run setup again "
            "(`presencectl config path` shows it)",
        ) from exc
    unknown = sorted(set(doc) - set(_TOP_LEVEL_KEYS))
    if unknown:
        raise _unknown_key_error(str(path), unknown, list(_TOP_LEVEL_KEYS))
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(
            f"{path}: key 'profiles' must be a table", hint="write profiles as [profiles.NAME]"
        )
    return doc


def _profile_from_table(name: str, table: Any, path: Path) -> Profile:
    where = f"{path}: [profiles.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table", hint="see docs/ci.md for the layout")
    unknown = sorted(set(table) - _KNOWN_KEYS)
    if unknown:
        raise _unknown_key_error(where, unknown, sorted(_KNOWN_KEYS))
    profile = Profile(name=name)
    for f in fields(Profile):
        if f.name == "name" or f.name not in table:
            continue
        value = table[f.name]
        if f.name in ("verified", "mapping"):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{where}: key '{f.name}' must be a table, not {_toml_type(value)}",
                    hint=f"write it as [profiles.{name}.{f.name}]",
                )
        elif f.name == "sync_users":
            value = _sync_users(value, where)
        elif f.name in _INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(
                    f"{where}: key '{f.name}' must be a whole number, not {value!r}",
                    hint=f"write it as {f.name} = {getattr(Profile, f.name)}"
                    + _INT_HINTS.get(f.name, ""),
                )
        elif not isinstance(value, str):
            raise ConfigError(
                f"{where}: key '{f.name}' must be a string, not {_toml_type(value)}",
                hint=f'write it as {f.name} = "…"',
            )
        setattr(profile, f.name, value)
    if profile.connect_rate_per_min < 0:
        raise ConfigError(
            f"{where}: key 'connect_rate_per_min' is {profile.connect_rate_per_min}",
            hint="allowed: 0 or more requests a minute (default 250; 0 = no limit)",
        )
    if profile.tenant_id is not None and not (
        _GUID.fullmatch(profile.tenant_id) or _DOMAIN.fullmatch(profile.tenant_id)
    ):
        raise ConfigError(
            f"{where}: key 'tenant_id' is {profile.tenant_id!r}",
            hint="allowed: the tenant's GUID (Entra admin center > Overview > Tenant ID) or one "
            "of its domains, e.g. contoso.onmicrosoft.com",
        )
    low, high = ECHO_WINDOW_RANGE
    if not low <= profile.echo_window_s <= high:
        raise ConfigError(
            f"{where}: key 'echo_window_s' is {profile.echo_window_s}",
            hint=f"allowed: {low} to {high} seconds (default 60): how long a write of ours may "
            "take to show on Teams or Connect",
        )
    if profile.sync_user_sign_in not in SIGN_IN_KINDS:
        raise ConfigError(
            f"{where}: key 'sync_user_sign_in' is '{profile.sync_user_sign_in}'",
            hint="allowed: " + ", ".join(SIGN_IN_KINDS),
        )
    if profile.sync_users and not profile.sync_username:
        raise ConfigError(
            f"{where}: sync_users without sync_username (the first sync user)",
            hint="set sync_username to the first of them, or run `presencectl sync-user add`",
        )
    if profile.app_credential not in APP_CREDENTIALS:
        raise ConfigError(
            f"{where}: key 'app_credential' is '{profile.app_credential}'",
            hint="allowed: " + ", ".join(APP_CREDENTIALS),
        )
    if profile.enabled_direction is not None and profile.enabled_direction not in DIRECTIONS:
        raise ConfigError(
            f"{where}: key 'enabled_direction' is '{profile.enabled_direction}'",
            hint="allowed: " + ", ".join(DIRECTIONS),
        )
    for key in _URL_KEYS:
        url = getattr(profile, key)
        if not _is_url(url, ("https", "http")):
            raise ConfigError(
                f"{where}: key '{key}' is not a URL: {url!r}", hint="allowed: https://host[:port]/…"
            )
        if not _tls_or_loopback(url):
            raise ConfigError(
                f"{where}: key '{key}' is plain http to a remote host: {url!r}",
                hint="use https:// (plain http is allowed only to loopback, e.g. a local sandbox)",
            )
    scope = profile.connect_directory_scope.strip()
    if not scope or len(scope.split()) != 1 or scope.lower().startswith("api.user."):
        raise ConfigError(
            f"{where}: key 'connect_directory_scope' is {profile.connect_directory_scope!r}",
            hint="one api.service.* scope (default api.service.address-book): client credentials "
            "cannot use api.user.* scopes, which belong to user sign-in",
        )
    if profile.connect_directory_fields not in ("_all", ""):
        raise ConfigError(
            f"{where}: key 'connect_directory_fields' is {profile.connect_directory_fields!r}",
            hint='allowed: "_all" (the default) or "" (the directory takes no `fields`)',
        )
    user_field = profile.connect_feed_user_field
    if user_field is not None and not _is_field_path(user_field):
        raise ConfigError(
            f"{where}: key 'connect_feed_user_field' is {user_field!r}",
            hint="a field name of the feed's events, e.g. userId or user.id (dots nest)",
        )
    if profile.connect_feed_event_scope not in ("auto", "user", "session"):
        raise ConfigError(
            f"{where}: key 'connect_feed_event_scope' is {profile.connect_feed_event_scope!r}",
            hint="allowed: auto, user, session",
        )
    if profile.notify_url is not None and not (
        _is_url(profile.notify_url, ("https", "http")) and _tls_or_loopback(profile.notify_url)
    ):
        raise ConfigError(
            f"{where}: key 'notify_url' is not an https URL: {profile.notify_url!r}",
            hint="Graph delivers notifications to public https:// URLs only",
        )
    if profile.proxy is not None and not _is_url(profile.proxy, _PROXY_SCHEMES):
        raise ConfigError(
            f"{where}: key 'proxy' is not a proxy URL: {profile.proxy!r}",
            hint="allowed: http://host:port, https://host:port or socks5://host:port",
        )
    if profile.mapping:
        from presencectl.mapping import validate_overrides

        validate_overrides(profile.mapping, where=f"{where}.mapping")
    return profile


SIGN_IN_KINDS = ("password", "device_code", "browser")


def _sync_users(value: Any, where: str) -> list[dict[str, str]]:
    """The further sync users: an array of tables with a username and a known sign-in kind."""
    hint = 'write each as [[…sync_users]] with username = "name@tenant", sign_in = "device_code"'
    if not isinstance(value, list):
        raise ConfigError(f"{where}: key 'sync_users' must be an array of tables", hint=hint)
    rows: list[dict[str, str]] = []
    for i, row in enumerate(value):
        here = f"{where}: sync_users[{i}]"
        if not isinstance(row, dict) or not all(isinstance(v, str) for v in row.values()):
            raise ConfigError(f"{here} must be a table of strings", hint=hint)
        unknown = sorted(set(row) - {"username", "sign_in", "validated_at"})
        if unknown:
            raise _unknown_key_error(here, unknown, ["sign_in", "username", "validated_at"])
        if "@" not in row.get("username", ""):
            raise ConfigError(f"{here}: 'username' is not a user principal name", hint=hint)
        if row.get("sign_in", "password") not in SIGN_IN_KINDS:
            raise ConfigError(
                f"{here}: 'sign_in' is {row.get('sign_in')!r}",
                hint="allowed: " + ", ".join(SIGN_IN_KINDS),
            )
        rows.append(dict(row))
    return rows


def _tls_or_loopback(url: str) -> bool:
    """Tokens and passwords travel over these URLs: plain http only to this machine."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return True
    host = (parts.hostname or "").lower()
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _toml_type(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        list: "an array",
        dict: "a table",
        str: "a string",
    }.get(type(value), type(value).__name__)


def _is_field_path(value: Any) -> bool:
    """A JSON field name, or a dotted path of them (``user.id``)."""
    import re

    name = r"[A-Za-z_][\w-]*"
    return isinstance(value, str) and bool(re.fullmatch(rf"{name}(\.{name})*", value))


def _is_url(value: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.hostname)


def load_profile(
    name: str | None = None,
    *,
    path: Path | None = None,
    must_exist: bool = True,
    check_mapping: bool = True,
) -> Profile:
    """The named profile, validated.

    A missing profile is a ConfigError unless ``must_exist`` is False (then: a default Profile).
    ``check_mapping=False`` loads a profile whose mapping overrides are invalid (the overrides
    are kept as written): for the commands that must work whatever the mapping says (`disable`,
    `status`, `config show`).
    """
    path = path or config_path()
    name = profile_name(name)
    doc = read_config(path)
    table = doc.get("profiles", {}).get(name)
    if table is None:
        if must_exist:
            raise missing_profile_error(name, path, sorted(doc.get("profiles", {})))
        return Profile(name=name)
    if not check_mapping and isinstance(table, dict) and isinstance(table.get("mapping"), dict):
        rest = {k: v for k, v in table.items() if k != "mapping"}
        profile = _profile_from_table(name, rest, path)
        profile.mapping = table["mapping"]
        return profile
    return _profile_from_table(name, table, path)


def profile_from_table(name: str, table: Any, path: Path) -> Profile:
    """A profile from its TOML table, validated exactly as loading validates it."""
    return _profile_from_table(name, table, path)


def missing_profile_error(name: str, path: Path, existing: list[str]) -> ConfigError:
    """ "no profile NAME": lists the profiles there are (a typo is the usual cause)."""
    if existing:
        close = difflib.get_close_matches(name, existing, n=1)
        guess = f"did you mean '{close[0]}'? " if close else ""
        return ConfigError(
            f"no profile '{name}' in {path} (profiles: {', '.join(existing)})",
            hint=f"{guess}pass --profile NAME (or set PRESENCECTL_PROFILE); "
            "`presencectl config profiles` lists them",
            code="config_missing",
        )
    return ConfigError(
        f"no profile '{name}' in {path}",
        hint="there are no profiles yet: `presencectl setup-azure --tenant T` makes one for a "
        "tenant, `presencectl sandbox serve --write-profile NAME` one for the sandbox",
        code="config_missing",
    )


def list_profiles(path: Path | None = None) -> list[str]:
    """The names of every profile in the config file, sorted."""
    return sorted(read_config(path).get("profiles", {}))


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, readable by the owner only (0600).

    mkstemp creates the temporary file 0600, so the content is never readable by others, not even
    for a moment; fsync + ``os.replace`` make the switch atomic (a crash leaves the old file or the
    new one, never half of one). Used for config.toml and the secrets fallback file.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_config(doc: dict[str, Any], path: Path | None = None) -> None:
    """Write the whole document atomically, 0600."""
    import tomli_w

    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = tomli_w.dumps(doc).encode("utf-8")
    write_private_file(path, data)


def save_profile(profile: Profile, path: Path | None = None) -> None:
    """Replace one profile's table, keeping every other profile as it was."""
    path = path or config_path()
    check_profile_name(profile.name)
    doc = read_config(path)
    doc.setdefault("profiles", {})[profile.name] = profile.to_toml()
    write_config(doc, path)


def delete_profile(name: str, path: Path | None = None) -> bool:
    """Remove one profile's table; False when there was none."""
    path = path or config_path()
    doc = read_config(path)
    removed = doc.get("profiles", {}).pop(name, None) is not None
    if removed:
        write_config(doc, path)
    return removed
