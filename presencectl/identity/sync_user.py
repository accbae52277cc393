"""The dedicated sync user (seed: "Create Sync User"): store, validate, forget.

Owns the sync user's username in the profile and its password in presencectl.secrets, and the
proof that the stored credentials work: a username/password sign-in through msal followed by a
``getPresencesByUserId`` on the sync user itself (the delegated Presence.Read.All the sync needs).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from presencectl import secrets
from presencectl.errors import ApiError, UsageError
from presencectl.identity import msal_apps
from presencectl.identity.tokens import SyncUserTokenProvider

if TYPE_CHECKING:
    from presencectl.config import Profile


@dataclass
class SyncUserStatus:
    username: str
    object_id: str = ""
    presence: str = ""
    scopes: str = ""
    password_source: str = ""
    validated: str = ""


def store_sync_user(
    profile: Profile, username: str, password: str, *, store_password: bool = True
) -> SyncUserStatus:
    """Save the username in the profile and the password in the secret store.

    ``store_password=False`` (the password came from PRESENCECTL_SYNC_PASSWORD): nothing secret
    is written; an environment secret never reaches the disk.
    """
    from presencectl.config import save_profile

    username = username.strip()
    if not username or "@" not in username:
        raise UsageError(
            f"'{username}' is not a user principal name", hint="use name@yourtenant.example"
        )
    if not password:
        raise UsageError(
            "the password is empty",
            hint="pass it on stdin with --password-stdin, or set PRESENCECTL_SYNC_PASSWORD",
        )
    if profile.sync_username and profile.sync_username.lower() != username.lower():
        msal_apps.forget_cache(profile.name, msal_apps.SYNC_USER)
    profile.sync_username = username
    profile.verified.pop("sync_user", None)
    if store_password:
        secrets.set_secret(profile.name, secrets.SYNC_PASSWORD, password)
    save_profile(profile)
    return SyncUserStatus(
        username=username,
        password_source=secrets.secret_source(profile.name, secrets.SYNC_PASSWORD) or "",
    )


def validate_sync_user(profile: Profile) -> SyncUserStatus:
    """Sign the sync user in and read its own presence; record the success in the profile."""
    from presencectl.config import save_profile
    from presencectl.graph.client import GraphClient
    from presencectl.graph.presence import get_presences

    provider = SyncUserTokenProvider(profile, silent=False)  # the stored password, every time
    provider(False)
    # Who and what from msal (id token claims, the response's scope), never from the access token.
    object_id = str(provider.last_result_claims.get("oid") or "")

    async def read() -> str:
        nonlocal object_id
        async with GraphClient(profile.graph_url, provider, profile.http_settings()) as graph:
            if not object_id:
                me = await graph.get_json("/me", params={"$select": "id"})
                object_id = str((me or {}).get("id") or "")
            oid = object_id
            presences = await get_presences(graph, [oid])
        found = presences.get(oid)
        if found is None:
            raise ApiError(
                f"Graph did not return the presence of the sync user {provider.username}",
                code="graph_error",
            )
        return f"{found.availability}/{found.activity}"

    presence = asyncio.run(read())
    scopes = " ".join(provider.last_scopes)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    profile.verified["sync_user"] = now
    save_profile(profile)
    return SyncUserStatus(
        username=provider.username,
        object_id=object_id,
        presence=presence,
        scopes=scopes,
        password_source=secrets.secret_source(profile.name, secrets.SYNC_PASSWORD) or "",
        validated=now,
    )


def forget_sync_user(profile: Profile) -> dict[str, bool]:
    """Remove the stored password, the sync user's token cache and its name from the profile."""
    from presencectl.config import save_profile

    removed = {
        "password": secrets.delete_secret(profile.name, secrets.SYNC_PASSWORD),
        "token_cache": msal_apps.forget_cache(profile.name, msal_apps.SYNC_USER),
        "username": profile.sync_username is not None,
    }
    profile.sync_username = None
    profile.verified.pop("sync_user", None)
    save_profile(profile)
    return removed
