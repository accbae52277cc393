"""Secrets: environment > keyring > 0600 file, one fallback warning, never shown by any output."""

from __future__ import annotations

import logging
import stat
from typing import Any

import keyring
import pytest
from fakes import fresh_secrets_process
from keyring.backends import fail, null

from presencectl import config, secrets
from presencectl.config import Profile


class BrokenKeyring(keyring.backend.KeyringBackend):
    """A backend that looks present but fails on use (Secret Service without a D-Bus session)."""

    priority = 1  # type: ignore[assignment]

    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError("no D-Bus session")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise RuntimeError("no D-Bus session")

    def delete_password(self, service: str, username: str) -> None:
        raise RuntimeError("no D-Bus session")


def _file_entries() -> dict[str, Any]:
    import json

    return dict(json.loads(secrets.fallback_path().read_text()))


def test_keyring_round_trip(isolated_env: Any) -> None:
    secrets.set_secret("p", secrets.CLIENT_SECRET, "kr-value")
    assert isolated_env.store[("presencectl:p", "client_secret")] == "kr-value"
    assert secrets.get_secret("p", secrets.CLIENT_SECRET) == "kr-value"
    assert secrets.secret_source("p", secrets.CLIENT_SECRET) == "keyring"
    assert not secrets.fallback_path().exists()
    assert secrets.delete_secret("p", secrets.CLIENT_SECRET)
    assert secrets.get_secret("p", secrets.CLIENT_SECRET) is None
    assert not secrets.delete_secret("p", secrets.CLIENT_SECRET)


def test_profiles_are_separate() -> None:
    secrets.set_secret("a", secrets.SYNC_PASSWORD, "one")
    assert secrets.get_secret("b", secrets.SYNC_PASSWORD) is None


@pytest.mark.parametrize(
    ("name", "env"),
    [
        (secrets.CLIENT_SECRET, "PRESENCECTL_CLIENT_SECRET"),
        (secrets.SYNC_PASSWORD, "PRESENCECTL_SYNC_PASSWORD"),
        (secrets.CONNECT_CLIENT_SECRET, "PRESENCECTL_CONNECT_CLIENT_SECRET"),
    ],
)
def test_precedence_env_then_keyring_then_file(
    name: str, env: str, monkeypatch: pytest.MonkeyPatch, isolated_env: Any
) -> None:
    secrets.set_secret("p", name, "from-keyring")
    secrets._write_file({"p": {name: "from-file"}})
    monkeypatch.setenv(env, "from-env")
    assert (secrets.get_secret("p", name), secrets.secret_source("p", name)) == ("from-env", "env")
    monkeypatch.delenv(env)
    assert (secrets.get_secret("p", name), secrets.secret_source("p", name)) == (
        "from-keyring",
        "keyring",
    )
    isolated_env.store.clear()
    assert (secrets.get_secret("p", name), secrets.secret_source("p", name)) == (
        "from-file",
        "file",
    )


def test_token_cache_names_are_free_form() -> None:
    secrets.set_secret("p", "token_cache:admin", '{"AccessToken": {}}')
    assert secrets.get_secret("p", "token_cache:admin") == '{"AccessToken": {}}'


@pytest.mark.parametrize("backend", [fail.Keyring(), null.Keyring()], ids=["fail", "null"])
def test_file_fallback_without_a_keyring(backend: Any, caplog: pytest.LogCaptureFixture) -> None:
    keyring.set_keyring(backend)
    caplog.set_level(logging.WARNING)
    secrets.set_secret("p", secrets.CLIENT_SECRET, "s1")
    secrets.set_secret("p", secrets.SYNC_PASSWORD, "s2")
    secrets.set_secret("q", secrets.CLIENT_SECRET, "s3")
    assert secrets.using_file_fallback()
    path = secrets.fallback_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secrets.get_secret("p", secrets.SYNC_PASSWORD) == "s2"
    assert secrets.secret_source("q", secrets.CLIENT_SECRET) == "file"
    warnings = [r for r in caplog.records if "keyring" in r.getMessage()]
    assert len(warnings) == 1
    assert "gnome-keyring" in warnings[0].getMessage() and str(path) in warnings[0].getMessage()
    assert "s1" not in caplog.text
    assert secrets.delete_secret("p", secrets.CLIENT_SECRET)
    assert _file_entries() == {"p": {"sync_password": "s2"}, "q": {"client_secret": "s3"}}


