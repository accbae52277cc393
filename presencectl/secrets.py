"""Named secrets per profile: the environment first, then the OS keyring, then a 0600 file.

Owns: the client secret of our app, the sync user's password, the Connect client secret and the
msal token caches (free-form names such as ``"token_cache:admin"``, one per profile and identity).
Environment variables win (that is how CI passes secrets); otherwise the keyring; where no
keyring backend works (headless Linux, CI, a keyring that fails at run time) a 0600 JSON file in
the config dir, with ONE warning per process that says how to get a real backend.
Secret values are never logged, and never part of an error message.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from presencectl.config import config_dir, write_private_file
from presencectl.errors import ConfigError

log = logging.getLogger(__name__)

CLIENT_SECRET = "client_secret"
SYNC_PASSWORD = "sync_password"
CONNECT_CLIENT_SECRET = "connect_client_secret"

ENV_VARS = {
    CLIENT_SECRET: "PRESENCECTL_CLIENT_SECRET",
    SYNC_PASSWORD: "PRESENCECTL_SYNC_PASSWORD",
    CONNECT_CLIENT_SECRET: "PRESENCECTL_CONNECT_CLIENT_SECRET",
}
# The secrets `config show` and `doctor` report on (by source, never by value).
NAMED_SECRETS = (CLIENT_SECRET, SYNC_PASSWORD, CONNECT_CLIENT_SECRET)
# Set to "file" to skip the keyring (a CI runner whose keyring prompts or hangs).
BACKEND_ENV = "PRESENCECTL_SECRETS_BACKEND"

_warned_fallback = False
# A keyring that looked usable but failed at run time (no D-Bus session, locked collection):
# once it has failed, this process uses the file, so reads and writes stay consistent.
_keyring_failed = False


def _service(profile: str) -> str:
    return f"presencectl:{profile}"


def _keyring_usable() -> bool:
    if _keyring_failed or os.environ.get(BACKEND_ENV) == "file":
        return False
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
    except Exception:  # any import or backend failure means "no keyring"
        return False
    if isinstance(backend, fail.Keyring):
        return False
    # The null backend accepts every write and forgets it: as bad as none.
    if type(backend).__module__ == "keyring.backends.null":
        return False
    chained = getattr(backend, "backends", None)
    return not (chained is not None and not chained)


def _keyring_broke(action: str, exc: Exception) -> None:
    global _keyring_failed
    _keyring_failed = True
    log.debug("keyring %s failed: %s", action, type(exc).__name__)
    _warn_fallback(reason=f"the OS keyring failed ({type(exc).__name__})")


def fallback_path() -> Path:
    """The 0600 file used when no keyring backend works."""
    return config_dir() / "secrets.json"


def _warn_fallback(reason: str = "no OS keyring backend is available") -> None:
    """Warn once: when the secrets file is first created (later runs: `presencectl doctor` says it).

    No warning when the file backend was chosen on purpose (PRESENCECTL_SECRETS_BACKEND=file).
    """
    global _warned_fallback
    if os.environ.get(BACKEND_ENV) == "file":
        return
    if all(os.environ.get(env) for env in ENV_VARS.values()):
        # Every secret comes from the environment (CI): only msal's token caches reach the file,
        # and a warning about where "secrets" are kept would be noise on every run.
        log.debug("token caches are kept in %s (mode 0600)", fallback_path())
        return
    if not _warned_fallback and not fallback_path().exists():
        _warned_fallback = True
        log.warning(
            "%s; secrets are kept in %s (mode 0600). For a real backend install one "
            "(a Secret Service such as gnome-keyring or KWallet, or `pip install keyrings.alt`), "
            "or pass secrets by environment variable (PRESENCECTL_CLIENT_SECRET, …).",
            reason,
            fallback_path(),
        )


def using_file_fallback() -> bool:
    """True when secrets that are not in the environment go to the 0600 file."""
    return not _keyring_usable()


def _read_file() -> dict[str, dict[str, str]]:
    path = fallback_path()
    try:
        mode = path.stat().st_mode
        raw = path.read_text("utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(
            f"cannot read the secrets file {path}: {exc.strerror}",
            hint="check its owner and permissions (it must be readable by you, mode 0600)",
            code="secrets_file_unreadable",
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Someone loosened it (a copy, a restore); tighten it before anything else reads it.
        log.warning("the secrets file %s was readable by others; set it back to 0600", path)
        os.chmod(path, 0o600)
    try:
        data: Any = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(
            f"the secrets file {path} is not valid JSON",
            hint="move it away and store the secrets again (setup-azure, sync-user set)",
            code="secrets_file_invalid",
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"the secrets file {path} is not a JSON object",
            hint="move it away and store the secrets again (setup-azure, sync-user set)",
            code="secrets_file_invalid",
        )
    return data


def _write_file(data: dict[str, dict[str, str]]) -> None:
    path = fallback_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private_file(path, json.dumps(data).encode("utf-8"))


def _drop_from_file(profile: str, name: str) -> bool:
    if not fallback_path().exists():
        return False
    data = _read_file()
    entries = data.get(profile, {})
    if name not in entries:
        return False
    del entries[name]
    if not entries:
        data.pop(profile, None)
    _write_file(data)
    return True


def get_secret(profile: str, name: str) -> str | None:
    """The secret, from the environment, the keyring or the fallback file; None if absent."""
    env = ENV_VARS.get(name)
    if env and os.environ.get(env):
        return os.environ[env]
    if _keyring_usable():
        import keyring

        try:
            value = keyring.get_password(_service(profile), name)
        except Exception as exc:  # a broken backend must not crash a sync
            _keyring_broke("read", exc)
        else:
            if value is not None:
                return value
    return _read_file().get(profile, {}).get(name)


def set_secret(profile: str, name: str, value: str) -> None:
    """Store a secret in the keyring, or in the 0600 file when no keyring works."""
    if _keyring_usable():
        import keyring

        try:
            keyring.set_password(_service(profile), name, value)
        except Exception as exc:
            _keyring_broke("write", exc)
        else:
            _drop_from_file(profile, name)  # no stale copy left on disk
            return
    _warn_fallback()
    data = _read_file()
    data.setdefault(profile, {})[name] = value
    _write_file(data)


def delete_secret(profile: str, name: str) -> bool:
    """Remove a secret from the keyring and the file; True when there was one."""
    removed = False
    if _keyring_usable():
        import keyring
        from keyring.errors import PasswordDeleteError

        try:
            keyring.delete_password(_service(profile), name)
            removed = True
        except PasswordDeleteError:
            pass
        except Exception as exc:
            _keyring_broke("delete", exc)
    return _drop_from_file(profile, name) or removed


def secret_source(profile: str, name: str) -> str | None:
    """Where the secret would come from: 'env', 'keyring', 'file', or None (for doctor/status)."""
    env = ENV_VARS.get(name)
    if env and os.environ.get(env):
        return "env"
    if _keyring_usable():
        import keyring

        try:
            if keyring.get_password(_service(profile), name) is not None:
                return "keyring"
        except Exception as exc:
            _keyring_broke("read", exc)
    if name in _read_file().get(profile, {}):
        return "file"
    return None


def describe_source(profile: str, name: str) -> str:
    """``"set (keyring)"``, ``"set (env)"``, ``"set (file)"`` or ``"not set"`` — never the value."""
    source = secret_source(profile, name)
    return f"set ({source})" if source else "not set"
