"""Configuration without a text editor, and profiles never overwritten by surprise (issue 15
items 3 and 4): `config set/unset`, `mapping check --apply`, the sandbox/demo profile guard,
"no profile" errors that list the profiles, a stopped sandbox named as such."""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from presencectl import secrets
from presencectl.config import Profile, config_path, load_profile, save_profile

pytestmark = pytest.mark.timeout(120)


def test_config_set_creates_validates_and_unset_restores_the_default(cli: Any) -> None:
    made = cli("-o", "json", "config", "set", "--create", "tenant_id", "contoso.example")
    assert made.exit_code == 0, made.stderr
    assert made.json()["value"] == "contoso.example"
    assert cli("config", "set", "proxy", "http://proxy.contoso.example:3128").exit_code == 0
    assert load_profile().proxy == "http://proxy.contoso.example:3128"

    before = config_path().read_text()
    bad = cli("-o", "json", "config", "set", "graph_url", "http://graph.example/v1.0")
    assert bad.exit_code == 3
    assert "'graph_url'" in bad.json()["error"]["message"]
    assert config_path().read_text() == before  # nothing written

    typo = cli("-o", "json", "config", "set", "tenant", "x")
    assert typo.exit_code == 3
    assert typo.json()["error"]["code"] == "config_unknown_key"
    assert "tenant_id" in typo.json()["error"]["hint"]

    assert cli("config", "unset", "proxy").exit_code == 0
    assert load_profile().proxy is None
    assert "proxy" not in config_path().read_text()
    assert cli("--profile", "nope", "config", "unset", "proxy").exit_code == 3
    assert "nope" not in config_path().read_text()  # unset never creates a profile


@pytest.mark.parametrize(
    ("key", "points_to"),
    [
        ("client_secret", "setup-azure"),
        ("sync_password", "sync-user set"),
        ("connect_client_secret", "PRESENCECTL_CONNECT_CLIENT_SECRET"),
    ],
)
def test_config_set_refuses_secrets_and_names_where_they_go(
    cli: Any, key: str, points_to: str
) -> None:
    refused = cli("-o", "json", "config", "set", key, "s3cr3t-value")
    assert refused.exit_code == 3
    error = refused.json()["error"]
    assert error["code"] == "config_secret_refused"
    assert points_to in error["hint"]
    assert "s3cr3t-value" not in refused.stdout + refused.stderr
    assert not config_path().exists() or "s3cr3t-value" not in config_path().read_text()


def test_every_profile_key_is_settable_through_the_schema(cli: Any) -> None:
    from presencectl.config_edit import settable_keys

    keys = settable_keys()
    assert {"tenant_id", "connect_client_id", "ca_bundle", "proxy", "enabled_direction"} <= set(
        keys
    )
    assert cli("config", "set", "--create", "enabled_direction", "sideways").exit_code == 3
    assert cli("config", "set", "--create", "enabled_direction", "teams-to-connect").exit_code == 0


def test_mapping_override_by_key_and_by_checked_file(cli: Any, tmp_path: Path) -> None:
    assert cli("config", "set", "--create", "tenant_id", "contoso.example").exit_code == 0
    ok = cli("config", "set", "mapping.connect_to_teams.on_break", "Away/Away")
    assert ok.exit_code == 0, ok.stderr
    assert load_profile().mapping == {"connect_to_teams": {"on_break": "Away/Away"}}
    bad = cli("-o", "json", "config", "set", "mapping.connect_to_teams.on_break", "Busy/Busy")
    assert bad.exit_code == 3 and "on_break" in bad.json()["error"]["message"]

    file = tmp_path / "overrides.toml"
    file.write_text('[mapping.teams_to_connect]\n"Busy/InAMeeting" = "busy"\n')
    applied = cli("-o", "json", "mapping", "check", str(file), "--apply")
    assert applied.exit_code == 0, applied.stderr
    assert applied.json()["applied_to"] == "default"
    assert load_profile().mapping == {"teams_to_connect": {"Busy/InAMeeting": "busy"}}
    shown = cli("-o", "json", "mapping", "show").json()
    assert any(r["source"] == "Busy/InAMeeting" and r["origin"] == "override" for r in shown)