def test_a_keyring_that_fails_at_run_time_falls_back_once(caplog: pytest.LogCaptureFixture) -> None:
    keyring.set_keyring(BrokenKeyring())
    caplog.set_level(logging.WARNING)
    assert secrets.get_secret("p", secrets.CLIENT_SECRET) is None
    secrets.set_secret("p", secrets.CLIENT_SECRET, "s1")
    secrets.set_secret("p", secrets.SYNC_PASSWORD, "s2")
    assert secrets.get_secret("p", secrets.CLIENT_SECRET) == "s1"
    assert secrets.secret_source("p", secrets.CLIENT_SECRET) == "file"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert "RuntimeError" in caplog.text and "s1" not in caplog.text


def test_backend_env_var_forces_the_file(
    monkeypatch: pytest.MonkeyPatch, isolated_env: Any
) -> None:
    monkeypatch.setenv("PRESENCECTL_SECRETS_BACKEND", "file")
    secrets.set_secret("p", secrets.CLIENT_SECRET, "s")
    assert isolated_env.store == {}
    assert _file_entries() == {"p": {"client_secret": "s"}}


def test_storing_in_the_keyring_removes_a_stale_file_copy() -> None:
    secrets._write_file({"p": {"client_secret": "old"}, "q": {"client_secret": "keep"}})
    secrets.set_secret("p", secrets.CLIENT_SECRET, "new")
    assert _file_entries() == {"q": {"client_secret": "keep"}}
    assert secrets.get_secret("p", secrets.CLIENT_SECRET) == "new"


def test_a_loose_secrets_file_is_tightened() -> None:
    secrets._write_file({"p": {"client_secret": "s"}})
    secrets.fallback_path().chmod(0o644)
    assert secrets.get_secret("p", secrets.CLIENT_SECRET) == "s"
    assert stat.S_IMODE(secrets.fallback_path().stat().st_mode) == 0o600


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_corrupt_secrets_file_is_a_config_error(content: str) -> None:
    secrets.fallback_path().parent.mkdir(parents=True)
    secrets.fallback_path().write_text(content)
    with pytest.raises(secrets.ConfigError) as caught:
        secrets.get_secret("p", secrets.CLIENT_SECRET)
    assert str(secrets.fallback_path()) in caught.value.message
    assert caught.value.exit_code == 3


def test_describe_source_never_returns_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    assert secrets.describe_source("p", secrets.CLIENT_SECRET) == "not set"
    secrets.set_secret("p", secrets.CLIENT_SECRET, "s")
    assert secrets.describe_source("p", secrets.CLIENT_SECRET) == "set (keyring)"
    monkeypatch.setenv("PRESENCECTL_CLIENT_SECRET", "e")
    assert secrets.describe_source("p", secrets.CLIENT_SECRET) == "set (env)"


@pytest.mark.parametrize("fmt", ["table", "json", "csv", "md"])
def test_no_secret_in_config_show(cli: Any, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config.save_profile(
        Profile(name="default", tenant_id="contoso.example", sync_username="sync@contoso.com")
    )
    secrets.set_secret("default", secrets.CLIENT_SECRET, "KEYRING-SECRET-1")
    secrets._write_file({"default": {"sync_password": "FILE-SECRET-2"}})
    monkeypatch.setenv("PRESENCECTL_CONNECT_CLIENT_SECRET", "ENV-SECRET-3")
    result = cli("-vv", "config", "show", "-o", fmt)
    assert result.exit_code == 0, result.stderr
    everything = result.stdout + result.stderr
    for value in ("KEYRING-SECRET-1", "FILE-SECRET-2", "ENV-SECRET-3"):
        assert value not in everything
    for shown in ("set (keyring)", "set (file)", "set (env)"):
        assert shown in result.stdout
    if fmt == "json":
        assert result.json()["secrets"] == {
            "client_secret": "set (keyring)",
            "sync_password": "set (file)",
            "connect_client_secret": "set (env)",
        }


def test_fallback_warning_is_shown_once_not_on_every_run(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring.set_keyring(fail.Keyring())
    caplog.set_level(logging.WARNING)
    secrets.set_secret("p", secrets.CLIENT_SECRET, "s1")
    fresh_secrets_process(monkeypatch)  # a later process: the file exists, doctor reports it
    secrets.set_secret("p", secrets.SYNC_PASSWORD, "s2")
    assert len([r for r in caplog.records if "keyring" in r.getMessage()]) == 1


def test_no_fallback_warning_when_the_file_backend_is_chosen(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(secrets.BACKEND_ENV, "file")
    caplog.set_level(logging.WARNING)
    secrets.set_secret("p", secrets.CLIENT_SECRET, "s1")
    assert secrets.secret_source("p", secrets.CLIENT_SECRET) == "file"
    assert not [r for r in caplog.records if "keyring" in r.getMessage()]
