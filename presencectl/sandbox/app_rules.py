"""What Entra ID enforces on app registrations beyond their shape: distinct redirect URIs, and
the replication delay after an application or service principal is created.

Owns two rules the directory routes apply:

- :func:`duplicate_redirect_uri` — a redirect URI may appear on one platform only (``web``,
  ``spa``, ``publicClient``); the portal's error is "Redirect URIs must have distinct values"
  (MicrosoftDocs/azure-docs issue 89929). The exact Graph error code is not published: the sandbox
  answers ``400 Request_BadRequest`` with a message naming the URI and the platforms.
- :func:`replicating` — for ``replication_lag_s`` seconds (a fault key, default 0) after an object
  is created, addressing it answers 404 ``Request_ResourceNotFound`` and creating the service
  principal of a new application answers 400 "The appId '…' of the service principal does not
  reference a valid application object." (the text reported in microsoftgraph/msgraph-sdk-powershell
  issue 846; the delay itself in hashicorp/terraform-provider-azuread issue 581 and
  hashicorp/vault-plugin-secrets-azure issue 8).
"""

from __future__ import annotations

from typing import Any

from presencectl.sandbox.errors import GraphError, bad_request
from presencectl.sandbox.world import World

PLATFORMS = ("web", "spa", "publicClient")
CREATED_AT = "_created_at"  # sandbox clock time of creation (hidden from Graph answers)


def duplicate_redirect_uri(app: dict[str, Any]) -> GraphError | None:
    """The 400 for a redirect URI found on two platforms of ``app``, else None."""
    seen: dict[str, str] = {}
    for platform in PLATFORMS:
        for uri in (app.get(platform) or {}).get("redirectUris") or []:
            first = seen.get(str(uri))
            if first is not None and first != platform:
                return bad_request(
                    f"Redirect URIs must have distinct values: '{uri}' is registered on both "
                    f"{first} and {platform}.",
                    code="Request_BadRequest",
                )
            seen.setdefault(str(uri), platform)
    return None


def mark_created(world: World, obj: dict[str, Any]) -> None:
    obj[CREATED_AT] = world.clock.now()


def replicating(world: World, obj: dict[str, Any] | None) -> bool:
    """True while ``obj`` is too new to be seen (``replication_lag_s`` after its creation)."""
    lag = world.faults.replication_lag_s
    if obj is None or lag <= 0 or CREATED_AT not in obj:
        return False
    return bool(world.clock.now() < float(obj[CREATED_AT]) + lag)
