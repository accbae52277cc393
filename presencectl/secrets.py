"""Named secrets per profile: the environment first, then the OS keyring, then a 0600 file.

Owns: the client secret of our app, the sync user's password, the Connect client secret and the
msal token caches (one per profile and identity). Environment variables win (that is how CI
passes secrets); otherwise the keyring; where no keyring backend works (headless Linux, CI) a
0600 JSON file in the config dir, with a one-time warning that says how to get a real backend.
Secret values are never logged.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from presencectl.config import config_dir

log = logging.getLogger(__name__)

CLIENT_SECRET = "client_secret"
SYNC_PASSWORD = "sync_password"
CONNECT_CLIENT_SECRET = "connect_client_secret"

ENV_VARS = {
    CLIENT_SECRET: "PRESENCECTL_CLIENT_SECRET",
    SYNC_PASSWORD: "PRESENCECTL_SYNC_PASSWORD",
    CONNECT_CLIENT_SECRET: "PRESENCECTL_CONNECT_CLIENT_SECRET",
}

_warned_fallback = False


def _service(profile: str) -> str:
    return f"presencectl:{profile}"


def _keyring_usable() -> bool:
    if os.environ.get("PRESENCECTL_SECRETS_BACKEND") == "file":
        return False
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
    except Exception:  # noqa: BLE001 - any import/backend failure means "no keyring"
        return False
    if isinstance(backend, fail.Keyring):
        return False
    chained = getattr(backend, "backends", None)
    return not (chained is not None and not chained)


def fallback_path() -> Path:
    return config_dir() / "secrets.json"


def _warn_fallback() -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        log.warning(
            "no OS keyring backend available; secrets are kept in %s (mode 0600). "
            "Install one (e.g. `pip install keyrings.alt` or a Secret Service such as "
            "gnome-keyring) or pass secrets by environment variable.",
            fallback_path(),
        )


def using_file_fallback() -> bool:
    return not _keyring_usable()


def _read_file() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(fallback_path().read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("ignoring unreadable secrets file %s", fallback_path())
        return {}
    return data if isinstance(data, dict) else {}


def _write_file(data: dict[str, dict[str, str]]) -> None:
    path = fallback_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def get_secret(profile: str, name: str) -> str | None:
    """The secret, from the environment, the keyring or the fallback file; None if absent."""
    env = ENV_VARS.get(name)
    if env and os.environ.get(env):
        return os.environ[env]
    if _keyring_usable():
        import keyring

        try:
            return keyring.get_password(_service(profile), name)
        except Exception as exc:  # noqa: BLE001 - a broken backend must not crash a sync
            log.warning("keyring read failed (%s); trying the secrets file", type(exc).__name__)
    return _read_file().get(profile, {}).get(name)


def set_secret(profile: str, name: str, value: str) -> None:
    if _keyring_usable():
        import keyring

        try:
            keyring.set_password(_service(profile), name, value)
            return
        except Exception as exc:  # noqa: BLE001
            log.warning("keyring write failed (%s); using the secrets file", type(exc).__name__)
    _warn_fallback()
    data = _read_file()
    data.setdefault(profile, {})[name] = value
    _write_file(data)


def delete_secret(profile: str, name: str) -> bool:
    removed = False
    if _keyring_usable():
        import keyring
        from keyring.errors import PasswordDeleteError

        try:
            keyring.delete_password(_service(profile), name)
            removed = True
        except PasswordDeleteError:
            pass
        except Exception as exc:  # noqa: BLE001
            log.warning("keyring delete failed (%s)", type(exc).__name__)
    data = _read_file()
    if data.get(profile, {}).pop(name, None) is not None:
        _write_file(data)
        removed = True
    return removed


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
        except Exception:  # noqa: BLE001
            pass
    if name in _read_file().get(profile, {}):
        return "file"
    return None
