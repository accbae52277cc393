"""The pool of sync users: who is in it, how each signs in, where each one's secrets live.

Owns the pool's storage in the profile and the secret store. The first member is the seed's one
sync user and keeps today's storage exactly: ``sync_username`` (``PRESENCECTL_SYNC_USERNAME``
overrides it), ``sync_user_sign_in``, ``verified.sync_user`` for when it was proven, its password
in the ``sync_password`` secret (``PRESENCECTL_SYNC_PASSWORD``) and its msal cache in
``token_cache:sync_user``. Further members, in the order added, are the ``sync_users`` tables of the
profile (``username``, ``sign_in``, ``validated_at``), with ``sync_password:<username>`` and
``token_cache:sync_user:<username>``. A profile that only has ``sync_username`` is a pool of one.
When the first member leaves, the next one takes its place and its secrets move with it. No secret
ever reaches config.toml: a device-code or browser member keeps only an msal token cache (its
refresh token) in the secret store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from presencectl import secrets
from presencectl.config import SIGN_IN_KINDS as CONFIG_SIGN_IN_KINDS
from presencectl.errors import ConfigError
from presencectl.identity import msal_apps

if TYPE_CHECKING:
    from presencectl.config import Profile

PASSWORD = "password"
DEVICE_CODE = "device_code"
BROWSER = "browser"
SIGN_IN_KINDS = CONFIG_SIGN_IN_KINDS  # password, device_code, browser
SYNC_USERNAME_ENV = "PRESENCECTL_SYNC_USERNAME"


@dataclass(frozen=True)
class PoolMember:
    """One sync user of the pool."""

    username: str
    sign_in: str  # "password" | "device_code" | "browser"
    validated_at: str | None


def pool_members(profile: Profile) -> list[PoolMember]:
    """Every member, in the order added; ``[]`` when the profile has no sync user."""
    first = os.environ.get(SYNC_USERNAME_ENV) or profile.sync_username
    if not first:
        return []
    members = [
        PoolMember(
            username=first,
            sign_in=profile.sync_user_sign_in or PASSWORD,
            validated_at=_text(profile.verified.get("sync_user")),
        )
    ]
    for row in profile.sync_users:
        members.append(
            PoolMember(
                username=str(row["username"]),
                sign_in=str(row.get("sign_in") or PASSWORD),
                validated_at=_text(row.get("validated_at")),
            )
        )
    return members


def _text(value: object) -> str | None:
    return str(value) if value else None


def find_member(profile: Profile, username: str | None = None) -> PoolMember:
    """The member named ``username`` (case-insensitive), or the first one for None."""
    members = pool_members(profile)
    if not members:
        raise ConfigError(
            f"profile '{profile.name}' has no sync user",
            hint="run `presencectl sync-user set --username <user>` (or `sync-user add`, or set "
            "PRESENCECTL_SYNC_USERNAME)",
            code="sync_user_missing",
        )
    if username is None:
        return members[0]
    for member in members:
        if member.username.lower() == username.strip().lower():
            return member
    raise ConfigError(
        f"{username} is not a sync user of profile '{profile.name}'",
        hint="the pool: " + ", ".join(m.username for m in members) + " (`presencectl sync-user "
        "list`); add it with `presencectl sync-user add --username " + username + "`",
        code="sync_user_missing",
    )


def is_first(profile: Profile, username: str) -> bool:
    members = pool_members(profile)
    return bool(members) and members[0].username.lower() == username.lower()


def password_secret(profile: Profile, username: str) -> str:
    """The secret name holding a member's password."""
    if is_first(profile, username):
        return secrets.SYNC_PASSWORD
    return f"{secrets.SYNC_PASSWORD}:{username.lower()}"


def cache_identity(profile: Profile, username: str) -> str:
    """The msal token-cache identity of a member (``msal_apps.cache_secret_name`` of it)."""
    if is_first(profile, username):
        return msal_apps.SYNC_USER
    return f"{msal_apps.SYNC_USER}:{username.lower()}"