def test_mapping_check_reports_every_bad_key_and_a_missing_file_is_usage(
    cli: Any, tmp_path: Path
) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(
        '[mapping.teams_to_connect]\n"Busy/InAMeeting" = "nope"\n"Nope" = "busy"\n'
        '[mapping.connect_to_teams]\non_break = "Busy/Busy"\n'
    )
    result = cli("mapping", "check", str(file))
    assert result.exit_code == 3
    for key in ("Busy/InAMeeting", "Nope", "on_break"):
        assert key in result.stderr
    missing = cli("-o", "json", "mapping", "check", str(tmp_path / "absent.toml"))
    assert missing.exit_code == 2
    assert missing.json()["error"]["code"] == "usage"


def test_no_profile_lists_the_profiles_there_are(cli: Any) -> None:
    save_profile(Profile(name="contoso", tenant_id="contoso.example"))
    save_profile(Profile(name="fabrikam", tenant_id="fabrikam.example"))
    result = cli("--profile", "contosa", "-o", "json", "config", "show")
    assert result.exit_code == 3
    error = result.json()["error"]
    assert "contoso, fabrikam" in error["message"]
    assert "did you mean 'contoso'" in error["hint"]
    assert "setup-azure" not in error["hint"]  # a second app registration is not the fix


def test_sandbox_profile_never_replaces_a_real_profile(cli: Any) -> None:
    save_profile(
        Profile(
            name="contoso", tenant_id="contoso.example", client_id="1b2c", enabled_direction="both"
        )
    )
    refused = cli("-o", "json", "sandbox", "serve", "--write-profile", "contoso")
    assert refused.exit_code == 3
    assert refused.json()["error"]["code"] == "profile_not_sandbox"
    demo = cli("--profile", "contoso", "-o", "json", "demo", "--duration", "5")
    assert demo.exit_code == 3
    assert demo.json()["error"]["code"] == "profile_not_sandbox"
    assert load_profile("contoso").client_id == "1b2c"


def test_a_stopped_sandbox_is_named_not_the_ca_bundle(cli: Any) -> None:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=3) as sb:
        sb.write_profile("sandbox")
        assert os.path.exists(sb.ca_bundle)
    result = cli("--profile", "sandbox", "-o", "json", "setup-azure", "--no-input")
    assert result.exit_code == 1
    error = result.json()["error"]
    assert error["code"] == "sandbox_not_running"
    assert "is not running" in error["message"] and sb.base_url in error["message"]
    assert "ca_bundle" not in error["message"]


def test_a_failed_sandbox_start_leaves_no_temporary_dir(cli: Any) -> None:
    import socket

    pattern = os.path.join(tempfile.gettempdir(), "presencectl-sandbox-*")
    before = set(glob.glob(pattern))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = cli("sandbox", "serve", "--port", str(port))
    assert result.exit_code == 2
    assert set(glob.glob(pattern)) == before


def test_invalid_mapping_override_does_not_block_status_config_show_or_disable(
    cli: Any,
) -> None:
    save_profile(Profile(name="default", tenant_id="contoso.example"))
    text = (
        config_path().read_text()
        + '[profiles.default.mapping.connect_to_teams]\non_break = "X/Y"\n'
    )
    config_path().write_text(text)
    assert cli("mapping", "show").exit_code == 3  # the mapping itself is still refused
    shown = cli("-o", "json", "config", "show")
    assert shown.exit_code == 0, shown.stderr
    assert shown.json()["settings"]["mapping"] == {"connect_to_teams": {"on_break": "X/Y"}}
    status = cli("-o", "json", "status")
    assert status.exit_code == 0, status.stderr
    assert "on_break" in status.json()["mapping_error"]
    assert secrets.get_secret("default", secrets.CLIENT_SECRET) is None


