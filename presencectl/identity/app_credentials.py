"""How the app proves itself to Entra ID: a client secret, a certificate, or a federated token.

Owns the profile key ``app_credential`` (``secret``, the default and the seed's flow;
``certificate``; ``federated``) and what each means:

- **secret**: the client secret in the secret store (or ``PRESENCECTL_CLIENT_SECRET``);
- **certificate**: a certificate of the app's (self-signed RSA 2048 made here, or a PEM/PFX file
  the admin brings) registered in the app's ``keyCredentials`` (``PATCH /applications/{id}``,
  which replaces the collection: the certificates already there are sent back by ``keyId``),
  its private key and certificate kept in the secret store as ``app_certificate``; msal signs a
  PS256 client assertion with ``x5t#S256`` (entra-docs ``certificate-credentials.md``;
  msal-python ``client_credential={"private_key", "public_certificate"}``);
- **federated**: a ``federatedIdentityCredential`` on the app (issuer, subject, audience
  ``api://AzureADTokenExchange``; docs-contrib ``application-post-federatedidentitycredentials``)
  and, at every token request, a token read afresh from ``federated_token_file`` (or
  ``AZURE_FEDERATED_TOKEN_FILE``), as a Kubernetes projected service-account token or a CI job's
  OIDC token is (msal ``{"client_assertion": callable}``). No secret is stored at all.

Bad input never stores anything: a file without a private key, an expired certificate, a token
file that is missing or expired, and the AADSTS codes Entra answers (700027, 700024, 700211,
700212, 700213) are errors with the fix (``identity/errors.py`` classifies the codes).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presencectl import secrets
from presencectl.errors import AuthError, ConfigError

if TYPE_CHECKING:
    from presencectl.config import Profile
    from presencectl.graph.client import GraphClient

log = logging.getLogger(__name__)

KINDS = ("secret", "certificate", "federated")
CERTIFICATE_SECRET = "app_certificate"
FEDERATED_TOKEN_ENV = "AZURE_FEDERATED_TOKEN_FILE"
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
CERTIFICATE_DAYS = 365
EXPIRY_WARNING = timedelta(days=30)
# Entra may take a little while to accept a new key everywhere (as with a new secret).
PROOF_DELAYS_S = (0.0, 2.0, 5.0, 10.0, 15.0, 30.0)
REPLICATION_CODES = (700027, 700211, 700213, 700212, 7000215)


@dataclass(frozen=True)
class AppCertificate:
    """The app's certificate and private key (PEM), as kept in the secret store."""

    key_pem: str
    cert_pem: str

    def _cert(self) -> Any:
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.cert_pem.encode())

    @property
    def expires(self) -> datetime:
        return self._cert().not_valid_after_utc  # type: ignore[no-any-return]

    @property
    def thumbprint(self) -> str:
        """The SHA-256 thumbprint (hex) Entra's portal shows beside the SHA-1."""
        from cryptography.hazmat.primitives import hashes

        return str(self._cert().fingerprint(hashes.SHA256()).hex().upper())

    def der_b64(self) -> str:
        from cryptography.hazmat.primitives.serialization import Encoding

        return base64.b64encode(self._cert().public_bytes(Encoding.DER)).decode()

    def to_json(self) -> str:
        return json.dumps({"key_pem": self.key_pem, "cert_pem": self.cert_pem})

    @classmethod
    def from_json(cls, text: str) -> AppCertificate:
        data = json.loads(text)
        return cls(key_pem=str(data["key_pem"]), cert_pem=str(data["cert_pem"]))


