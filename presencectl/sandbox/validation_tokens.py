"""The ``validationTokens`` of rich Graph notifications, as the sandbox issues them.

Owns the sandbox's signing key for those tokens (RSA 2048, made on first use), its public half
as a JSON Web Key Set (served at the OpenID metadata's ``jwks_uri``), and one token per delivery
shaped like the example in microsoft-graph-docs-contrib
concepts/change-notifications-with-resource-data.md: ``aud`` the subscribing app's id, ``iss``
``https://sts.windows.net/{tenant}/``, ``appid`` the Graph change notification publisher
(0bf30f3b-4a52-48df-9a82-234910c4a086), ``tid``, ``iat``/``nbf``/``exp``, ``ver`` 1.0, signed
RS256 with the key's ``kid`` in the header.

The fault key ``notify_validation_tokens`` makes it send ``valid`` tokens (default), ``invalid``
ones (signed by another key under the same ``kid``: the signature check must fail) or none
(``missing``: a rich notification without ``validationTokens``).
"""

from __future__ import annotations

import base64
from typing import Any

from presencectl.sandbox.world import World

PUBLISHER_APP_ID = "0bf30f3b-4a52-48df-9a82-234910c4a086"
KEY_ID = "sandbox-notifications"
TOKEN_LIFETIME_S = 3600


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signing_key(world: World) -> Any:
    if world.token_signing_key is None:
        world.token_signing_key = _new_key()
    return world.token_signing_key


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def jwks(world: World) -> dict[str, Any]:
    """The public keys a receiver checks the tokens with (RFC 7517 RSA keys)."""
    public = signing_key(world).public_key().public_numbers()
    key = {"kty": "RSA", "use": "sig", "kid": KEY_ID, "n": _b64(public.n), "e": _b64(public.e)}
    return {"keys": [key]}


def validation_tokens(world: World, app_id: str) -> list[str] | None:
    """The ``validationTokens`` for one delivery to ``app_id``'s subscription (None: left out)."""
    import jwt

    mode = world.faults.notify_validation_tokens
    if mode == "missing":
        return None
    now = int(world.clock.now())
    claims = {
        "aud": app_id,
        "iss": f"https://sts.windows.net/{world.tenant_id}/",
        "iat": now,
        "nbf": now,
        "exp": now + TOKEN_LIFETIME_S,
        "appid": PUBLISHER_APP_ID,
        "appidacr": "2",
        "idp": f"https://sts.windows.net/{world.tenant_id}/",
        "tid": world.tenant_id,
        "ver": "1.0",
    }
    key = signing_key(world) if mode == "valid" else _new_key()
    return [jwt.encode(claims, key, algorithm="RS256", headers={"kid": KEY_ID})]
