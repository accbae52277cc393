"""Client assertions at the sandbox's token endpoint, and the sandbox as an OIDC issuer.

Entra ID accepts, wherever a client secret may be sent, ``client_assertion_type=
urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and a ``client_assertion`` JWT of one of
two kinds (entra-docs ``identity-platform/certificate-credentials.md``;
``workload-id/workload-identity-federation.md``):

- **certificate**: signed by the app itself (PS256 with ``x5t#S256``, or RS256 with the SHA-1
  ``x5t`` that older libraries send); ``iss`` = ``sub`` = the app id, ``aud`` = the token
  endpoint; the certificate must be one of the app's ``keyCredentials`` (``PATCH
  /applications/{id}``). A signature that does not verify, or a key the app does not hold:
  ``AADSTS700027``; outside its validity: ``AADSTS700024``.
- **federated**: issued by another identity provider (a Kubernetes service account, a CI job);
  accepted when the app has a ``federatedIdentityCredential`` with that ``issuer`` (else
  ``AADSTS700211``), ``subject`` (else ``AADSTS700213``) and an audience the token carries
  (else ``AADSTS700212``), and the issuer's published key verifies it. The sandbox can only
  fetch keys of issuers it knows: its own (``/_sandbox/oidc``), which mints tokens on request
  (``POST /_sandbox/oidc/token``) as a cluster or a CI system would.

Every token request is counted by how the client proved itself
(``token_requests_by_client_auth``: ``secret``, ``certificate``, ``federated``) so that a test
can show a sync ran without a secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import TYPE_CHECKING, Any

from presencectl.sandbox.errors import entra_error

if TYPE_CHECKING:
    from starlette.responses import Response

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
OIDC_PATH = "/_sandbox/oidc"
OIDC_TOKEN_LIFETIME = 3600


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    def decoded(part: str) -> Any:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))

    try:
        head, body, _ = token.split(".")
        header, claims = decoded(head), decoded(body)
    except ValueError:
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    return header, claims


class ClientAuth:
    """How the sandbox checks a confidential client's proof, and its OIDC issuer's key."""

    def __init__(self, world: Any) -> None:  # sandbox/world.py's World, which owns this
        self.world = world
        self._issuer_key: Any = None
        self.kid = uuid.uuid5(uuid.NAMESPACE_URL, world.tenant_id).hex[:16]

    # -- the issuer ------------------------------------------------------------------------------

    def issuer_key(self) -> Any:
        if self._issuer_key is None:
            from cryptography.hazmat.primitives.asymmetric import rsa

            self._issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._issuer_key

    def jwks(self) -> dict[str, Any]:
        numbers = self.issuer_key().public_key().public_numbers()

        def encode(n: int) -> str:
            return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": self.kid,
                    "n": encode(numbers.n),
                    "e": encode(numbers.e),
                }
            ]
        }

    def mint(self, issuer: str, subject: str, audience: str, lifetime: float) -> str:
        """A token as a Kubernetes service account or a CI job would hold (RS256, our kid)."""
        import jwt

        now = int(self.world.clock.now())
        claims = {
            "iss": issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "jti": str(uuid.uuid4()),
        }
        return str(jwt.encode(claims, self.issuer_key(), "RS256", headers={"kid": self.kid}))

    # -- the token endpoint ----------------------------------------------------------------------

    def check(
        self, app: dict[str, Any], form: dict[str, str], token_urls: list[str], issuer: str
    ) -> Response | None:
        """None when ``form`` carries a valid client assertion for ``app``; else Entra's error."""
        client_id = str(app["appId"])
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return entra_error("invalid_client", 7000218, status=401)
        assertion = form.get("client_assertion", "")
        parsed = _unverified(assertion)
        if parsed is None:
            return entra_error(
                "invalid_client",
                50027,
                description="JWT token is invalid or malformed.",
                status=401,
            )
        header, claims = parsed
        if claims.get("iss") == client_id and claims.get("sub") == client_id:
            error = self._certificate(app, assertion, header, token_urls)
            kind = "certificate"
        else:
            error = self._federated(app, assertion, header, claims, issuer)
            kind = "federated"
        if error is None:
            self.world.stats.token_requests_by_client_auth[kind] += 1
        return error

    def count_secret(self) -> None:
        self.world.stats.token_requests_by_client_auth["secret"] += 1

    def _certificate(
        self, app: dict[str, Any], assertion: str, header: dict[str, Any], token_urls: list[str]
    ) -> Response | None:
        import jwt
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        # base64url with or without its "=" padding (msal keeps it)
        wanted_256 = str(header.get("x5t#S256") or "").rstrip("=") or None
        wanted_1 = str(header.get("x5t") or "").rstrip("=") or None
        cert = None
        for key in app.get("keyCredentials") or []:
            try:
                candidate = x509.load_der_x509_certificate(base64.b64decode(key.get("key") or ""))
            except ValueError:
                continue
            if wanted_256 == _b64url(candidate.fingerprint(hashes.SHA256())) or (
                wanted_1 is not None and wanted_1 == _b64url(candidate.fingerprint(hashes.SHA1()))
            ):
                cert = candidate
                break
        if cert is None:
            return entra_error(
                "invalid_client",
                700027,
                description="Client assertion failed signature validation. The certificate "
                "with identifier used to sign the client assertion is not registered on "
                f"application. [Reason - The key was not found., Thumbprint of key used by "
                f"client: '{wanted_256 or wanted_1}']",
                status=401,
            )
        now = self.world.clock.now()
        valid_from = cert.not_valid_before_utc.timestamp()
        if not valid_from <= now <= cert.not_valid_after_utc.timestamp():
            return entra_error(
                "invalid_client",
                700027,
                description="Client assertion failed signature validation. The certificate "
                "used to sign the client assertion is expired.",
                status=401,
            )
        try:
            public_key: Any = cert.public_key()
            jwt.decode(
                assertion,
                public_key,
                algorithms=["PS256", "RS256"],
                audience=token_urls,
                options={"verify_exp": False, "verify_nbf": False},
            )
        except jwt.InvalidAudienceError:
            return entra_error(
                "invalid_client",
                700027,
                description="Client assertion failed signature validation: its audience is "
                f"the token endpoint {token_urls[0]}.",
                status=401,
            )
        except jwt.PyJWTError:
            return entra_error(
                "invalid_client",
                700027,
                description="Client assertion failed signature validation.",
                status=401,
            )
        return self._in_time(assertion)

    def _in_time(self, assertion: str) -> Response | None:
        parsed = _unverified(assertion)
        claims = parsed[1] if parsed else {}
        now = self.world.clock.now()
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if (
            not isinstance(exp, (int, float))
            or not isinstance(nbf, (int, float))
            or not (nbf - 300 <= now < exp)
        ):
            return entra_error(
                "invalid_client",
                700024,
                description="Client assertion is not within its valid time range.",
                status=401,
            )
        return None

    def _federated(
        self,
        app: dict[str, Any],
        assertion: str,
        header: dict[str, Any],
        claims: dict[str, Any],
        own_issuer: str,
    ) -> Response | None:
        import jwt

        credentials = app.get("federatedIdentityCredentials") or []
        issuer = str(claims.get("iss") or "")
        same_issuer = [c for c in credentials if c.get("issuer") == issuer]
        if not same_issuer:
            return entra_error(
                "invalid_client",
                700211,
                description="No matching federated identity record found for presented "
                f"assertion issuer '{issuer}'.",
                status=401,
            )
        subject = str(claims.get("sub") or "")
        matching = [c for c in same_issuer if c.get("subject") == subject]
        if not matching:
            return entra_error(
                "invalid_client",
                700213,
                description="No matching federated identity record found for presented "
                f"assertion subject '{subject}'. Please note that the matching is done using a "
                "case-sensitive comparison.",
                status=401,
            )
        audiences = claims.get("aud")
        audiences = [audiences] if isinstance(audiences, str) else list(audiences or [])
        if not any(a in (c.get("audiences") or []) for c in matching for a in audiences):
            return entra_error(
                "invalid_client",
                700212,
                description="No matching federated identity record found for presented "
                f"assertion audience '{', '.join(map(str, audiences))}'.",
                status=401,
            )
        if issuer != own_issuer or header.get("kid") != self.kid:
            return entra_error(
                "invalid_client",
                700211,
                description=f"The sandbox cannot fetch the keys of issuer '{issuer}': only its "
                f"own issuer {own_issuer} is known here.",
                status=401,
            )
        try:
            jwt.decode(
                assertion,
                self.issuer_key().public_key(),
                algorithms=["RS256"],
                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False},
            )
        except jwt.PyJWTError:
            return entra_error(
                "invalid_client",
                700027,
                description="Client assertion failed signature validation.",
                status=401,
            )
        return self._in_time(assertion)


