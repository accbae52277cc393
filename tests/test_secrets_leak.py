"""No secret leaks: the whole flow at ``-vv`` against the sandbox, every output scanned.

The flow is the operator's: setup-azure (device code auto-approved), connect set
--client-secret-stdin, consent --check, sync-user set --password-stdin, sync-user validate, enable,
connect verify, sync, status, users, disable --yes. Every token
the sandbox signs is captured by wrapping ``World.encode_jwt`` (access and id tokens of Entra and
Connect); refresh tokens and device codes are read from the World at the end. The scan covers
stdout, stderr, our own log records before any redaction, every file of the config dir except the
secrets fallback file, and every file of the state dir (SQLite database, WAL, journal). The
fallback file is allowed to hold secrets — it must be 0600, and no other file may.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from presencectl.config import config_dir, state_dir

pytestmark = pytest.mark.timeout(120)

ADMIN = "admin@contoso.example"
NEW_PASSWORD = "Leak-Canary-Passw0rd!"


class Capture:
    """Every secret the run may hold, and everything it wrote."""

    def __init__(self, sb: Any) -> None:
        self.sb = sb
        self.tokens: list[str] = []
        self.outputs: list[str] = []
        original = sb.world.encode_jwt

        def recording(payload: dict[str, Any]) -> str:
            token: str = original(payload)
            self.tokens.append(token)
            return token

        sb.world.encode_jwt = recording  # instance attribute: issue_token calls self.encode_jwt

    def secrets(self) -> dict[str, str]:
        info = self.sb.profile_info()
        world = self.sb.world
        found: dict[str, str] = {
            "sync_user_password": NEW_PASSWORD,
            "sync_user_first_password": info["sync_user_password"],
            "connect_client_secret": info["connect_client_secret"],
        }
        for app_id, secrets in world.app_secrets.items():
            for i, secret in enumerate(secrets):
                found[f"client_secret:{app_id}:{i}"] = secret
        for i, token in enumerate(self.tokens):
            found[f"token:{i}"] = token
            signature = token.rsplit(".", 1)[-1]
            found[f"token_signature:{i}"] = signature
            payload = token.split(".")[1]
            found[f"token_payload_middle:{i}"] = payload[len(payload) // 2 :][:32]
        for i, token in enumerate(world.refresh_tokens):
            found[f"refresh_token:{i}"] = token
        for i, code in enumerate(world.device_codes):
            found[f"device_code:{i}"] = code
        return {k: v for k, v in found.items() if v and len(v) >= 8}


def scan(text: str, secrets: dict[str, str], where: str) -> list[str]:
    return [f"{name} in {where}" for name, value in secrets.items() if value in text]


def scan_dir(root: Path, secrets: dict[str, str], skip: set[Path]) -> list[str]:
    hits: list[str] = []
    if not root.exists():
        return hits
    for path in sorted(root.rglob("*")):
        if path.is_file() and path not in skip:
            data = path.read_bytes().decode("utf-8", "replace")
            hits += scan(data, secrets, str(path.relative_to(root)))
    return hits


@pytest.fixture
def flow(cli: Any, caplog: pytest.LogCaptureFixture) -> Iterator[tuple[Capture, Any]]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=8, seed=5, auto_approve=ADMIN) as sb:
        capture = Capture(sb)
        info = sb.profile_info()
        sb.write_profile("sandbox")

        def run(*args: str, input: str = "", ok: tuple[int, ...] = (0,)) -> Any:
            result = cli("-vv", "--profile", "sandbox", *args, input=input)
            capture.outputs += [result.stdout, result.stderr]
            assert result.exit_code in ok, (args, result.stdout, result.stderr)
            return result

        caplog.set_level(logging.DEBUG)
        run("setup-azure", "--no-input")
        run("connect", "set", "--client-id", info["connect_client_id"], "--client-secret-stdin",
            input=info["connect_client_secret"] + "\n")  # fmt: skip
        run("consent", "--check")
        sb.control.post(
            f"/_sandbox/users/{info['sync_user']}/password", json={"password": NEW_PASSWORD}
        ).raise_for_status()
        run("sync-user", "set", "--username", info["sync_user"], "--password-stdin",
            input=NEW_PASSWORD + "\n")  # fmt: skip
        run("sync-user", "validate")
        run("enable")
        person = next(p for p in sb.world.people if p.azure_id and p.connect_id
                      and p.email not in (ADMIN, info["sync_user"]))  # fmt: skip
        run("-o", "json", "connect", "verify", "--user", person.connect_email, "--settle", "2")
        sb.control.post(
            "/_sandbox/connect/presence", json={"user": person.connect_email, "status": "onphone"}
        ).raise_for_status()
        run("-o", "json", "sync", ok=(0, 5))
        run("sync", ok=(0, 5))
        run("-o", "json", "status")
        run("-o", "json", "users")
        run("-o", "json", "config", "show")
        run("disable", "--yes")
        yield capture, caplog


def _assert_no_leak(capture: Capture, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    secrets = capture.secrets()
    assert any(k.startswith("client_secret:") for k in secrets)  # setup-azure made one
    assert sum(k.startswith("token:") for k in secrets) >= 4  # Graph app, sync user, Connect…
    hits: list[str] = []
    for i, text in enumerate(capture.outputs):
        hits += scan(text, secrets, f"output #{i}")
    for record in caplog.records:
        if record.name.startswith("presencectl") and not record.name.startswith(
            "presencectl.sandbox"
        ):
            hits += scan(record.getMessage(), secrets, f"log record {record.name}")
    fallback = config_dir() / "secrets.json"
    hits += scan_dir(config_dir(), secrets, skip={fallback})
    hits += scan_dir(state_dir(), secrets, skip=set())
    assert not hits, hits
    return secrets


def test_whole_flow_at_debug_leaks_nothing(flow: tuple[Capture, Any]) -> None:
    capture, caplog = flow
    _assert_no_leak(capture, caplog)
    assert any("→ POST" in text or "POST" in text for text in capture.outputs)  # -vv was on
    assert state_dir().exists() and any(state_dir().iterdir())  # the database was scanned


@pytest.fixture
def file_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESENCECTL_SECRETS_BACKEND", "file")


def test_file_fallback_holds_the_secrets_0600_and_nothing_else_does(
    file_backend: None, flow: tuple[Capture, Any]
) -> None:
    capture, caplog = flow
    secrets = _assert_no_leak(capture, caplog)
    fallback = config_dir() / "secrets.json"
    assert fallback.exists()
    assert stat.S_IMODE(fallback.stat().st_mode) == 0o600
    text = fallback.read_text("utf-8")
    assert secrets["connect_client_secret"] in text
    assert any(v in text for k, v in secrets.items() if k.startswith("client_secret:"))
    # no temp file of an interrupted write is left behind with a secret in it
    leftovers = [p.name for p in config_dir().iterdir() if p.name.startswith(".secrets.")]
    assert not leftovers


def test_debug_log_redacts_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    """What the CLI's log handler prints at -vv: Authorization, password, client_secret,
    refresh_token and code are redacted, whatever logger (ours or a library's) wrote them."""
    from presencectl.output import setup_logging

    setup_logging(3)
    try:
        log = logging.getLogger("msal.some_library")
        log.debug("Authorization: Bearer eyJhbGciOi.SECRETPAYLOAD.SIGNATURE123")
        log.debug("{'authorization': 'Basic dXNlcjpTRUNSRVRQQVNT'}")
        log.debug("POST /token grant_type=password&username=a@b&password=SECRETPASS&scope=x")
        log.debug("client_secret=SECRETCLIENT&client_id=abc")
        log.debug('{"refresh_token": "SECRETREFRESH", "access_token": "SECRETACCESS"}')
        log.debug("GET /cb?code=SECRETCODE&state=s")
        log.debug("device_code=SECRETDEVICE")
        log.debug("%s", {"password": "SECRETDICT"})
    finally:
        setup_logging(0)
    err = capsys.readouterr().err
    for secret in ("SECRETPAYLOAD", "SIGNATURE123", "dXNlcjpTRUNSRVRQQVNT", "SECRETPASS",
                   "SECRETCLIENT", "SECRETREFRESH", "SECRETACCESS", "SECRETCODE",
                   "SECRETDEVICE", "SECRETDICT"):  # fmt: skip
        assert secret not in err, (secret, err)
    assert err.count("***") >= 8
    assert "client_id=abc" in err and "state=s" in err  # only secrets go


def test_no_secret_in_environment_of_error_output(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret passed by environment is never echoed, even when the command fails."""
    monkeypatch.setenv("PRESENCECTL_CLIENT_SECRET", "EnvSecretCanary-123456")
    monkeypatch.setenv("PRESENCECTL_SYNC_PASSWORD", "EnvPasswordCanary-123456")
    for argv in (("-vv", "config", "show"), ("-vv", "-o", "json", "status"), ("-vv", "sync")):
        result = cli(*argv)
        blob = result.stdout + result.stderr
        assert "EnvSecretCanary" not in blob and "EnvPasswordCanary" not in blob
    assert os.environ["PRESENCECTL_CLIENT_SECRET"]  # still there for the next command
