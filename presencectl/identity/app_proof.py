"""`consent --check` without an admin: the app's permissions proven by using them (CI).

Owns the admin-free variant of the consent check. Listing what is granted needs the admin's
sign-in (identity/setup.py: the app's own permissions do not cover reading app registrations, and
a Graph access token is not ours to read). A pipeline has no admin, so this proves the same as
`doctor` does, with the app's client-credentials token only: a read of one user (User.Read.All),
then that user's presence (Presence.Read.All or Presence.ReadWrite.All). Writing presence cannot
be proven without writing: the first sync proves it (a refusal there is exit 4/5 naming it).
On success the profile records ``verified.app_permissions``, which the sync gate accepts.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from presencectl.errors import AuthError

if TYPE_CHECKING:
    from presencectl.config import Profile
    from presencectl.identity.setup import ConsentCheck

USED = "application (used)"


def prove_app_permissions(profile: Profile) -> list[ConsentCheck]:
    """The app signs in (its secret) and uses its read permissions; AuthError names a refusal."""
    from presencectl.config import save_profile
    from presencectl.graph.presence import get_presences
    from presencectl.identity.setup import ConsentCheck, _today, graph_client_for
    from presencectl.identity.tokens import app_token_provider

    provider = app_token_provider(profile)
    provider(True)  # force_refresh: a cached token would not prove the secret

    def refused(permission: str) -> AuthError:
        return AuthError(
            f"Graph refused the app a call that needs {permission}",
            hint="run `presencectl consent` as a Global Administrator",
            code="consent_missing",
        )

    async def use() -> None:
        async with graph_client_for(profile, provider) as graph:
            try:
                page = await graph.get_json("/users", params={"$top": "1", "$select": "id"})
            except AuthError as exc:
                raise refused("User.Read.All") from exc
            users = [u for u in (page or {}).get("value") or [] if isinstance(u, dict)]
            if users:
                try:
                    await get_presences(graph, [str(users[0].get("id") or "")])
                except AuthError as exc:
                    raise refused("Presence.Read.All or Presence.ReadWrite.All") from exc

    asyncio.run(use())
    profile.verified["app_permissions"] = _today()
    save_profile(profile)
    return [
        ConsentCheck("User.Read.All", USED, True),
        ConsentCheck("Presence.Read.All or Presence.ReadWrite.All", USED, True),
    ]
