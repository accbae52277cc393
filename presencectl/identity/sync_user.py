"""The dedicated sync users (seed: "Create Sync User"): store, validate, forget — one or a pool.

Owns the proof that a sync user's stored credential works: a sign-in that cannot be served from
an access-token cache (a password sign-in, or a refresh-token redemption for a device-code or
browser member) followed by a ``getPresencesByUserId`` on the user itself (the delegated
Presence.Read.All the sync needs); ``sync-user set`` (a pool of exactly this one) and ``forget``.
The pool itself — :class:`PoolMember`, :func:`pool_members`, where each member's secrets live —
is identity/sync_pool.py, re-exported here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from presencectl import secrets
from presencectl.errors import ApiError, UsageError
from presencectl.identity import msal_apps, sync_pool
from presencectl.identity.sync_pool import PoolMember, pool_members
from presencectl.identity.tokens import SyncUserTokenProvider

__all__ = ["PoolMember", "SyncUserStatus", "pool_members", "store_sync_user", "validate_sync_user"]

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
    sync_pool.keep_only(profile, username)  # a pool of exactly this one
    profile.verified.pop("sync_user", None)
    if store_password:
        secrets.set_secret(profile.name, secrets.SYNC_PASSWORD, password)
    save_profile(profile)
    return SyncUserStatus(
        username=username,
        password_source=secrets.secret_source(profile.name, secrets.SYNC_PASSWORD) or "",
    )


def validate_sync_user(profile: Profile, username: str | None = None) -> SyncUserStatus:
    """Sign a sync user in (None: the first) and read its own presence; record the success.

    The sign-in proves the stored credential: never an access token from the cache.
    """
    from presencectl.config import save_profile
    from presencectl.graph.client import GraphClient
    from presencectl.graph.presence import get_presences

    # The stored password, or the refresh token redeemed, every time.
    provider = SyncUserTokenProvider(profile, username=username, silent=False)
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
    sync_pool.set_member(profile, provider.username, validated_at=now)
    save_profile(profile)
    return SyncUserStatus(
        username=provider.username,
        object_id=object_id,
        presence=presence,
        scopes=scopes,
        password_source=_password_source(profile, provider.username, provider.sign_in),
        validated=now,
    )


def _password_source(profile: Profile, username: str, sign_in: str) -> str:
    if sign_in != sync_pool.PASSWORD:
        return f"none ({sign_in.replace('_', ' ')} sign-in: refresh token in the secret store)"
    name = sync_pool.password_secret(profile, username)
    return secrets.secret_source(profile.name, name) or ""


def forget_sync_user(profile: Profile) -> dict[str, bool]:
    """Remove every sync user: passwords, token caches and names (the whole pool)."""
    from presencectl.config import save_profile

    for member in pool_members(profile)[1:]:
        sync_pool.forget_secrets(profile, member.username)
    removed = {
        "password": secrets.delete_secret(profile.name, secrets.SYNC_PASSWORD),
        "token_cache": msal_apps.forget_cache(profile.name, msal_apps.SYNC_USER),
        "username": profile.sync_username is not None,
    }
    profile.sync_username = None
    profile.sync_user_sign_in = sync_pool.PASSWORD
    profile.sync_users = []
    profile.verified.pop("sync_user", None)
    save_profile(profile)
    return removed
