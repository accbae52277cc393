"""The app signs in without a client secret (issue 23): `setup-azure --credential certificate`
and `--credential federated`, end to end against the sandbox, with the sandbox counting how each
token request was authenticated; and the bad input around them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from presencectl import secrets

ADMIN = "admin@contoso.example"
NEW_PASSWORD = "Brand-new-pass-1!"
SUBJECT = "system:serviceaccount:presencectl-contoso:presencectl"


@pytest.fixture
def sb() -> Any:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=10, seed=4, auto_approve=ADMIN) as sandbox:
        sandbox.write_profile("sandbox")
        yield sandbox


def run(cli: Any, *args: str, **kwargs: Any) -> Any:
    return cli("--profile", "sandbox", "--no-input", *args, **kwargs)


def mint(sb: Any, subject: str = SUBJECT, lifetime_s: float = 3600) -> str:
    answer = sb.control.post(
        "/_sandbox/oidc/token", json={"subject": subject, "lifetime_s": lifetime_s}
    )
    answer.raise_for_status()
    return str(answer.json()["token"])


def by_client_auth(sb: Any) -> dict[str, int]:
    return dict(sb.control.get("/_sandbox/stats").json()["token_requests_by_client_auth"])


def finish_setup_and_sync(sb: Any, cli: Any) -> Any:
    """The sync user, enable, one sync: what a sync needs after setup-azure."""
    info = sb.profile_info()
    sb.control.post(
        f"/_sandbox/users/{info['sync_user']}/password", json={"password": NEW_PASSWORD}
    ).raise_for_status()
    done = run(cli, "sync-user", "set", "--username", info["sync_user"], "--password-stdin",
               input=NEW_PASSWORD + "\n")  # fmt: skip
    assert done.exit_code == 0, done.stderr
    assert run(cli, "sync-user", "validate").exit_code == 0
    assert run(cli, "enable", "--direction", "both").exit_code == 0
    return run(cli, "-o", "json", "sync")


def profile_table(name: str = "sandbox") -> dict[str, Any]:
    from presencectl.config import config_path, read_config

    return dict(read_config(config_path())["profiles"][name])


def test_certificate_a_sync_with_no_secret_at_all(sb: Any, cli: Any) -> None:
    done = run(cli, "-o", "json", "setup-azure", "--credential", "certificate")
    assert done.exit_code == 0, done.stderr
    steps = {s["step"]: s for s in done.json()["steps"]}
    assert steps["App certificate"]["result"] == "created"
    assert "Client secret" not in steps
    assert secrets.get_secret("sandbox", secrets.CLIENT_SECRET) is None
    assert secrets.get_secret("sandbox", "app_certificate")
    table = profile_table()
    assert table["app_credential"] == "certificate"
    assert "BEGIN" not in json.dumps(table)  # the key is in the secret store, not config.toml
    app = sb.world.application_by_app_id(table["client_id"])
    assert [k["type"] for k in app["keyCredentials"]] == ["AsymmetricX509Cert"]
    assert app["passwordCredentials"] == []
    sb.control.delete("/_sandbox/stats")
    result = finish_setup_and_sync(sb, cli)
    assert result.exit_code == 0, result.stderr
    assert result.json()["matched"] > 0
    counts = by_client_auth(sb)
    assert counts["secret"] == 0 and counts["certificate"] >= 1, counts
    shown = run(cli, "-o", "json", "config", "show").json()
    assert "app_credential" in json.dumps(shown)


def test_federated_a_sync_on_a_token_file(sb: Any, cli: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(mint(sb))
    issuer = sb.profile_info()["oidc_issuer"]
    done = run(cli, "-o", "json", "setup-azure", "--credential", "federated",
               "--federated-issuer", issuer, "--federated-subject", SUBJECT,
               "--federated-token-file", str(token_file))  # fmt: skip
    assert done.exit_code == 0, done.stderr
    step = next(s for s in done.json()["steps"] if s["step"] == "Federated credential")
    assert step["result"] == "created" and "proven" in step["detail"]
    assert secrets.get_secret("sandbox", secrets.CLIENT_SECRET) is None
    table = profile_table()
    assert table["app_credential"] == "federated"
    assert table["federated_token_file"] == str(token_file)
    app = sb.world.application_by_app_id(table["client_id"])
    (fic,) = app["federatedIdentityCredentials"]
    assert (fic["issuer"], fic["subject"], fic["audiences"]) == (
        issuer, SUBJECT, ["api://AzureADTokenExchange"],
    )  # fmt: skip
    again = run(cli, "-o", "json", "setup-azure", "--credential", "federated",
                "--federated-issuer", issuer, "--federated-subject", SUBJECT)  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert len(app["federatedIdentityCredentials"]) == 1  # a rerun adds none
    sb.control.delete("/_sandbox/stats")
    token_file.write_text(mint(sb))  # the platform refreshes the file: read afresh each time
    result = finish_setup_and_sync(sb, cli)
    assert result.exit_code == 0, result.stderr
    counts = by_client_auth(sb)
    assert counts["secret"] == 0 and counts["federated"] >= 1, counts


def _federated_profile(sb: Any, cli: Any, tmp_path: Path, issuer: str | None = None) -> Path:
    token_file = tmp_path / "token"
    token_file.write_text(mint(sb))
    done = run(cli, "setup-azure", "--credential", "federated",
               "--federated-issuer", issuer or sb.profile_info()["oidc_issuer"],
               "--federated-subject", SUBJECT,
               "--federated-token-file", str(token_file))  # fmt: skip
    assert done.exit_code == 0, done.stderr
    return token_file


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("missing", "federated_token_missing", "cannot read the federated token file"),
        ("expired", "federated_token_expired", "expired at"),
        ("other subject", "app_credential_refused", "subject"),
    ],
)
def test_a_bad_token_file_is_a_sign_in_error_naming_the_fix(
    sb: Any, cli: Any, tmp_path: Path, case: str, code: str, words: str
) -> None:
    token_file = _federated_profile(sb, cli, tmp_path)
    if case == "missing":
        token_file.unlink()
    elif case == "expired":
        token_file.write_text(mint(sb, lifetime_s=-60))
    else:
        token_file.write_text(mint(sb, subject="system:serviceaccount:other:intruder"))
    result = run(cli, "-o", "json", "consent", "--check", "--as-app")
    assert result.exit_code == 4, result.stdout + result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["code"] == code, error
    assert words in error["message"]
    if case != "other subject":
        assert str(token_file) in error["message"]
    assert "Traceback" not in result.stderr


def test_an_issuer_the_app_does_not_trust_is_700211(sb: Any, cli: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(mint(sb))
    done = run(cli, "-o", "json", "setup-azure", "--credential", "federated",
               "--federated-issuer", "https://oidc.example.com/cluster-1",
               "--federated-subject", SUBJECT,
               "--federated-token-file", str(token_file))  # fmt: skip
    assert done.exit_code == 4, done.stdout + done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "app_credential_refused"
    assert "AADSTS700211" in error["message"] and "issuer" in error["message"]


def test_a_certificate_the_app_does_not_hold_is_refused(sb: Any, cli: Any) -> None:
    from presencectl.identity.app_credentials import new_certificate

    assert run(cli, "setup-azure", "--credential", "certificate").exit_code == 0
    secrets.set_secret("sandbox", "app_certificate", new_certificate("intruder").to_json())
    result = run(cli, "-o", "json", "consent", "--check", "--as-app")
    assert result.exit_code == 4, result.stdout + result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "app_credential_refused" and "AADSTS700027" in error["message"]


def _pem_file(tmp_path: Path, *, key: bool, days: int) -> Path:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "brought")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now + dt.timedelta(days=days)).sign(private, hashes.SHA256())
    )  # fmt: skip
    data = cert.public_bytes(serialization.Encoding.PEM)
    if key:
        data = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ) + data  # fmt: skip
    path = tmp_path / "app.pem"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("key", "days", "code"),
    [(False, 90, "certificate_invalid"), (True, -1, "certificate_expired")],
    ids=["no private key", "expired"],
)
def test_a_bad_certificate_file_stores_nothing(
    sb: Any, cli: Any, tmp_path: Path, key: bool, days: int, code: str
) -> None:
    path = _pem_file(tmp_path, key=key, days=days)
    result = run(cli, "-o", "json", "setup-azure", "--credential", "certificate",
                 "--certificate-file", str(path))  # fmt: skip
    assert result.exit_code == 4, result.stdout + result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["code"] == code and str(path) in error["message"]
    assert secrets.get_secret("sandbox", "app_certificate") is None
    assert profile_table().get("app_credential", "secret") == "secret"


def test_a_brought_certificate_is_used(sb: Any, cli: Any, tmp_path: Path) -> None:
    path = _pem_file(tmp_path, key=True, days=90)
    result = run(cli, "-o", "json", "setup-azure", "--credential", "certificate",
                 "--certificate-file", str(path))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    stored = json.loads(secrets.get_secret("sandbox", "app_certificate") or "{}")
    assert stored["cert_pem"].strip() in path.read_text()
    assert run(cli, "consent", "--check", "--as-app").exit_code == 0


def test_credential_flags_that_do_not_go_together_are_usage_errors(cli: Any) -> None:
    bad = cli("setup-azure", "--tenant", "contoso.example", "--credential", "federated")
    assert bad.exit_code == 2 and "--federated-issuer" in bad.stderr
    bad = cli("setup-azure", "--tenant", "contoso.example", "--certificate-file", "x.pem")
    assert bad.exit_code == 2 and "--credential certificate" in bad.stderr
    bad = cli("setup-azure", "--tenant", "contoso.example", "--credential", "password")
    assert bad.exit_code == 2


def test_the_sandbox_refuses_a_key_credential_without_a_certificate(sb: Any, cli: Any) -> None:
    assert run(cli, "setup-azure", "--credential", "certificate").exit_code == 0
    table = profile_table()
    app = sb.world.application_by_app_id(table["client_id"])
    shown = app["keyCredentials"][0]
    assert base64.b64decode(shown["key"])  # held by the sandbox; never shown on a read:
    from sandbox_helpers import admin_token, client

    with client(sb, admin_token(sb)) as graph:
        read = graph.get(f"/v1.0/applications/{app['id']}").json()
        assert read["keyCredentials"][0]["key"] is None
        bad = graph.patch(f"/v1.0/applications/{app['id']}",
                          json={"keyCredentials": [{"keyId": "new", "type": "AsymmetricX509Cert",
                                                    "usage": "Verify"}]})  # fmt: skip
    assert bad.status_code == 400


def test_doctor_warns_30_days_before_the_certificate_ends(
    sb: Any, cli: Any, tmp_path: Path
) -> None:
    path = _pem_file(tmp_path, key=True, days=20)
    assert run(cli, "setup-azure", "--credential", "certificate",
               "--certificate-file", str(path)).exit_code == 0  # fmt: skip
    report = run(cli, "-o", "json", "doctor")
    rows = {r["name"]: r for r in json.loads(report.stdout)["checks"]}
    row = rows["Client secret expiry"]
    assert row["status"] == "warn" and row["code"] == "app_certificate_expiring", row
    assert "expires on" in row["detail"]


def test_rotate_credential_replaces_the_certificate(sb: Any, cli: Any) -> None:
    assert run(cli, "setup-azure", "--credential", "certificate").exit_code == 0
    before = secrets.get_secret("sandbox", "app_certificate")
    app = sb.world.application_by_app_id(profile_table()["client_id"])
    (old,) = [k["keyId"] for k in app["keyCredentials"]]
    done = run(cli, "-o", "json", "setup-azure", "--rotate-credential")
    assert done.exit_code == 0, done.stderr
    assert "previous certificate" in done.json()["steps"][-1]["detail"]
    assert secrets.get_secret("sandbox", "app_certificate") != before
    assert [k["keyId"] for k in app["keyCredentials"]] == [profile_table()["verified"][
        "app_certificate_key_id"]] != [old]  # fmt: skip
    assert run(cli, "consent", "--check", "--as-app").exit_code == 0
