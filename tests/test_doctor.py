"""presencectl doctor against the sandbox: a healthy profile passes; each broken prerequisite
fails with its remedy and the exit code of its category; one failure never hides the others."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from presencectl import doctor, secrets
from presencectl.config import load_profile, save_profile
from presencectl.identity.errors import PASSWORD_CHANGE_MESSAGE

ADMIN = "admin@contoso.example"
SYNC = "presence-sync@contoso.example"


def run(cli: Any, *args: str, input: str = "") -> Any:
    return cli("--profile", "sandbox", "--no-input", *args, input=input)


def checks_of(result: Any) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in result.json()["checks"]}


@pytest.fixture
def sbx(cli: Any) -> Iterator[Any]:
    """A sandbox with setup-azure done (app, secret, consent), nothing else."""
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=10, seed=1, auto_approve=ADMIN) as sb:
        sb.write_profile("sandbox")
        done = run(cli, "setup-azure")
        assert done.exit_code == 0, done.stderr
        yield sb


@pytest.fixture
def healthy(sbx: Any, cli: Any) -> Any:
    """Everything in place: the sync user changed its first password and is stored, both
    directions enabled."""
    password = sbx.profile_info()["sync_user_password"]
    r = sbx.control.post(f"/_sandbox/users/{SYNC}/password", json={"password": password})
    assert r.status_code == 200
    stored = run(
        cli, "sync-user", "set", "--username", SYNC, "--password-stdin", input=password + "\n"
    )
    assert stored.exit_code == 0, stored.stderr
    profile = load_profile("sandbox")
    profile.enabled_direction = "both"
    save_profile(profile)
    return sbx


def doctor_json(cli: Any) -> Any:
    return run(cli, "-o", "json", "doctor")


def test_healthy_profile_passes(healthy: Any, cli: Any, isolated_env: Any) -> None:
    # How long doctor takes (< 5 s) is a row of bench/timings.py, not an assert here.
    result = doctor_json(cli)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = result.json()
    assert report["profile"] == "sandbox"
    assert report["worst"] in ("ok", "warn") and report["exit_code"] == 0
    checks = checks_of(result)
    for c in checks.values():
        assert set(c) >= {"name", "status", "detail", "remedy"}
        assert c["status"] in doctor.STATUSES
        if c["status"] == "warn":
            assert c["remedy"], c
    must_pass = [
        "Config",
        "Keyring",
        "Secret client_secret",
        "Secret sync_password",
        "Secret connect_client_secret",
        "Reach Entra ID",
        "Reach Graph",
        "Reach Connect sign-in",
        "Reach Connect API",
        "Clock skew",
        "Azure app",
        "Client secret expiry",
        "Consent",
        "Sync user",
        "Connect token",
        "Account contact",
    ]
    assert {n: checks[n]["status"] for n in must_pass} == dict.fromkeys(must_pass, "ok")
    assert "keyring" in checks["Secret client_secret"]["detail"].lower()
    assert SYNC in checks["Sync user"]["detail"]
    assert ADMIN in checks["Account contact"]["detail"]
    manager = checks["Security Manager"]
    assert manager["status"] == "info" and manager["code"] == "confirm_in_control_panel"
    assert "confirm in Control Panel" in manager["detail"] and ADMIN in manager["detail"]
    # The seeded organisation has unmatched people and a conflict: reported, a warning only.
    assert checks["Matching"]["status"] == "warn"
    assert "matched" in checks["Matching"]["detail"] and "conflict" in checks["Matching"]["detail"]

    table = run(cli, "doctor")
    assert table.exit_code == 0
    for name in must_pass:
        assert name in table.stdout
    info = healthy.profile_info()
    stored = [v for v in isolated_env.store.values() if len(v) >= 8]
    for value in [info["sync_user_password"], info["connect_client_secret"], *stored]:
        if value.startswith(("z1:", "chunks:", "{")):
            continue  # token caches
        assert value not in result.stdout + table.stdout + table.stderr


def test_without_sync_user_that_check_is_skipped(sbx: Any, cli: Any) -> None:
    result = doctor_json(cli)
    assert result.exit_code == 0
    checks = checks_of(result)
    assert checks["Sync user"]["status"] == "skip"
    assert checks["Secret sync_password"]["status"] == "skip"


def test_no_config_file_is_exit_3_and_nothing_else_runs(cli: Any) -> None:
    result = cli("--profile", "nope", "-o", "json", "doctor")
    assert result.exit_code == 3
    checks = checks_of(result)
    assert checks["Config"]["status"] == "fail"
    assert checks["Config"]["code"] == "config_missing"
    assert "setup-azure" in checks["Config"]["remedy"]
    assert checks["Azure app"]["status"] == "skip"
    assert result.json()["worst"] == "fail"


def test_unknown_profile_and_invalid_config(sbx: Any, cli: Any) -> None:
    missing = cli("--profile", "other", "-o", "json", "doctor")
    assert missing.exit_code == 3
    assert checks_of(missing)["Config"]["code"] == "config_missing"
    # A typo is the usual cause: the profiles there are, not a second app registration.
    assert "sandbox" in checks_of(missing)["Config"]["detail"]
    assert "config profiles" in checks_of(missing)["Config"]["remedy"]

    from presencectl.config import config_path

    path = config_path()
    path.write_text(path.read_text() + "\n[profiles.sandbox.oops\n")
    broken = doctor_json(cli)
    assert broken.exit_code == 3
    assert "not valid TOML" in checks_of(broken)["Config"]["detail"]


def test_missing_connect_secret(sbx: Any, cli: Any) -> None:
    secrets.delete_secret("sandbox", secrets.CONNECT_CLIENT_SECRET)
    result = doctor_json(cli)
    assert result.exit_code == 3
    checks = checks_of(result)
    secret = checks["Secret connect_client_secret"]
    assert secret["status"] == "fail" and secret["code"] == "connect_secret_missing"
    assert "PRESENCECTL_CONNECT_CLIENT_SECRET" in secret["remedy"]
    assert checks["Connect token"]["status"] == "fail"
    # The Azure side is still checked: one failure does not stop the others.
    assert checks["Azure app"]["status"] == "ok" and checks["Consent"]["status"] == "ok"


def test_missing_client_secret(sbx: Any, cli: Any) -> None:
    secrets.delete_secret("sandbox", secrets.CLIENT_SECRET)
    result = doctor_json(cli)
    assert result.exit_code == 3
    checks = checks_of(result)
    assert checks["Secret client_secret"]["code"] == "client_secret_missing"
    assert checks["Azure app"]["status"] == "fail"
    assert "setup-azure" in checks["Azure app"]["remedy"]
    assert checks["Consent"]["status"] == "skip"
    assert checks["Connect token"]["status"] == "ok"


def test_wrong_connect_secret_is_exit_4(sbx: Any, cli: Any) -> None:
    secrets.set_secret("sandbox", secrets.CONNECT_CLIENT_SECRET, "not-the-secret")
    result = doctor_json(cli)
    assert result.exit_code == 4
    checks = checks_of(result)
    assert checks["Secret connect_client_secret"]["status"] == "ok"
    token = checks["Connect token"]
    assert token["status"] == "fail" and token["code"] == "connect_auth_failed"
    assert "Extend API" in token["remedy"]
    assert "not-the-secret" not in result.stdout


def test_sync_user_with_pending_password_change(sbx: Any, cli: Any) -> None:
    password = sbx.profile_info()["sync_user_password"]
    stored = run(
        cli, "sync-user", "set", "--username", SYNC, "--password-stdin", input=password + "\n"
    )
    assert stored.exit_code == 0
    result = doctor_json(cli)
    assert result.exit_code == 4
    check = checks_of(result)["Sync user"]
    assert check["status"] == "fail" and check["code"] == "password_change_required"
    assert check["detail"] == PASSWORD_CHANGE_MESSAGE
    assert SYNC in check["remedy"] and "change the password" in check["remedy"]
    table = run(cli, "doctor")
    assert table.exit_code == 4 and PASSWORD_CHANGE_MESSAGE in table.stdout
    assert password not in result.stdout + table.stdout + table.stderr


def test_missing_consent_is_exit_4(sbx: Any, cli: Any) -> None:
    world = sbx.world
    client_id = load_profile("sandbox").client_id
    sp = next(s for s in world.service_principals.values() if s["appId"] == client_id)
    by_name = {r["id"]: r["value"] for r in world.graph_service_principal["appRoles"]}

    def revoke(role: str) -> None:
        for key, a in list(world.app_role_assignments.items()):
            if a["principalId"] == sp["id"] and by_name.get(a["appRoleId"]) == role:
                del world.app_role_assignments[key]

    # Graph is asked by using the permission (the token's claims are never read).
    revoke("Presence.ReadWrite.All")
    result = doctor_json(cli)
    assert result.exit_code == 4
    consent = checks_of(result)["Consent"]
    assert consent["status"] == "fail" and consent["code"] == "consent_missing"
    assert "Presence.ReadWrite.All" in consent["detail"]
    assert "presencectl consent" in consent["remedy"]

    revoke("User.Read.All")
    consent = checks_of(doctor_json(cli))["Consent"]
    assert consent["status"] == "fail" and "User.Read.All" in consent["detail"]


def test_unreachable_endpoint_is_exit_1_with_the_proxy_hint(
    sbx: Any, cli: Any, refused_port: int
) -> None:
    profile = load_profile("sandbox")
    profile.connect_api_url = f"https://127.0.0.1:{refused_port}/univerge/api"
    save_profile(profile)
    result = doctor_json(cli)
    assert result.exit_code == 1
    checks = checks_of(result)
    reach = checks["Reach Connect API"]
    assert reach["status"] == "fail" and reach["code"] == "network_error"
    assert "proxy" in reach["remedy"] and "connect_api_url" in reach["detail"]
    assert checks["Account contact"]["status"] == "skip"
    assert checks["Matching"]["status"] == "skip"
    assert checks["Connect token"]["status"] == "ok"  # the sign-in service is elsewhere
    assert checks["Azure app"]["status"] == "ok"


def test_untrusted_certificate_gives_the_ca_bundle_hint(sbx: Any, cli: Any) -> None:
    profile = load_profile("sandbox")
    profile.ca_bundle = None
    save_profile(profile)
    result = doctor_json(cli)
    assert result.exit_code == 1
    checks = checks_of(result)
    for name in ("Reach Entra ID", "Reach Graph", "Reach Connect sign-in", "Reach Connect API"):
        assert checks[name]["status"] == "fail"
        assert "ca_bundle" in checks[name]["remedy"]
    assert checks["Azure app"]["status"] == "skip"


def test_admin_not_a_connect_user_is_a_warning(sbx: Any, cli: Any) -> None:
    profile = load_profile("sandbox")
    profile.admin_email = "someone-else@contoso.example"
    save_profile(profile)
    result = doctor_json(cli)
    assert result.exit_code == 0, result.stdout
    check = checks_of(result)["Account contact"]
    assert check["status"] == "warn" and check["code"] == "admin_not_in_connect"
    assert "someone-else@contoso.example" in check["detail"]
    assert "Control Panel" in check["remedy"]


def test_security_manager_is_never_read_from_contacts(sbx: Any, cli: Any) -> None:
    # A contact the sandbox gives no role at all: doctor cannot tell, so it only asks to confirm.
    other = next(
        p
        for p in sbx.world.people
        if p.connect_id and "Security Manager" not in p.roles and p.connect_email
    )
    profile = load_profile("sandbox")
    profile.connect_account_email = other.connect_email
    save_profile(profile)
    result = doctor_json(cli)
    assert result.exit_code == 0
    check = checks_of(result)["Security Manager"]
    assert check["status"] == "info" and other.connect_email in check["detail"]
    assert checks_of(result)["Account contact"]["status"] == "ok"


@pytest.mark.parametrize(
    ("offset", "status", "exit_code"), [(0, "ok", 0), (120, "warn", 0), (400, "fail", 1)]
)
def test_clock_skew(sbx: Any, offset: float, status: str, exit_code: int) -> None:
    report = doctor.run_doctor("sandbox", now=lambda: time.time() + offset)
    clock = next(c for c in report.checks if c.name == "Clock skew")
    assert clock.status == status, clock
    assert report.exit_code == exit_code
    if status != "ok":
        assert "ahead of" in clock.detail and "NTP" in clock.remedy


@pytest.mark.parametrize(
    ("days", "status", "exit_code"), [(90, "ok", 0), (10, "warn", 0), (-1, "fail", 4)]
)
def test_client_secret_expiry(sbx: Any, days: int, status: str, exit_code: int) -> None:
    profile = load_profile("sandbox")
    end = datetime.now(UTC) + timedelta(days=days)
    profile.verified["client_secret_expires"] = end.strftime("%Y-%m-%dT%H:%M:%SZ")
    save_profile(profile)
    report = doctor.run_doctor("sandbox")
    check = next(c for c in report.checks if c.name == "Client secret expiry")
    assert check.status == status, check
    assert report.exit_code == exit_code
    if status != "ok":
        assert "setup-azure" in check.remedy


def test_secret_expiry_unknown_is_a_warning(sbx: Any) -> None:
    profile = load_profile("sandbox")
    profile.verified.pop("client_secret_expires", None)
    save_profile(profile)
    report = doctor.run_doctor("sandbox")
    check = next(c for c in report.checks if c.name == "Client secret expiry")
    assert check.status == "warn" and "portal" in check.remedy
    assert report.exit_code == 0


def test_keyring_file_fallback_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    check = asyncio.run(doctor.Doctor(None).check_keyring())
    assert check.status == "ok" and "MemoryKeyring" in check.detail
    monkeypatch.setenv(secrets.BACKEND_ENV, "file")
    check = asyncio.run(doctor.Doctor(None).check_keyring())
    assert check.status == "warn" and "secrets.json" in check.detail and check.remedy


def test_secret_sources_are_named(sbx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESENCECTL_CLIENT_SECRET", secrets.get_secret("sandbox", "client_secret"))
    report = doctor.run_doctor("sandbox")
    by_name = {c.name: c for c in report.checks}
    assert "PRESENCECTL_CLIENT_SECRET" in by_name["Secret client_secret"].detail
    assert "keyring" in by_name["Secret connect_client_secret"].detail.lower()


def test_an_unexpected_exception_becomes_a_failed_check() -> None:
    async def boom() -> doctor.Check:
        raise KeyError("surprise")

    check = asyncio.run(doctor.guarded("Boom", boom))
    assert check.status == "fail" and check.exit_code == 1
    assert "KeyError" in check.detail and check.code == "unexpected"


def test_exit_code_is_the_first_failure_and_worst_is_the_most_severe() -> None:
    report = doctor.DoctorReport(
        "p",
        [
            doctor.skip("a", "x"),
            doctor.warn("b", "x", "r"),
            doctor.fail("c", "x", "r", "consent_missing", 4),
            doctor.fail("d", "x", "r", "network_error", 1),
        ],
    )
    assert report.worst == "fail" and report.exit_code == 4
    assert doctor.DoctorReport("p", [doctor.skip("a", "x")]).worst == "ok"
    assert (
        doctor.DoctorReport("p", [doctor.ok("a", "x"), doctor.warn("b", "x", "r")]).exit_code == 0
    )


def test_troubleshooting_lists_every_error_code() -> None:
    """docs/troubleshooting.md must name every code the tool emits (the contract of -o json)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    codes: set[str] = set(doctor.DOCTOR_CODES)
    for path in (root / "presencectl").rglob("*.py"):
        if "sandbox" in path.parts:
            continue  # the sandbox's codes are the emulated services' wire errors
        text = path.read_text("utf-8")
        codes.update(re.findall(r"\bcode\s*=\s*\"([a-z][a-z_]+)\"", text))
        codes.update(re.findall(r"\"(prerequisite_[a-z_]+)\"", text))
    assert len(codes) > 50
    doc = (root / "docs" / "troubleshooting.md").read_text("utf-8")
    missing = sorted(c for c in codes if f"`{c}`" not in doc)
    assert not missing, f"add these codes to docs/troubleshooting.md: {missing}"