def new_certificate(common_name: str, days: int = CERTIFICATE_DAYS) -> AppCertificate:
    """A self-signed RSA 2048 certificate for the app (``cryptography``; no hand-made crypto)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return AppCertificate(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


def load_certificate_file(path: str, passphrase: str | None = None) -> AppCertificate:
    """A PEM file holding the private key and the certificate, or a PFX (PKCS#12) file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise AuthError(
            f"cannot read the certificate file {file}: {exc.strerror}",
            hint="pass --certificate-file with a readable PEM (key and certificate) or PFX file",
            code="certificate_invalid",
        ) from exc
    password = passphrase.encode() if passphrase else None
    key: Any = None
    cert: Any = None
    try:
        if b"-----BEGIN" in data:
            if b"PRIVATE KEY-----" in data:
                key = serialization.load_pem_private_key(data, password=password)
            if b"BEGIN CERTIFICATE" in data:
                cert = x509.load_pem_x509_certificate(data)
        else:
            key, cert, _ = pkcs12.load_key_and_certificates(data, password)
    except (ValueError, TypeError) as exc:
        raise AuthError(
            f"the certificate file {file} cannot be read: {exc}",
            hint="a PEM file with the private key and the certificate, or a PFX file (its "
            "password in PRESENCECTL_CERTIFICATE_PASSWORD)",
            code="certificate_invalid",
        ) from exc
    if key is None:
        raise AuthError(
            f"the certificate file {file} has no private key",
            hint="the app signs with the private key: put the key and the certificate in one "
            "PEM file (or use a PFX)",
            code="certificate_invalid",
        )
    if cert is None:
        raise AuthError(
            f"the certificate file {file} has no certificate",
            hint="append the certificate (-----BEGIN CERTIFICATE-----) to the PEM file",
            code="certificate_invalid",
        )
    if cert.not_valid_after_utc <= datetime.now(UTC):
        raise AuthError(
            f"the certificate in {file} expired on {cert.not_valid_after_utc:%Y-%m-%d}",
            hint="bring a current certificate, or let setup-azure make one "
            "(--credential certificate without --certificate-file)",
            code="certificate_expired",
        )
    return AppCertificate(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


def stored_certificate(profile: Profile) -> AppCertificate | None:
    text = secrets.get_secret(profile.name, CERTIFICATE_SECRET)
    if not text:
        return None
    try:
        return AppCertificate.from_json(text)
    except (ValueError, KeyError):
        log.warning("the stored app certificate of profile '%s' is unreadable", profile.name)
        return None


def federated_token_path(profile: Profile) -> str | None:
    return os.environ.get(FEDERATED_TOKEN_ENV) or profile.federated_token_file


def read_federated_token(path: str) -> str:
    """The token file's content, checked to be a current JWT (read afresh at each use)."""
    file = Path(path)
    try:
        token = file.read_text().strip()
    except OSError as exc:
        raise AuthError(
            f"cannot read the federated token file {file}: {exc.strerror}",
            hint="mount the projected service-account token there, or set "
            f"federated_token_file / {FEDERATED_TOKEN_ENV} to where it is",
            code="federated_token_missing",
        ) from exc
    claims = _unverified_claims(token)
    if claims is None:
        raise AuthError(
            f"the federated token file {file} does not hold a JWT",
            hint="it must hold the token your platform issues (one line, three dot-separated "
            "parts)",
            code="federated_token_invalid",
        )
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and exp <= time.time():
        raise AuthError(
            f"the token in {file} expired at {datetime.fromtimestamp(exp, UTC):%Y-%m-%d %H:%M}Z",
            hint="the platform refreshes the file (Kubernetes: the projected token); check "
            "that it still does",
            code="federated_token_expired",
        )
    return token


def _unverified_claims(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


def client_credential(profile: Profile) -> str | dict[str, Any]:
    """What msal's ConfidentialClientApplication takes as ``client_credential`` for this app."""
    kind = profile.app_credential
    if kind == "certificate":
        cert = stored_certificate(profile)
        if cert is None:
            raise ConfigError(
                f"no app certificate stored for profile '{profile.name}'",
                hint="run `presencectl setup-azure --credential certificate` (it makes or takes "
                "one and registers it on the app)",
                code="app_certificate_missing",
            )
        if cert.expires <= datetime.now(UTC):
            raise AuthError(
                f"the app certificate of profile '{profile.name}' expired on "
                f"{cert.expires:%Y-%m-%d}",
                hint="run `presencectl setup-azure --rotate-credential`",
                code="certificate_expired",
            )
        return {"private_key": cert.key_pem, "public_certificate": cert.cert_pem}
    if kind == "federated":
        path = federated_token_path(profile)
        if not path:
            raise ConfigError(
                f"profile '{profile.name}' signs in with a federated token but names no file",
                hint=f"`presencectl config set federated_token_file PATH`, or set "
                f"{FEDERATED_TOKEN_ENV}",
                code="federated_token_missing",
            )
        read_federated_token(path)  # fail now, with the file named, rather than inside msal
        return {"client_assertion": lambda: read_federated_token(path)}
    secret = secrets.get_secret(profile.name, secrets.CLIENT_SECRET)
    if not secret:
        raise ConfigError(
            f"no client secret stored for profile '{profile.name}'",
            hint="run `presencectl setup-azure` (it adds and stores one), or set "
            "PRESENCECTL_CLIENT_SECRET",
            code="client_secret_missing",
        )
    return secret


# -- setup-azure ---------------------------------------------------------------------------------


async def prove(
    profile: Profile,
    client_id: str,
    credential: str | dict[str, Any],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """One client-credentials token with ``credential``, retried while Entra catches up."""
    from presencectl.graph.permissions import GRAPH_DEFAULT_SCOPE
    from presencectl.identity import msal_apps
    from presencectl.identity.errors import classify

    result: dict[str, Any] = {}
    for delay in PROOF_DELAYS_S:
        await sleep(delay)
        app = msal_apps.confidential_app(profile, client_id, credential)
        with msal_apps.msal_errors(profile.authority):
            result = dict(
                await asyncio.to_thread(app.acquire_token_for_client, scopes=[GRAPH_DEFAULT_SCOPE])
            )
        if "access_token" in result:
            return
        if not set(result.get("error_codes") or []) & set(REPLICATION_CODES):
            break
    raise classify(result, who=client_id, tenant=profile.tenant_id or "", flow="client")


async def ensure_certificate(
    graph: GraphClient,
    profile: Profile,
    app: dict[str, Any],
    *,
    certificate_file: str | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tuple[str, str]:
    """Register a certificate on the app, prove it, then keep it; returns (result, detail)."""
    cert = (
        load_certificate_file(certificate_file, os.environ.get("PRESENCECTL_CERTIFICATE_PASSWORD"))
        if certificate_file
        else new_certificate(f"presencectl {profile.name}")
    )
    current = stored_certificate(profile)
    if current is not None and current.cert_pem == cert.cert_pem:
        return "unchanged", "the stored certificate is registered already"
    held = [
        {"keyId": k["keyId"], "type": k.get("type"), "usage": k.get("usage"), "key": None}
        for k in app.get("keyCredentials") or []
        if k.get("keyId")
    ]
    key_id = str(uuid.uuid4())
    new = {
        "keyId": key_id,
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
        "key": cert.der_b64(),
        "displayName": f"CN=presencectl {profile.name}",
    }
    await graph.request(
        "PATCH", f"/applications/{app['id']}", json={"keyCredentials": [*held, new]}
    )
    try:
        await prove(profile, str(app["appId"]), {
            "private_key": cert.key_pem, "public_certificate": cert.cert_pem,
        }, sleep=sleep)  # fmt: skip
    except AuthError:
        # nothing stored, and the app does not keep a key nobody holds
        await graph.request("PATCH", f"/applications/{app['id']}", json={"keyCredentials": held})
        raise
    secrets.set_secret(profile.name, CERTIFICATE_SECRET, cert.to_json())
    profile.app_credential = "certificate"
    profile.verified["app_certificate_key_id"] = key_id
    profile.verified["app_certificate_expires"] = f"{cert.expires:%Y-%m-%d}"
    return "created", (
        f"SHA-256 {cert.thumbprint[:16]}…, expires {cert.expires:%Y-%m-%d}, private key in the "
        "secret store; no client secret is used"
    )


async def ensure_federated(
    graph: GraphClient,
    profile: Profile,
    app: dict[str, Any],
    *,
    issuer: str,
    subject: str,
    token_file: str | None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tuple[str, str]:
    """Add (once) the federated identity credential; prove it when a token file is at hand."""
    listing = await graph.get_json(f"/applications/{app['id']}/federatedIdentityCredentials")
    existing = [
        c
        for c in (listing.get("value") or [])
        if c.get("issuer") == issuer and c.get("subject") == subject
    ]
    result = "unchanged"
    if not existing:
        name = "presencectl-" + uuid.uuid5(uuid.NAMESPACE_URL, f"{issuer}|{subject}").hex[:12]
        await graph.post_json(
            f"/applications/{app['id']}/federatedIdentityCredentials",
            json={
                "name": name,
                "issuer": issuer,
                "subject": subject,
                "audiences": [EXCHANGE_AUDIENCE],
                "description": "presencectl: sign-in without a client secret",
            },
        )
        result = "created"
    if token_file:
        profile.federated_token_file = token_file
    path = federated_token_path(profile)
    proven = ""
    if path and Path(path).exists():
        await prove(
            profile, str(app["appId"]),
            {"client_assertion": lambda: read_federated_token(path)}, sleep=sleep,
        )  # fmt: skip
        proven = f"; proven with {path}"
    else:
        proven = "; not proven here (no token file on this machine: the first sync will)"
    profile.app_credential = "federated"
    return result, f"issuer {issuer}, subject {subject}{proven}; no client secret is used"


async def rotate_certificate(graph: GraphClient, profile: Profile, app: dict[str, Any]) -> str:
    """``setup-azure --rotate-credential`` for a certificate: a new one registered and proven,
    then the one presencectl registered before removed from the app; returns the detail."""
    old_key_id = str(profile.verified.get("app_certificate_key_id") or "")
    _, detail = await ensure_certificate(graph, profile, app)
    fresh = await graph.get_json(f"/applications/{app['id']}")
    keep = [
        {"keyId": k["keyId"], "type": k.get("type"), "usage": k.get("usage"), "key": None}
        for k in (fresh.get("keyCredentials") or [])
        if k.get("keyId") and k["keyId"] != old_key_id
    ]
    removed = len(keep) < len(fresh.get("keyCredentials") or [])
    if removed:
        await graph.request("PATCH", f"/applications/{app['id']}", json={"keyCredentials": keep})
    return detail + (f"; the previous certificate ({old_key_id}) is removed" if removed else "")


def certificate_health(profile: Profile) -> tuple[str, str]:
    """For doctor: (``ok``|``warn``|``fail``, detail) of the app's credential."""
    kind = profile.app_credential
    if kind == "certificate":
        cert = stored_certificate(profile)
        if cert is None:
            return "fail", "no app certificate in the secret store"
        left = cert.expires - datetime.now(UTC)
        if left <= timedelta(0):
            return "fail", f"the app certificate expired on {cert.expires:%Y-%m-%d}"
        if left <= EXPIRY_WARNING:
            return "warn", f"the app certificate expires on {cert.expires:%Y-%m-%d}"
        return "ok", f"certificate, expires {cert.expires:%Y-%m-%d}"
    if kind == "federated":
        path = federated_token_path(profile)
        if not path:
            return "fail", "no federated token file configured"
        try:
            read_federated_token(path)
        except AuthError as exc:
            return "fail", exc.message
        return "ok", f"federated token from {path}"
    return "ok", "client secret"


__all__ = [
    "CERTIFICATE_SECRET",
    "KINDS",
    "AppCertificate",
    "certificate_health",
    "client_credential",
    "ensure_certificate",
    "ensure_federated",
    "load_certificate_file",
    "new_certificate",
    "read_federated_token",
]
