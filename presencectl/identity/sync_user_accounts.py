"""Sync-user accounts made and deleted through Graph with the admin's sign-in (`--create`).

Owns ``sync-user add --create --count N`` and ``sync-user remove --delete``: N unlicensed cloud
accounts "presencectl sync N" (``POST /users`` as docs-contrib user-post-users.md documents it:
accountEnabled, displayName, mailNickname, userPrincipalName on the admin's domain,
passwordProfile with a generated strong password and no forced change, ``passwordPolicies``
DisablePasswordExpiration as the user resource allows), each password in the secret store, each
account signed in and proven before it joins the pool; and ``DELETE /users/{id}``. The admin signs
in with the delegated ``User.ReadWrite.All`` on top of setup's scopes, and must hold a role that
manages users (User Administrator or Global Administrator).
"""

from __future__ import annotations

import asyncio
import logging
import secrets as random
import string
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from presencectl import secrets
from presencectl.errors import ApiError, PresencectlError
from presencectl.graph.permissions import ADMIN_SCOPES, GRAPH_RESOURCE
from presencectl.identity import sync_pool

if TYPE_CHECKING:
    from presencectl.config import Profile
    from presencectl.identity.sync_user import SyncUserStatus

log = logging.getLogger(__name__)

USER_WRITE_SCOPE = f"{GRAPH_RESOURCE}/User.ReadWrite.All"
CREATE_SCOPES = (*ADMIN_SCOPES, USER_WRITE_SCOPE)
NICKNAME = "presencectl-sync-{n}"
DISPLAY_NAME = "presencectl sync {n}"
PASSWORD_LENGTH = 32
# A new account may not sign in at once (directory replication): how long a "no such user" is
# waited out before it is an error.
SIGN_IN_SETTLE_S = 30.0
PERMISSION_NOTE = (
    "Creating users needs the delegated Graph permission User.ReadWrite.All for the admin's "
    "sign-in (asked at the sign-in) and a role that manages users: User Administrator or "
    "Global Administrator."
)


def generated_password() -> str:
    """32 characters from the OS's CSPRNG, with every character class Entra counts."""
    symbols = "!#%()*+,-./:;=?@[]^_{}~"
    alphabet = string.ascii_letters + string.digits + symbols
    while True:
        password = "".join(random.choice(alphabet) for _ in range(PASSWORD_LENGTH))
        if (
            any(c.islower() for c in password)
            and any(c.isupper() for c in password)
            and any(c.isdigit() for c in password)
            and any(c in symbols for c in password)
        ):
            return password


def _taken_numbers(profile: Profile) -> set[int]:
    taken: set[int] = set()
    prefix = NICKNAME.format(n="")
    for member in sync_pool.pool_members(profile):
        local = member.username.split("@", 1)[0].lower()
        if local.startswith(prefix) and local[len(prefix) :].isdigit():
            taken.add(int(local[len(prefix) :]))
    return taken


def create_sync_users(
    profile: Profile,
    count: int,
    *,
    method: str,
    on_message: Callable[[Any], None],
    on_created: Callable[[SyncUserStatus], None] | None = None,
) -> list[SyncUserStatus]:
    """Create ``count`` accounts and add each to the pool (signed in and proven first).

    Each account joins the pool (and the profile is saved) as soon as it is proven, so an
    interruption keeps what was done. An account that cannot be proven is deleted again.
    """
    from presencectl.graph.client import GraphClient
    from presencectl.identity.tokens import admin_sign_in

    session = admin_sign_in(profile, method, on_message=on_message, scopes=CREATE_SCOPES)
    domain = session.username.rsplit("@", 1)[-1]
    made: list[SyncUserStatus] = []

    async def create_one(graph: GraphClient, n: int, password: str) -> dict[str, Any] | None:
        body = {
            "accountEnabled": True,
            "displayName": DISPLAY_NAME.format(n=n),
            "mailNickname": NICKNAME.format(n=n),
            "userPrincipalName": f"{NICKNAME.format(n=n)}@{domain}",
            "passwordProfile": {"forceChangePasswordNextSignIn": False, "password": password},
            "passwordPolicies": "DisablePasswordExpiration",
        }
        try:
            return dict(await graph.post_json("/users", body))
        except ApiError as exc:
            if exc.status == 400 and "already exists" in exc.message:
                return None  # an account of that name exists outside our pool: the next number
            raise

    async def run() -> None:
        async with GraphClient(profile.graph_url, session.provider, profile.http_settings()) as g:
            taken = _taken_numbers(profile)
            n = 0
            while len(made) < count:
                n += 1
                if n in taken:
                    continue
                if n > count + len(taken) + 50:
                    raise ApiError(
                        "could not find a free name for a new sync user",
                        hint="remove unused presencectl-sync-N accounts in the Entra admin center",
                        code="graph_error",
                    )
                password = generated_password()
                user = await create_one(g, n, password)
                if user is None:
                    continue
                upn = str(user.get("userPrincipalName") or f"{NICKNAME.format(n=n)}@{domain}")
                try:
                    status = await asyncio.to_thread(_join_pool, profile, upn, password)
                except PresencectlError:
                    await _delete(g, str(user.get("id") or upn))
                    raise
                made.append(status)
                if on_created is not None:
                    on_created(status)

    asyncio.run(run())
    return made


def _join_pool(profile: Profile, username: str, password: str) -> SyncUserStatus:
    from presencectl.identity.errors import UserNotFound
    from presencectl.identity.sync_user import validate_sync_user

    sync_pool.add_member(profile, username, sync_pool.PASSWORD)
    secrets.set_secret(profile.name, sync_pool.password_secret(profile, username), password)
    deadline = time.monotonic() + SIGN_IN_SETTLE_S
    wait = 1.0
    try:
        while True:
            try:
                return validate_sync_user(profile, username)
            except UserNotFound:
                if time.monotonic() + wait > deadline:
                    raise
                log.info("%s cannot sign in yet (replication); trying again", username)
                time.sleep(wait)
                wait = min(wait * 2, 8.0)
    except BaseException:
        sync_pool.forget_secrets(profile, username)
        sync_pool.remove_member(profile, username)
        raise


async def _delete(graph: Any, user: str) -> None:
    await graph.request("DELETE", f"/users/{user}", ok_statuses=(404,))


def delete_sync_user_account(
    profile: Profile, username: str, *, method: str, on_message: Callable[[Any], None]
) -> None:
    """Delete the Entra account of a sync user (``DELETE /users/{upn}``; 404: already gone)."""
    from presencectl.graph.client import GraphClient
    from presencectl.identity.tokens import admin_sign_in

    session = admin_sign_in(profile, method, on_message=on_message, scopes=CREATE_SCOPES)

    async def run() -> None:
        async with GraphClient(profile.graph_url, session.provider, profile.http_settings()) as g:
            await _delete(g, username)

    asyncio.run(run())
