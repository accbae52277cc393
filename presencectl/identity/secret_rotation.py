"""The app registration's client secret: add a new one, prove it, then revoke the one it replaces.

Owns the rotation that `setup-azure` (when the stored secret is missing or about to expire) and
`setup-azure --rotate-secret` perform. Graph ``POST /applications/{id}/addPassword`` returns the
new secret once (``secretText``); the new secret is proven with a client-credentials token before
anything is revoked, and only then ``POST /applications/{id}/removePassword`` with ``{"keyId"}``
revokes the secret *we* made before (its keyId is recorded in the profile's ``verified`` table;
secrets someone else added are never touched). A leaked secret is therefore dead once rotation
returns, instead of staying valid for the rest of its 180 days.

Sources: Microsoft Graph v1.0 "application: addPassword" and "application: removePassword"
(microsoftgraph/microsoft-graph-docs-contrib, api-reference/v1.0/api/application-addpassword.md and
application-removepassword.md): removePassword takes ``keyId`` and answers ``204 No Content``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from presencectl import secrets
from presencectl.errors import ApiError, AuthError, PresencectlError
from presencectl.transport import path_segment

if TYPE_CHECKING:
    from presencectl.config import Profile
    from presencectl.graph.client import GraphClient

log = logging.getLogger(__name__)

# Entra ID may take a little while to accept a new secret everywhere: retry the proof a few times.
PROOF_DELAYS_S = (0.0, 2.0, 5.0, 10.0, 15.0)


@dataclass
class Rotation:
    key_id: str
    expires: str
    revoked_key_id: str | None  # the secret we made before, now revoked (None: there was none)


def _prove(profile: Profile, client_id: str, secret: str) -> dict[str, Any]:
    """One client-credentials token request with ``secret`` (no cache: it must reach Entra ID)."""
    from presencectl.graph.permissions import GRAPH_DEFAULT_SCOPE
    from presencectl.identity import msal_apps

    app = msal_apps.confidential_app(profile, client_id, secret)
    with msal_apps.msal_errors(profile.authority):
        return dict(app.acquire_token_for_client(scopes=[GRAPH_DEFAULT_SCOPE]))


async def prove_secret(
    profile: Profile,
    client_id: str,
    secret: str,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Raise AuthError unless ``secret`` gets a token (retried while Entra ID replicates it)."""
    result: dict[str, Any] = {}
    for delay in PROOF_DELAYS_S:
        if delay:
            await sleep(delay)
        result = await asyncio.to_thread(_prove, profile, client_id, secret)
        if "access_token" in result:
            return
        log.info("the new client secret is not accepted yet: %s", result.get("error"))
    raise AuthError(
        "the new client secret was not accepted by Entra ID; the previous one was kept",
        hint="run `presencectl setup-azure --rotate-secret` again in a few minutes",
        code="client_secret_unproven",
    )


async def rotate_client_secret(
    graph: GraphClient,
    profile: Profile,
    app: dict[str, Any],
    *,
    display_name: str,
    lifetime_days: int,
    add_password: Callable[[dict[str, Any]], Awaitable[Any]] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Rotation:
    """Add a secret, prove it, store it, then revoke the secret we made before.

    ``add_password(body)`` sends addPassword (setup-azure wraps it in its replication retry);
    by default a plain POST.
    """
    from presencectl.identity.msal_apps import APP, forget_cache

    if secrets.secret_source(profile.name, secrets.CLIENT_SECRET) == "env":
        raise PresencectlError(
            "the client secret comes from PRESENCECTL_CLIENT_SECRET; presencectl does not replace "
            "a secret it does not store",
            hint="unset PRESENCECTL_CLIENT_SECRET to rotate the stored one, or rotate it in the "
            "portal and update your pipeline's secret store",
            code="client_secret_from_env",
        )
    previous = str(profile.verified.get("client_secret_key_id") or "") or None
    end = datetime.now(UTC) + timedelta(days=lifetime_days)
    body = {
        "passwordCredential": {
            "displayName": display_name,
            "endDateTime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    }
    if add_password is None:
        answer = await graph.post_json(f"/applications/{path_segment(app['id'])}/addPassword", body)
    else:
        answer = await add_password(body)
    secret = (answer or {}).get("secretText")
    if not secret:
        raise ApiError("Graph addPassword answered without a secret", code="graph_error")
    key_id = str(answer.get("keyId") or "")
    await prove_secret(profile, app["appId"], secret, sleep=sleep)
    secrets.set_secret(profile.name, secrets.CLIENT_SECRET, secret)
    profile.verified["client_secret_key_id"] = key_id
    profile.verified["client_secret_expires"] = str(answer.get("endDateTime") or end.isoformat())
    # A new secret invalidates any client-credentials token cached for the old one.
    forget_cache(profile.name, APP)
    revoked = None
    known = {str(c.get("keyId")) for c in app.get("passwordCredentials") or []}
    if previous and previous != key_id and previous in known:
        await graph.request(
            "POST",
            f"/applications/{path_segment(app['id'])}/removePassword",
            json={"keyId": previous},
        )
        revoked = previous
    return Rotation(
        key_id=key_id, expires=profile.verified["client_secret_expires"], revoked_key_id=revoked
    )
