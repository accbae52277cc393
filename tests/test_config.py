"""Profiles in config.toml: location, round trip, atomic 0600 writes, errors naming file and key."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from presencectl import config
from presencectl.config import Profile
from presencectl.errors import ConfigError


def test_config_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESENCECTL_CONFIG_DIR", str(tmp_path / "elsewhere"))
    assert config.config_path() == tmp_path / "elsewhere" / "config.toml"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG layout")
def test_config_dir_default_is_typer_app_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer

    monkeypatch.delenv("PRESENCECTL_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config.config_dir() == Path(typer.get_app_dir("presencectl"))
    assert config.config_dir() == tmp_path / "xdg" / "presencectl"


def test_profile_name_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.profile_name() == "default"
    monkeypatch.setenv("PRESENCECTL_PROFILE", "fromenv")
    assert config.profile_name() == "fromenv"
    assert config.profile_name("explicit") == "explicit"


def test_round_trip_keeps_every_field_and_other_profiles() -> None:
    full = Profile(
        name="contoso",
        tenant_id="11111111-2222-3333-4444-555555555555",
        authority_url="https://127.0.0.1:8443",
        graph_url="https://127.0.0.1:8443/v1.0",
        ca_bundle="/etc/ssl/corp.pem",
        proxy="http://proxy.corp:3128",
        client_id="app-id",
        bootstrap_client_id="bootstrap-id",
        admin_email="admin@contoso.com",
        sync_username="sync@contoso.com",
        connect_login_url="https://127.0.0.1:8443/connect-login",
        connect_api_url="https://127.0.0.1:8443/connect-api",
        connect_client_id="connect-id",
        connect_account_email="owner@contoso.com",
        enabled_direction="both",
        verified={"consent": "2024-05-01T10:00:00+00:00", "roles": ["a", "b"]},
    )
    config.save_profile(Profile(name="other", tenant_id="other.example"))
    config.save_profile(full)
    assert config.load_profile("contoso") == full
    assert config.load_profile("other").tenant_id == "other.example"
    assert config.list_profiles() == ["contoso", "other"]
    text = config.config_path().read_text()
    assert "[profiles.contoso]" in text and "\nname =" not in text


def test_defaults_are_not_written() -> None:
    config.save_profile(Profile(name="p", tenant_id="t"))
    assert config.read_config()["profiles"]["p"] == {"tenant_id": "t"}


def test_write_is_0600_in_a_0700_dir() -> None:
    config.save_profile(Profile(name="p", tenant_id="t"))
    assert stat.S_IMODE(config.config_path().stat().st_mode) == 0o600
    assert stat.S_IMODE(config.config_dir().stat().st_mode) == 0o700


def test_rewrite_tightens_a_loose_file() -> None:
    path = config.config_path()
    path.parent.mkdir(parents=True)
    path.write_text('[profiles.p]\ntenant_id = "t"\n')
    path.chmod(0o644)
    config.save_profile(Profile(name="p", tenant_id="u"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_failed_write_leaves_the_old_file_and_no_temp_file(monkeypatch: pytest.MonkeyPatch) -> None:
    config.save_profile(Profile(name="p", tenant_id="before"))
    before = config.config_path().read_bytes()

    def full_disk(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        config.save_profile(Profile(name="p", tenant_id="after"))
    assert config.config_path().read_bytes() == before
    assert sorted(p.name for p in config.config_dir().iterdir()) == ["config.toml"]


def test_delete_profile() -> None:
    config.save_profile(Profile(name="a", tenant_id="t"))
    config.save_profile(Profile(name="b", tenant_id="t"))
    assert config.delete_profile("a") and not config.delete_profile("a")
    assert config.list_profiles() == ["b"]


def test_missing_file_reads_empty() -> None:
    assert config.read_config() == {}
    assert config.load_profile("x", must_exist=False) == Profile(name="x")


def test_missing_profile_is_config_missing() -> None:
    with pytest.raises(ConfigError) as caught:
        config.load_profile("nope")
    assert caught.value.code == "config_missing" and caught.value.exit_code == 3
    assert str(config.config_path()) in caught.value.message


def test_authority_needs_a_tenant() -> None:
    assert Profile(tenant_id="t").authority == "https://login.microsoftonline.com/t"
    with pytest.raises(ConfigError, match="tenant_id"):
        _ = Profile(name="p").authority


def test_http_settings_carry_ca_proxy_and_the_msal_port_fix() -> None:
    settings = Profile(
        authority_url="https://127.0.0.1:8443", ca_bundle="/ca.pem", proxy="http://p:3128"
    ).http_settings()
    assert (settings.ca_bundle, settings.proxy) == ("/ca.pem", "http://p:3128")
    assert settings.msal_port_fixes == {"127.0.0.1": 8443}
    assert Profile().http_settings().msal_port_fixes == {}


INVALID = [
    ('[profiles.p]\ntenant = "t"\n', "unknown key 'tenant'", "tenant_id"),
    ("[profiles.p]\ntenant_id = 42\n", "key 'tenant_id' must be a string, not an integer", ""),
    (
        '[profiles.p]\nenabled_direction = "sideways"\n',
        "key 'enabled_direction'",
        "teams-to-connect",
    ),
    (
        '[profiles.p]\ngraph_url = "graph.microsoft.com"\n',
        "key 'graph_url' is not a URL",
        "https://",
    ),
    ('[profiles.p]\nauthority_url = "https://h:99999"\n', "key 'authority_url'", "https://"),
    ('[profiles.p]\nproxy = "proxy:3128"\n', "key 'proxy'", "socks5://"),
    ('[profiles.p]\nverified = "yes"\n', "key 'verified' must be a table", "[profiles.p.verified]"),
    ("[profiles]\np = 3\n", "[profiles.p] must be a table", ""),
    ("profiles = 3\n", "key 'profiles' must be a table", ""),
    ('[profile.p]\ntenant_id = "t"\n', "unknown key 'profile'", "profiles"),
    ("[profiles.p\n", "not valid TOML", "config path"),
]


@pytest.mark.parametrize(("text", "message", "hint"), INVALID)
def test_every_validation_error_names_the_file_and_key(text: str, message: str, hint: str) -> None:
    path = config.config_path()
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load_profile("p")
    assert str(path) in caught.value.message
    assert message in caught.value.message
    assert hint in caught.value.hint
    assert caught.value.exit_code == 3


@pytest.mark.parametrize(("text", "message", "hint"), INVALID[:3])
def test_validation_errors_through_the_cli(cli: Any, text: str, message: str, hint: str) -> None:
    path = config.config_path()
    path.parent.mkdir(parents=True)
    path.write_text(text)
    result = cli("--profile", "p", "config", "show", "-o", "json")
    assert result.exit_code == 3
    error = result.json()["error"]
    assert message in error["message"] and str(path) in error["message"]


def test_unknown_keys_are_all_named() -> None:
    path = config.config_path()
    path.parent.mkdir(parents=True)
    path.write_text('[profiles.p]\nfoo = "1"\nbar = "2"\n')
    with pytest.raises(ConfigError) as caught:
        config.load_profile("p")
    assert "'bar'" in caught.value.message and "foo" in caught.value.message


def test_config_show_lists_settings_and_profiles(cli: Any) -> None:
    config.save_profile(Profile(name="default", tenant_id="contoso.example", client_id="app"))
    config.save_profile(Profile(name="fabrikam", tenant_id="fabrikam.example"))
    shown = cli("config", "show", "-o", "json").json()
    assert shown["profile"] == "default"
    assert shown["settings"]["tenant_id"] == "contoso.example"
    assert shown["settings"]["graph_url"] == "https://graph.microsoft.com/v1.0"
    table = cli("config", "show").stdout
    assert "contoso.example" in table and "default" in table
    profiles = cli("--profile", "fabrikam", "config", "profiles", "-o", "json").json()
    assert [(p["name"], p["active"]) for p in profiles] == [("default", False), ("fabrikam", True)]


def test_config_path_is_bare_for_scripts(cli: Any) -> None:
    result = cli("config", "path")
    assert result.stdout == f"{config.config_path()}\n"


@pytest.mark.parametrize(
    "scope",
    ["api.user.address-book", "API.User.Address-Book", "api.service.messaging api.service.x", " "],
)
def test_the_directory_scope_is_one_service_scope(tmp_path: Path, scope: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[profiles.p]\nconnect_directory_scope = "{scope}"\n')
    with pytest.raises(ConfigError) as err:
        config.load_profile("p", path=path)
    assert "connect_directory_scope" in err.value.message
    assert "api.user" in (err.value.hint or "")


def test_connect_rate_and_resource_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[profiles.p]\nconnect_rate_per_min = 100\nconnect_directory_scope = "api.service.x"\n'
        'connect_resource_id = "0f8fad5b-d9cb-469f-a165-70867728950e"\n'
    )
    profile = config.load_profile("p", path=path)
    assert profile.connect_rate_per_min == 100
    assert profile.connect_directory_scope == "api.service.x"
    assert profile.connect_resource_id == "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert config.Profile().connect_rate_per_min == 250
    assert config.Profile().connect_directory_scope == "api.service.address-book"
    for bad in ('"250"', "-1", "true", "2.5"):
        path.write_text(f"[profiles.p]\nconnect_rate_per_min = {bad}\n")
        with pytest.raises(ConfigError, match="connect_rate_per_min"):
            config.load_profile("p", path=path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("connect_directory_fields", "id,email"),
        ("connect_feed_user_field", "user id"),
        ("connect_feed_user_field", "a..b"),
        ("connect_feed_event_scope", "aggregate"),
    ],
)
def test_the_account_findings_keys_are_validated(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[profiles.p]\n{key} = "{value}"\n')
    with pytest.raises(ConfigError) as err:
        config.load_profile("p", path=path)
    assert key in err.value.message


def test_the_account_findings_keys_load(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[profiles.p]\nconnect_directory_fields = ""\nconnect_feed_user_field = "user.id"\n'
        'connect_feed_event_scope = "session"\n'
    )
    profile = config.load_profile("p", path=path)
    assert (profile.connect_directory_fields, profile.connect_feed_user_field) == ("", "user.id")
    assert profile.connect_feed_event_scope == "session"
    assert config.Profile().connect_feed_event_scope == "auto"
