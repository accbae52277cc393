"""Profile names are letters, digits, '.', '_' and '-' (issue 26): the name is the state
database's file name as it is, so ``a b``, ``a/b`` and ``a_b`` can no longer share one database
and its lock. A profile of another name left in config.toml by an earlier version is named,
with the way to rename it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from presencectl import config
from presencectl.errors import UsageError
from presencectl.sync.state import database_path


@pytest.mark.parametrize("name", ["a b", "a/b", "../etc", "..", ".", "a\\b", "é", "x" * 65,
                                  "a:b", "a\nb"])  # fmt: skip
def test_names_outside_the_alphabet_are_usage_errors(cli: Any, name: str) -> None:
    result = cli("--profile", name, "-o", "json", "config", "show")
    assert result.exit_code == 2, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "profile_name_invalid"
    assert "letters, digits" in error["message"]
    assert "Traceback" not in result.stderr


def test_the_environment_variable_is_checked_too(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESENCECTL_PROFILE", "contoso prod")
    result = cli("status")
    assert result.exit_code == 2 and "not allowed" in result.stderr


@pytest.mark.parametrize("name", ["a_b", "contoso-prod", "v1.2", "Sandbox", "x" * 64])
def test_good_names_pass(name: str) -> None:
    assert config.check_profile_name(name) == name
    assert database_path(name).name == f"{name}.db"


def test_names_that_sanitised_to_one_file_no_longer_collide() -> None:
    assert database_path("a_b").name == "a_b.db"
    for name in ("a b", "a/b"):  # main turned both into a_b.db, shared with 'a_b'
        with pytest.raises(UsageError):
            database_path(name)
    with pytest.raises(UsageError):
        config.save_profile(config.Profile(name="a b", tenant_id="t"))
    assert config.list_profiles() == []


def test_an_existing_profile_of_an_old_name_gets_a_migration_hint(cli: Any) -> None:
    path = config.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('[profiles."contoso prod"]\ntenant_id = "contoso.onmicrosoft.com"\n'
                    '[profiles.ok]\ntenant_id = "t.example"\n')  # fmt: skip
    result = cli("--profile", "contoso prod", "-o", "json", "status")
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert "earlier version" in error["hint"] and "[profiles.contoso_prod]" in error["hint"]
    assert str(path) in error["hint"]
    listed = cli("-o", "json", "--profile", "ok", "config", "profiles")
    assert listed.exit_code == 0, listed.stderr
    assert [row["name"] for row in json.loads(listed.stdout)] == ["contoso prod", "ok"]
    assert "no longer accepted" in listed.stderr


def test_sandbox_serve_refuses_a_bad_profile_name_before_it_starts(cli: Any) -> None:
    result = cli("sandbox", "serve", "--port", "0", "--write-profile", "my sandbox")
    assert result.exit_code == 2 and "not allowed" in result.stderr
    assert "base_url" not in result.stdout  # never started
