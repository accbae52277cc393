"""Files and TLS: config.toml and the secrets fallback 0600, the state dir 0700 (database, WAL and
SHM 0600); TLS verification always on — a wrong CA fails against the sandbox, through httpx,
the Connect client, msal (setup-azure) and the CLI; plain http only to loopback."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from presencectl import secrets
from presencectl.config import Profile, config_dir, config_path, save_profile, state_dir
from presencectl.errors import NetworkError, PresencectlError
from presencectl.transport import HttpSettings, build_client


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_config_file_is_0600_and_its_dir_0700() -> None:
    save_profile(Profile(name="p", tenant_id="t"))
    assert mode(config_path()) == 0o600
    assert mode(config_dir()) == 0o700
    config_path().chmod(0o644)
    save_profile(Profile(name="p", tenant_id="t2"))  # a rewrite tightens it again
    assert mode(config_path()) == 0o600


def test_secrets_fallback_is_0600_and_tightened_if_loosened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PRESENCECTL_SECRETS_BACKEND", "file")
    secrets.set_secret("p", secrets.CLIENT_SECRET, "s3cret-value")
    path = secrets.fallback_path()
    assert mode(path) == 0o600
    path.chmod(0o644)
    assert secrets.get_secret("p", secrets.CLIENT_SECRET) == "s3cret-value"
    assert mode(path) == 0o600


def test_state_dir_0700_and_database_files_0600() -> None:
    from presencectl.sync.state import StateStore

    with StateStore.for_profile("p") as store:
        assert store.path.parent == state_dir()
        store._db.execute("CREATE TABLE IF NOT EXISTS probe (x)")
        store._db.execute("INSERT INTO probe VALUES (1)")
        files = [store.path, Path(f"{store.path}-wal"), Path(f"{store.path}-shm")]
        assert mode(state_dir()) == 0o700
        for path in files:
            if path.exists():
                assert mode(path) == 0o600, path


def test_every_tls_context_verifies() -> None:
    for settings in (HttpSettings(), HttpSettings(ca_bundle=None, proxy="http://p:1")):
        ctx = settings.ssl_context()
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


@pytest.fixture
def wrong_ca(tmp_path: Path) -> str:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def test_a_wrong_ca_fails_against_the_sandbox(sandbox: Any, wrong_ca: str) -> None:
    for settings in (HttpSettings(ca_bundle=wrong_ca), HttpSettings()):
        with build_client(settings) as client, pytest.raises(httpx.ConnectError) as err:
            client.get(f"{sandbox.base_url}/_sandbox/health")
        assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)
    with build_client(HttpSettings(ca_bundle=sandbox.ca_bundle)) as client:
        assert client.get(f"{sandbox.base_url}/_sandbox/health").status_code == 200


def test_a_wrong_ca_fails_for_the_connect_client(sandbox: Any, wrong_ca: str) -> None:
    from presencectl.connect import connect_client_for
    from presencectl.connect.directory import list_contacts

    profile = sandbox.write_profile("sandbox")
    profile.ca_bundle = wrong_ca

    async def go() -> Any:
        async with connect_client_for(profile, max_attempts=1) as client:
            return await list_contacts(client)

    with pytest.raises(NetworkError):
        asyncio.run(go())


@pytest.mark.parametrize(
    "argv", [("setup-azure", "--no-input"), ("users",), ("sync-user", "validate")]
)
def test_a_wrong_ca_fails_cleanly_through_the_cli(
    cli: Any, sandbox: Any, wrong_ca: str, argv: tuple[str, ...]
) -> None:
    profile = sandbox.write_profile("sandbox")
    profile.ca_bundle = wrong_ca
    profile.sync_username = "presence-sync@contoso.example"
    save_profile(profile)
    secrets.set_secret("sandbox", secrets.SYNC_PASSWORD, "whatever-it-is")
    result = cli("--profile", "sandbox", "-o", "json", *argv)
    assert "Traceback" not in result.stderr
    assert result.exit_code != 0
    error = result.json()["error"]
    assert error["code"] != "unexpected", error
    assert sandbox.world.stats  # the sandbox was reachable; only trust failed


def test_plain_http_only_to_loopback(cli: Any) -> None:
    from presencectl.config import load_profile

    for host in ("127.0.0.1:8443", "localhost:8443", "[::1]:8443"):
        save_profile(Profile(name="p", graph_url=f"http://{host}/v1.0"))
        assert load_profile("p").graph_url.startswith("http://")
    for key in ("authority_url", "graph_url", "connect_login_url", "connect_api_url"):
        path = config_path()
        path.write_text(f'[profiles.p]\n{key} = "http://graph.example.com/v1.0"\n')
        with pytest.raises(PresencectlError) as err:
            load_profile("p")
        assert err.value.exit_code == 3 and f"'{key}'" in err.value.message