def client_auth_of(world: Any) -> ClientAuth:
    """The world's ClientAuth, made on first use (the world itself does not import this)."""
    if world.client_auth is None:
        world.client_auth = ClientAuth(world)
    auth: ClientAuth = world.client_auth
    return auth


def thumbprint_sha1_b64(cert_der: bytes) -> str:
    """keyCredentials' customKeyIdentifier: the base64 SHA-1 of the certificate."""
    return base64.b64encode(hashlib.sha1(cert_der).digest()).decode()


__all__ = ["ASSERTION_TYPE", "EXCHANGE_AUDIENCE", "OIDC_PATH", "ClientAuth", "client_auth_of"]


# -- Graph: an app's certificates and federated identity credentials -----------------------------


def merge_key_credentials(app: dict[str, Any], wanted: Any) -> list[dict[str, Any]]:
    """``PATCH /applications/{id}`` with ``keyCredentials``: the collection is replaced. Graph
    never returns ``key`` on a read, so an entry re-sent as read (its ``keyId``, ``key`` null)
    keeps the certificate already held; a new entry must carry the base64 DER certificate."""
    from cryptography import x509

    from presencectl.sandbox.errors import bad_request

    if not isinstance(wanted, list):
        raise bad_request("Invalid value for property 'keyCredentials'.", code="Request_BadRequest")
    held = {k.get("keyId"): k for k in app.get("keyCredentials") or []}
    merged = []
    for entry in wanted:
        if not isinstance(entry, dict):
            raise bad_request("Invalid keyCredential.", code="Request_BadRequest")
        if not entry.get("key"):
            old = held.get(entry.get("keyId"))
            if old is None:
                raise bad_request(
                    "Key credential's key is required for a new credential.",
                    code="Request_BadRequest",
                )
            merged.append(old)
            continue
        try:
            der = base64.b64decode(str(entry["key"]), validate=True)
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise bad_request(
                "Invalid certificate: the key value is not a base64 X.509 certificate.",
                code="KeyCredentialsInvalidKey",
            ) from None
        if (
            entry.get("type", "AsymmetricX509Cert") != "AsymmetricX509Cert"
            or entry.get("usage", "Verify") != "Verify"
        ):
            raise bad_request(
                "Only AsymmetricX509Cert / Verify keys are supported here.",
                code="Request_BadRequest",
            )
        merged.append(
            {
                "customKeyIdentifier": thumbprint_sha1_b64(der),
                "displayName": entry.get("displayName") or cert.subject.rfc4514_string(),
                "endDateTime": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "key": base64.b64encode(der).decode(),
                "keyId": entry.get("keyId") or str(uuid.uuid4()),
                "startDateTime": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "type": "AsymmetricX509Cert",
                "usage": "Verify",
            }
        )
    return merged