def add_member(profile: Profile, username: str, sign_in: str) -> PoolMember:
    """Append a member to the pool (the caller saves the profile). Duplicates are refused."""
    if sign_in not in SIGN_IN_KINDS:
        raise ConfigError(f"unknown sign-in kind {sign_in!r}", hint=", ".join(SIGN_IN_KINDS))
    for member in pool_members(profile):
        if member.username.lower() == username.lower():
            raise ConfigError(
                f"{member.username} is already a sync user of profile '{profile.name}' "
                f"(signs in by {member.sign_in.replace('_', ' ')})",
                hint="to sign it in again: `presencectl sync-user sign-in --username "
                f"{member.username}`; `presencectl sync-user list` shows the pool",
                code="sync_user_duplicate",
            )
    members = pool_members(profile)
    if not members:
        profile.sync_username = username
        profile.sync_user_sign_in = sign_in
        profile.verified.pop("sync_user", None)
    else:
        # The first may come from PRESENCECTL_SYNC_USERNAME alone: written down, so that the
        # further members are never stored without their first.
        profile.sync_username = profile.sync_username or members[0].username
        profile.sync_users = [*profile.sync_users, {"username": username, "sign_in": sign_in}]
    return PoolMember(username, sign_in, None)


def set_member(
    profile: Profile, username: str, *, sign_in: str | None = None, validated_at: str | None = None
) -> None:
    """Change how a member signs in and/or when it was proven (None leaves a field; the caller
    saves). A new sign-in kind clears the date: the new credential is not proven yet."""
    member = find_member(profile, username)
    if is_first(profile, member.username):
        if sign_in is not None and sign_in != profile.sync_user_sign_in:
            profile.sync_user_sign_in = sign_in
            profile.verified.pop("sync_user", None)
        if validated_at is not None:
            profile.verified["sync_user"] = validated_at
        return
    rows = []
    for row in profile.sync_users:
        row = dict(row)
        if str(row["username"]).lower() == member.username.lower():
            if sign_in is not None and sign_in != row.get("sign_in"):
                row["sign_in"] = sign_in
                row.pop("validated_at", None)
            if validated_at is not None:
                row["validated_at"] = validated_at
        rows.append(row)
    profile.sync_users = rows


def forget_secrets(profile: Profile, username: str) -> dict[str, bool]:
    """Delete a member's password and token cache from the secret store."""
    return {
        "password": secrets.delete_secret(profile.name, password_secret(profile, username)),
        "token_cache": msal_apps.forget_cache(profile.name, cache_identity(profile, username)),
    }


def remove_member(profile: Profile, username: str) -> dict[str, bool]:
    """Take a member out of the pool with its secrets (the caller saves the profile).

    When the first member leaves, the next one becomes the first: its secrets move to the first
    member's names, so a pool of one is stored exactly as the seed's single sync user.
    """
    member = find_member(profile, username)
    removed = forget_secrets(profile, member.username)
    if not is_first(profile, member.username):
        profile.sync_users = [
            dict(r)
            for r in profile.sync_users
            if str(r["username"]).lower() != member.username.lower()
        ]
        return removed
    profile.verified.pop("sync_user", None)
    if not profile.sync_users:
        profile.sync_username = None
        profile.sync_user_sign_in = PASSWORD
        return removed
    successor = dict(profile.sync_users[0])
    old_password = password_secret(profile, str(successor["username"]))
    old_cache = cache_identity(profile, str(successor["username"]))
    profile.sync_users = [dict(r) for r in profile.sync_users[1:]]
    profile.sync_username = str(successor["username"])
    profile.sync_user_sign_in = str(successor.get("sign_in") or PASSWORD)
    if successor.get("validated_at"):
        profile.verified["sync_user"] = str(successor["validated_at"])
    _move_secret(profile.name, old_password, secrets.SYNC_PASSWORD)
    msal_apps.move_cache(profile.name, old_cache, msal_apps.SYNC_USER)
    return removed


def _move_secret(profile_name: str, old: str, new: str) -> None:
    value = secrets.get_secret(profile_name, old)
    if value:
        secrets.set_secret(profile_name, new, value)
    else:
        secrets.delete_secret(profile_name, new)
    secrets.delete_secret(profile_name, old)


def keep_only(profile: Profile, username: str) -> list[str]:
    """Make the pool exactly this one password member (``sync-user set``): the others leave with
    their secrets (the caller saves). Returns who left."""
    gone: list[str] = []
    for member in pool_members(profile)[1:]:
        forget_secrets(profile, member.username)
        gone.append(member.username)
    profile.sync_users = []
    members = pool_members(profile)
    if members and members[0].username.lower() != username.lower():
        msal_apps.forget_cache(profile.name, msal_apps.SYNC_USER)
        gone.append(members[0].username)
    if profile.sync_user_sign_in != PASSWORD:
        msal_apps.forget_cache(profile.name, msal_apps.SYNC_USER)
        profile.verified.pop("sync_user", None)
    profile.sync_username = username
    profile.sync_user_sign_in = PASSWORD
    return gone
