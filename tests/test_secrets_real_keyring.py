"""Secrets through a real keyring backend (keyrings.alt's plaintext file backend in a temp dir),
next to the 0600-file fallback: every other test installs an in-memory backend, so this is the
one place where the keyring library itself stores, reads back (from a new backend instance, as a
new process would) and deletes our secrets."""

from __future__ import annotations

import configparser
import stat
from pathlib import Path
from typing import Any

import keyring
import pytest
from keyrings.alt.file import PlaintextKeyring

from presencectl import secrets


def _backend(path: Path) -> PlaintextKeyring:
    backend = PlaintextKeyring()
    backend.file_path = str(path)  # keyrings.alt: the file the backend keeps its entries in
    return backend


@pytest.fixture
def file_keyring(tmp_path: Path, isolated_env: Any) -> Path:
    path = tmp_path / "keyring" / "keyring_pass.cfg"
    keyring.set_keyring(_backend(path))  # isolated_env puts the previous backend back
    return path


def _stored(path: Path) -> dict[str, dict[str, str]]:
    parser = configparser.RawConfigParser()
    parser.read(path)
    return {section: dict(parser.items(section)) for section in parser.sections()}


def test_a_real_backend_stores_reads_back_and_deletes(file_keyring: Path) -> None:
    secrets.set_secret("prod", secrets.CLIENT_SECRET, "s3cret-value")

    assert file_keyring.exists()
    assert not secrets.fallback_path().exists()  # the keyring worked: no 0600 file
    # A new backend instance over the same file stands for the next process.
    keyring.set_keyring(_backend(file_keyring))
    assert secrets.get_secret("prod", secrets.CLIENT_SECRET) == "s3cret-value"
    assert secrets.secret_source("prod", secrets.CLIENT_SECRET) == "keyring"
    assert secrets.describe_source("prod", secrets.CLIENT_SECRET) == "set (keyring)"
    assert secrets.get_secret("other", secrets.CLIENT_SECRET) is None  # one service per profile

    assert secrets.delete_secret("prod", secrets.CLIENT_SECRET) is True
    keyring.set_keyring(_backend(file_keyring))
    assert secrets.get_secret("prod", secrets.CLIENT_SECRET) is None
    assert secrets.delete_secret("prod", secrets.CLIENT_SECRET) is False


def test_the_backend_file_holds_no_plain_secret_in_our_config(file_keyring: Path) -> None:
    secrets.set_secret("prod", secrets.SYNC_PASSWORD, "pw-123")
    # The backend keeps it (base64 in keyrings.alt's plaintext file) under our service name …
    sections = _stored(file_keyring)
    assert any("presencectl" in name for name in sections), sections
    # … and nothing under the config dir carries it.
    config_dir = secrets.fallback_path().parent
    if config_dir.exists():
        for path in config_dir.rglob("*"):
            if path.is_file():
                assert b"pw-123" not in path.read_bytes(), path


def test_a_stale_fallback_copy_is_removed_once_the_keyring_takes_the_secret(
    file_keyring: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(secrets.BACKEND_ENV, "file")  # first: the file backend on purpose
    secrets.set_secret("prod", secrets.CONNECT_CLIENT_SECRET, "old")
    path = secrets.fallback_path()
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secrets.secret_source("prod", secrets.CONNECT_CLIENT_SECRET) == "file"
    assert not file_keyring.exists()

    monkeypatch.delenv(secrets.BACKEND_ENV)  # then a real keyring appears
    secrets.set_secret("prod", secrets.CONNECT_CLIENT_SECRET, "new")
    assert secrets.secret_source("prod", secrets.CONNECT_CLIENT_SECRET) == "keyring"
    assert b"old" not in path.read_bytes() if path.exists() else True
    keyring.set_keyring(_backend(file_keyring))
    assert secrets.get_secret("prod", secrets.CONNECT_CLIENT_SECRET) == "new"


def test_the_environment_still_wins_over_a_real_backend(
    file_keyring: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets.set_secret("prod", secrets.CLIENT_SECRET, "from-keyring")
    monkeypatch.setenv("PRESENCECTL_CLIENT_SECRET", "from-env")
    assert secrets.get_secret("prod", secrets.CLIENT_SECRET) == "from-env"
    assert secrets.secret_source("prod", secrets.CLIENT_SECRET) == "env"


def test_the_cli_stores_the_sync_password_in_the_real_backend(file_keyring: Path, cli: Any) -> None:
    from presencectl import config

    config.save_profile(config.Profile(name="prod", tenant_id="contoso.example"))
    result = cli(
        "--profile", "prod", "sync-user", "set", "--username", "sync@contoso.example",
        "--password-stdin", input="Pa55-word!\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "Pa55-word!" not in result.stdout + result.stderr
    keyring.set_keyring(_backend(file_keyring))
    assert secrets.get_secret("prod", secrets.SYNC_PASSWORD) == "Pa55-word!"
    assert not secrets.fallback_path().exists()
