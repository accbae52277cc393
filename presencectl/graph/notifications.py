"""Graph change notifications for presence: what arrives, how it is checked and decrypted.

Owns parsing a ``changeNotificationCollection`` into :class:`PresenceChange` and
:class:`LifecycleEvent`, the ``clientState`` check, the encryption certificate (self-signed RSA
2048, made here, kept by the caller) and the decryption of ``encryptedContent`` exactly as
microsoft-graph-docs-contrib concepts/change-notifications-with-resource-data.md describes it:
``dataKey`` decrypted with RSA-OAEP, then the HMAC-SHA256 of the encrypted ``data`` under that key
compared with ``dataSignature`` *before* anything is decrypted, then AES-CBC/PKCS7 with the key's
first 16 bytes as IV. A notification that fails any step is untrusted: :class:`Untrusted` says
why (never what it held). The crypto is the ``cryptography`` package's; nothing is hand-rolled.
Also owns :class:`ValidationTokenChecker`: the ``validationTokens`` JWTs of a batch checked as the
same page and msgraph-sdk-dotnet-core ``ITokenValidableExtension.cs`` say (PyJWT does the JWT work).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

CERT_LIFETIME = timedelta(days=30)
CERT_ROTATE_BEFORE = timedelta(days=7)


class Untrusted(Exception):
    """A notification that must not be believed (bad clientState, signature, or content)."""


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """One change notification: the user's id and, for rich ones, the decrypted presence."""

    subscription_id: str
    user_id: str
    availability: str | None = None
    activity: str | None = None

    @property
    def has_data(self) -> bool:
        return self.availability is not None


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    subscription_id: str
    event: str  # reauthorizationRequired | subscriptionRemoved | missed