def readable_key_credentials(app: dict[str, Any]) -> list[dict[str, Any]]:
    """What a read shows: every field but the certificate itself (``key`` is null)."""
    return [{**k, "key": None} for k in app.get("keyCredentials") or []]


def federated_credential_routes(app_of: Any, claims_of: Any, base_of: Any) -> list[Any]:
    """``/applications/{id}/federatedIdentityCredentials``: create, list, delete (docs-contrib
    ``application-post-federatedidentitycredentials.md``; at most 20 an app)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.responses import Response as PlainResponse
    from starlette.routing import Route

    from presencectl.sandbox.errors import bad_request, not_found, require

    # app_of(request): the application named by the path (404 while it replicates); claims_of:
    # the caller's token; base_of: the Graph base URL (both from sandbox/directory_api.py).
    write = ("Application.ReadWrite.All", "Application.ReadWrite.OwnedBy")

    async def create(request: Request) -> PlainResponse:
        require(claims_of(request), app_roles=write, scopes=write)
        app = app_of(request)
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError:
            raise bad_request("Invalid JSON.", code="BadRequest") from None
        for key in ("name", "issuer", "subject", "audiences"):
            if not data.get(key):
                raise bad_request(f"Property '{key}' is required.", code="Request_BadRequest")
        credentials = app.setdefault("federatedIdentityCredentials", [])
        if any(c["name"] == data["name"] for c in credentials):
            raise bad_request(
                f"FederatedIdentityCredential with name {data['name']} already exists.",
                code="Request_BadRequest",
            )
        if len(credentials) >= 20:
            raise bad_request(
                "An application may hold at most 20 federated identity credentials.",
                code="Request_BadRequest",
            )
        credential = {
            "id": str(uuid.uuid4()),
            "name": str(data["name"]),
            "issuer": str(data["issuer"]),
            "subject": str(data["subject"]),
            "audiences": [str(a) for a in data["audiences"]],
            "description": data.get("description"),
        }
        credentials.append(credential)
        return JSONResponse(
            {
                "@odata.context": f"{base_of(request)}/$metadata#applications('{app['id']}')/"
                "federatedIdentityCredentials/$entity",
                **credential,
            },
            status_code=201,
        )

    async def listing(request: Request) -> PlainResponse:
        readers = (*write, "Application.Read.All")
        require(claims_of(request), app_roles=readers, scopes=readers)
        credentials = app_of(request).get("federatedIdentityCredentials", [])
        return JSONResponse({"value": list(credentials)})

    async def delete(request: Request) -> PlainResponse:
        require(claims_of(request), app_roles=write, scopes=write)
        app = app_of(request)
        credentials = app.get("federatedIdentityCredentials", [])
        key = request.path_params["fic"]
        kept = [c for c in credentials if key not in (c["id"], c["name"])]
        if len(kept) == len(credentials):
            raise not_found(f"Resource '{key}' does not exist.")
        app["federatedIdentityCredentials"] = kept
        return PlainResponse(status_code=204)

    path = "/v1.0/applications/{app}/federatedIdentityCredentials"
    return [
        Route(path, create, methods=["POST"], name="graph_fic_create"),
        Route(path, listing, methods=["GET"], name="graph_fic_list"),
        Route(path + "/{fic}", delete, methods=["DELETE"], name="graph_fic_delete"),
    ]