def test_config_show_is_readable_in_a_terminal_width(cli: Any) -> None:
    save_profile(
        Profile(
            name="default",
            tenant_id="contoso.example",
            verified={"admin_consent": "2026-01-01", "sync_user": "2026-01-01T00:00:00Z",
                      "client_secret_key_id": "f0b0b335-1d71-4883-8f98-567911bfdca6"},
            mapping={"connect_to_teams": {"on_break": "Away/Away"}},
        )
    )  # fmt: skip
    shown = cli("config", "show")
    assert shown.exit_code == 0, shown.stderr
    lines = shown.stdout.splitlines()[1:]  # the title names the file's path
    assert max(len(line) for line in lines) <= 100, shown.stdout
    assert any(line.startswith("verified.admin_consent") for line in lines)
    assert any(line.startswith("mapping.connect_to_teams.on_break") for line in lines)


@pytest.mark.parametrize(
    ("annotation", "text", "expected"),
    [
        ("int | None", "120", 120),
        ("Optional[int]", "7", 7),
        ("float", "2.5", 2.5),
        ("bool", "yes", True),
        ("str | None", "120", "120"),
    ],
)
def test_config_set_converts_by_the_declared_type(
    monkeypatch: pytest.MonkeyPatch, annotation: str, text: str, expected: Any
) -> None:
    """A key another issue adds to Profile (e.g. an int rate) is settable without a change here."""
    from presencectl import config_edit

    monkeypatch.setattr(config_edit, "_field_type", lambda key: annotation)
    assert config_edit._convert("some_new_key", text) == expected
    if expected != text and not isinstance(expected, bool):
        from presencectl.errors import ConfigError

        with pytest.raises(ConfigError, match="some_new_key"):
            config_edit._convert("some_new_key", "not-a-number")


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("tenant_id", "", "GUID"),
        ("tenant_id", "not a tenant!!", "GUID"),
        ("tenant_id", "contoso", "GUID"),
        ("echo_window_s", "-5", "2 to 600"),
        ("echo_window_s", "601", "2 to 600"),
        ("connect_rate_per_min", "-1", "0 or more"),
    ],
)
def test_config_set_checks_each_value_as_loading_does(
    cli: Any, key: str, value: str, allowed: str
) -> None:
    """Issue 24 item 7: every value checked (a negative number is a value, not an option)."""
    assert cli("config", "set", "--create", "tenant_id", "contoso.onmicrosoft.com").exit_code == 0
    before = config_path().read_text()
    bad = cli("-o", "json", "--no-input", "config", "set", key, value)
    assert bad.exit_code == 3, bad.stdout + bad.stderr
    error = bad.json()["error"]
    assert f"'{key}'" in error["message"] and allowed in error["hint"]
    assert config_path().read_text() == before


@pytest.mark.parametrize(
    "tenant", ["0c5b8b8e-2f0e-4b8e-9a3c-1d2e3f4a5b6c", "contoso.onmicrosoft.com", "contoso.com"]
)
def test_config_set_takes_a_tenant_guid_or_domain(cli: Any, tenant: str) -> None:
    assert cli("config", "set", "--create", "tenant_id", tenant).exit_code == 0
    assert load_profile().tenant_id == tenant


def test_config_set_never_creates_a_misspelt_profile_silently(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (
        cli("--profile", "contoso", "config", "set", "--create", "proxy", "http://p:3128").exit_code
        == 0
    )
    before = config_path().read_text()
    typo = cli("-o", "json", "--no-input", "--profile", "contos", "config", "set", "proxy", "x")
    assert typo.exit_code == 2, typo.stdout + typo.stderr
    error = typo.json()["error"]
    assert error["code"] == "profile_not_created"
    assert "--create" in error["hint"] and "contoso" in error["message"]
    assert config_path().read_text() == before

    # At a terminal the question is asked; "no" leaves everything as it was.
    from presencectl.cli.context import AppContext

    monkeypatch.setattr(AppContext, "interactive", property(lambda self: True))
    declined = cli("--profile", "contos", "config", "set", "proxy", "http://p:3128", input="n\n")
    assert declined.exit_code == 2 and "Create it?" in declined.stderr
    assert config_path().read_text() == before
    accepted = cli("--profile", "contos", "config", "set", "proxy", "http://p:3128", input="y\n")
    assert accepted.exit_code == 0, accepted.stderr
    assert load_profile("contos").proxy == "http://p:3128"
