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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from presencectl import secrets
from presencectl.errors import ApiError, UsageError
from presencectl.identity import msal_apps, sync_pool
from presencectl.identity.sync_pool import PoolMember, pool_members
from presencectl.identity.tokens import SyncUserTokenProvider

__all__ = [
    "PoolMember",
    "SyncUserStatus",
    "add_sync_user",
    "pool_members",
    "remove_sync_user",
    "sign_in_sync_user",
    "store_sync_user",
    "validate_sync_user",
]

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


def validate_sync_user(
    profile: Profile, username: str | None = None, *, password: str | None = None
) -> SyncUserStatus:
    """Sign a sync user in (None: the first) and read its own presence; record the success.

    The sign-in proves the stored credential: never an access token from the cache.
    """
    from presencectl.config import save_profile
    from presencectl.graph.client import GraphClient
    from presencectl.graph.presence import get_presences

    # The stored password, or the refresh token redeemed, every time.
    provider = SyncUserTokenProvider(profile, username=username, password=password, silent=False)
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


def _check_username(username: str) -> str:
    username = username.strip()
    if not username or "@" not in username:
        raise UsageError(
            f"'{username}' is not a user principal name", hint="use name@yourtenant.example"
        )
    return username


def add_sync_user(
    profile: Profile,
    username: str,
    sign_in: str,
    *,
    password: str | None = None,
    on_message: Callable[[Any], None] | None = None,
) -> SyncUserStatus:
    """Add a member to the pool, signed in and proven (its own presence read) before it is saved.

    A password member's password goes to the secret store; a device-code or browser member
    signs in once (MFA as Entra asks) and keeps only its refresh token. Any failure — no such
    user, disabled, no consent, another account signed in — leaves the pool and the secret store
    as they were.
    """
    from presencectl.identity.tokens import sync_user_interactive_sign_in

    username = _check_username(username)
    if sign_in == sync_pool.PASSWORD and not password:
        raise UsageError("the password is empty", hint="pass it on stdin with --password-stdin")
    sync_pool.add_member(profile, username, sign_in)  # a duplicate is refused here
    try:
        if sign_in == sync_pool.PASSWORD:
            assert password is not None
            secrets.set_secret(profile.name, sync_pool.password_secret(profile, username), password)
        else:
            sync_user_interactive_sign_in(
                profile, username, sign_in, on_message=on_message or (lambda _m: None)
            )
        return validate_sync_user(profile, username)
    except BaseException:
        sync_pool.forget_secrets(profile, username)
        raise


def sign_in_sync_user(
    profile: Profile,
    username: str,
    sign_in: str,
    *,
    password: str | None = None,
    on_message: Callable[[Any], None] | None = None,
) -> SyncUserStatus:
    """Sign a member in again (a new refresh token, or a new password), keeping its place in the
    pool; it may change how it signs in (a password member moving to device code forgets its
    password once the new sign-in is proven)."""
    from presencectl.config import save_profile
    from presencectl.identity.tokens import sync_user_interactive_sign_in

    member = sync_pool.find_member(profile, username)
    secret = sync_pool.password_secret(profile, member.username)
    if sign_in == sync_pool.PASSWORD:
        if not password:
            raise UsageError("the password is empty", hint="pass it on stdin with --password-stdin")
        sync_pool.set_member(profile, member.username, sign_in=sign_in)
        status = validate_sync_user(profile, member.username, password=password)
        secrets.set_secret(profile.name, secret, password)
    else:
        sync_user_interactive_sign_in(
            profile, member.username, sign_in, on_message=on_message or (lambda _m: None)
        )
        sync_pool.set_member(profile, member.username, sign_in=sign_in)
        status = validate_sync_user(profile, member.username)
        secrets.delete_secret(profile.name, secret)
    sync_pool.set_member(profile, member.username, sign_in=sign_in, validated_at=status.validated)
    save_profile(profile)
    return status


@dataclass
class RemovedSyncUser:
    username: str
    removed_password: bool
    removed_token_cache: bool
    members_left: int
    teams_to_connect: str  # "notifications" | "polling-only" | "not enabled"


def teams_to_connect_enabled(profile: Profile) -> bool:
    return profile.enabled_direction in ("both", "teams-to-connect")


def remove_sync_user(profile: Profile, username: str) -> RemovedSyncUser:
    """Take a member out of the pool with its secrets (the CLI asks first for the last one while
    Teams → Connect is enabled: without a sync user that direction is polled only)."""
    from presencectl.config import save_profile

    member = sync_pool.find_member(profile, username)
    removed = sync_pool.remove_member(profile, member.username)
    save_profile(profile)
    left = len(pool_members(profile))
    enabled = teams_to_connect_enabled(profile)
    return RemovedSyncUser(
        username=member.username,
        removed_password=removed["password"],
        removed_token_cache=removed["token_cache"],
        members_left=left,
        teams_to_connect=(
            "not enabled" if not enabled else "notifications" if left else "polling-only"
        ),
    )


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