@dataclass(frozen=True, slots=True)
class EncryptionCertificate:
    """Our certificate for rich notifications: the public part goes to Graph, the key stays."""

    cert_id: str
    cert_pem: str
    key_pem: str
    not_after: datetime

    def graph_value(self) -> str:
        """``encryptionCertificate``: the base64 DER X.509 certificate (public key only)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_pem_x509_certificate(self.cert_pem.encode())
        return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    def due_for_rotation(self, now: datetime) -> bool:
        return now >= self.not_after - CERT_ROTATE_BEFORE

    def to_json(self) -> str:
        return json.dumps(
            {
                "cert_id": self.cert_id,
                "cert_pem": self.cert_pem,
                "key_pem": self.key_pem,
                "not_after": self.not_after.isoformat(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> EncryptionCertificate:
        data = json.loads(text)
        return cls(
            data["cert_id"],
            data["cert_pem"],
            data["key_pem"],
            datetime.fromisoformat(data["not_after"]),
        )


def new_encryption_certificate(
    profile: str, *, now: datetime | None = None, lifetime: timedelta = CERT_LIFETIME
) -> EncryptionCertificate:
    """A self-signed RSA 2048 certificate (Graph does not check the issuer, only uses the key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    start = now or datetime.now(UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"presencectl {profile}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - timedelta(minutes=5))
        .not_valid_after(start + lifetime)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    thumb = hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return EncryptionCertificate(f"presencectl-{thumb[:16]}", cert_pem, key_pem, start + lifetime)


def decrypt_content(encrypted: Mapping[str, Any], key_pem: str) -> dict[str, Any]:
    """The resource inside ``encryptedContent``; raises Untrusted when the signature fails."""
    from cryptography.hazmat.primitives import hashes, padding, serialization
    from cryptography.hazmat.primitives.asymmetric import padding as asym
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    try:
        data = base64.b64decode(str(encrypted["data"]), validate=True)
        signature = base64.b64decode(str(encrypted["dataSignature"]), validate=True)
        data_key = base64.b64decode(str(encrypted["dataKey"]), validate=True)
    except (KeyError, ValueError) as exc:
        raise Untrusted("encryptedContent is incomplete") from exc
    private = serialization.load_pem_private_key(key_pem.encode(), password=None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise Untrusted("the encryption key is not RSA")
    try:
        key = private.decrypt(
            data_key,
            asym.OAEP(mgf=asym.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
        )
    except ValueError as exc:
        raise Untrusted("dataKey does not open with our key") from exc
    expected = hmac.new(key, data, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise Untrusted("dataSignature does not match")
    if len(key) not in (16, 24, 32) or len(data) % 16:
        raise Untrusted("encrypted data has a bad shape")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
        resource = json.loads(plain)
    except ValueError as exc:
        raise Untrusted("decrypted data is not a JSON resource") from exc
    if not isinstance(resource, dict):
        raise Untrusted("decrypted data is not a JSON resource")
    return resource


def parse_collection(body: Any) -> list[Mapping[str, Any]]:
    """The items of a ``changeNotificationCollection`` (``{"value": [...]}``)."""
    if not isinstance(body, Mapping) or not isinstance(body.get("value"), list):
        raise Untrusted("not a changeNotificationCollection")
    return [item for item in body["value"] if isinstance(item, Mapping)]


def client_state_ok(item: Mapping[str, Any], expected: str) -> bool:
    got = item.get("clientState")
    return isinstance(got, str) and hmac.compare_digest(got.encode(), expected.encode())


def _user_id(item: Mapping[str, Any]) -> str:
    data = item.get("resourceData")
    if isinstance(data, Mapping) and isinstance(data.get("id"), str) and data["id"]:
        return str(data["id"])
    resource = str(item.get("resource") or "")
    # communications/presences/{id} or communications/presences('{id}')
    tail = resource.rstrip("/").rsplit("/", 1)[-1]
    if "(" in tail:
        tail = tail.split("(", 1)[1]
    tail = tail.strip("'()")
    if not tail or tail.lower() == "presences":
        raise Untrusted("notification without a user id")
    return tail


def read_item(item: Mapping[str, Any], keys: Mapping[str, str]) -> PresenceChange | LifecycleEvent:
    """One trusted-clientState item as a change or lifecycle event; rich ones decrypted with the
    key of their ``encryptionCertificateId`` (``keys``: id → private key PEM)."""
    sub_id = str(item.get("subscriptionId") or "")
    if isinstance(item.get("lifecycleEvent"), str):
        return LifecycleEvent(sub_id, str(item["lifecycleEvent"]))
    user_id = _user_id(item)
    encrypted = item.get("encryptedContent")
    if not isinstance(encrypted, Mapping):
        return PresenceChange(sub_id, user_id)
    key_pem = keys.get(str(encrypted.get("encryptionCertificateId") or ""))
    if key_pem is None:
        raise Untrusted("encrypted with a certificate we do not hold")
    resource = decrypt_content(encrypted, key_pem)
    if str(resource.get("id") or user_id) != user_id:
        raise Untrusted("decrypted resource names another user")
    availability, activity = resource.get("availability"), resource.get("activity")
    if not isinstance(availability, str) or not isinstance(activity, str):
        return PresenceChange(sub_id, user_id)
    return PresenceChange(sub_id, user_id, availability, activity)


__all__ = [
    "EncryptionCertificate",
    "LifecycleEvent",
    "PresenceChange",
    "Untrusted",
    "client_state_ok",
    "decrypt_content",
    "new_encryption_certificate",
    "parse_collection",
    "read_item",
]


# ----------------------------------------------------------------------- validation tokens

# The Graph change notification publisher: the ``appid`` (v1 tokens) or ``azp`` (v2) of every
# validation token (change-notifications-with-resource-data.md, "Validating the authenticity").
GRAPH_NOTIFICATION_PUBLISHER = "0bf30f3b-4a52-48df-9a82-234910c4a086"
# The issuers a validation token may carry for tenant {0}: v1 and v2 tokens (msgraph-sdk-dotnet-core
# ITokenValidableExtension.cs; the docs' example token is v1, ``https://sts.windows.net/{tid}/``).
ISSUER_FORMATS = ("https://sts.windows.net/{0}/", "https://login.microsoftonline.com/{0}/v2.0")
KEYS_REFRESH_MIN_S = 60.0  # an unknown kid refetches the keys at most this often
CLOCK_LEEWAY_S = 60

FetchJson = Callable[[str], Awaitable[Any]]


class ValidationTokenChecker:
    """Every JWT in a notification batch's ``validationTokens``, checked as Microsoft says.

    Signature (RS256) with the keys at the ``jwks_uri`` of the tenant's OpenID metadata (fetched
    once, refetched when a token names an unknown ``kid``), expiry (``exp``/``nbf``), ``aud`` =
    our app id, ``iss`` = the tenant's v1 or v2 issuer (or the metadata's own), and ``appid`` /
    ``azp`` = the Graph change notification publisher. A batch of rich notifications
    (``encryptedContent``) without tokens is untrusted too. PyJWT does the JWT work.
    """

    def __init__(
        self,
        authority: str,
        app_id: str,
        fetch_json: FetchJson,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.metadata_url = f"{authority.rstrip('/')}/v2.0/.well-known/openid-configuration"
        self.app_id = app_id
        self._fetch = fetch_json
        self._clock = clock or time.time
        self._issuers: list[str] = []
        self._jwks_uri = ""
        self._keys: dict[str, Any] = {}
        self._keys_at: float | None = None
        self.key_fetches = 0

    async def check(self, collection: Mapping[str, Any]) -> None:
        """Raise :class:`Untrusted` unless every token of the batch verifies."""
        tokens = collection.get("validationTokens")
        items = collection.get("value")
        rich = isinstance(items, list) and any(
            isinstance(i, Mapping) and i.get("encryptedContent") for i in items
        )
        if tokens is None or tokens == []:
            if rich:
                raise Untrusted("rich notifications without validationTokens")
            return
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise Untrusted("validationTokens is not a list of tokens")
        for token in tokens:
            await self._check_one(token)

    async def _check_one(self, token: str) -> None:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Untrusted(f"a validation token is not a JWT ({exc})") from None
        if header.get("alg") != "RS256":
            raise Untrusted(f"a validation token is signed with {header.get('alg')!r}, not RS256")
        key = await self._key(str(header.get("kid") or ""))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self.app_id,
                issuer=self._issuers,
                leeway=CLOCK_LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise Untrusted(f"a validation token does not verify ({exc})") from None
        publisher = claims.get("azp") or claims.get("appid")
        if publisher != GRAPH_NOTIFICATION_PUBLISHER:
            raise Untrusted(f"a validation token was issued to {publisher!r}, not to Graph")

    async def _key(self, kid: str) -> Any:
        if not self._jwks_uri:
            await self._load_metadata()
        if kid not in self._keys:
            now = self._clock()
            if self._keys_at is None or now - self._keys_at >= KEYS_REFRESH_MIN_S:
                await self._load_keys()
        if kid not in self._keys:
            raise Untrusted(f"a validation token names an unknown signing key {kid!r}")
        return self._keys[kid]

    async def _load_metadata(self) -> None:
        import re

        try:
            meta = await self._fetch(self.metadata_url)
        except Exception as exc:  # network or JSON: nothing can be verified
            raise Untrusted(f"cannot read the tenant's OpenID metadata: {exc}") from None
        issuer = str((meta or {}).get("issuer") or "")
        self._jwks_uri = str((meta or {}).get("jwks_uri") or "")
        found = re.search(r"[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}", issuer, re.I)
        if not self._jwks_uri or not found:
            self._jwks_uri = ""
            raise Untrusted("the tenant's OpenID metadata names no tenant issuer or jwks_uri")
        tenant = found.group(0).lower()
        self._issuers = [f.format(tenant) for f in ISSUER_FORMATS] + [issuer]

    async def _load_keys(self) -> None:
        import jwt

        self._keys_at = self._clock()
        self.key_fetches += 1
        try:
            document = await self._fetch(self._jwks_uri)
        except Exception as exc:
            raise Untrusted(f"cannot read the tenant's signing keys: {exc}") from None
        keys: dict[str, Any] = {}
        for entry in (document or {}).get("keys") or []:
            try:
                keys[str(entry.get("kid") or "")] = jwt.PyJWK(entry, algorithm="RS256").key
            except (jwt.PyJWTError, TypeError, ValueError):
                continue  # a key of another type or use: not one of ours
        self._keys = keys
