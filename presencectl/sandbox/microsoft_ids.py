"""Microsoft's published identifiers, as the sandbox's own table (never the client's constants).

Owns every fixed id the sandbox's Entra ID and Graph serve: Microsoft Graph's appId and resource
URI, the ids of the Graph permissions on its service principal (app roles and delegated scopes),
and the Global Administrator role template id. They are the same in every tenant.

Written from Microsoft's own material, each row checked by hand:

- ``G``: microsoftgraph/msgraph-sdk-powershell
  ``src/Authentication/Authentication/custom/common/MSGraphServicePrincipalPermissions.json``
  (a dump of the Microsoft Graph service principal: ``appRoles``, ``oauth2PermissionScopes``,
  ``appId``, ``servicePrincipalNames``; taken 2021-06).
- ``R``: MicrosoftDocs/entra-docs
  ``docs/identity/role-based-access-control/permissions-reference.md``
  (built-in roles with their template ids).
- ``U``: not in a Microsoft-owned source we could read; the id comes from a public mirror of the
  Graph service principal (merill/graph-permissions-explorer). Unverified: the client does not use
  these two (setup-azure grants Presence.ReadWrite.All, which also reads presence).

- ``M``: Microsoft Graph's permission reference as mirrored in public code (Id
  ``204e0828-…``, Consent Type Admin, "Read and write all users' full profiles"); the client asks
  for it only to create sync users (`sync-user add --create`).

presencectl/graph/permissions.py must agree with this table; a test proves that a wrong id in the
client is refused by the sandbox (tests/test_sandbox_microsoft_ids.py).
"""

from __future__ import annotations

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"  # G: appId
GRAPH_RESOURCE = "https://graph.microsoft.com"  # G: servicePrincipalNames

# Application permissions (appRoles of the Graph service principal): name -> id.
GRAPH_APP_ROLE_IDS: dict[str, str] = {
    "Presence.ReadWrite.All": "83cded22-8297-4ff6-a7fa-e97e9545a259",  # G
    "User.Read.All": "df021288-bdef-4463-88db-98f22de89214",  # G
    "Directory.Read.All": "7ab1d382-f21e-4acd-a863-ba3e13f7da61",  # G
    "Application.ReadWrite.All": "1bfefb4e-e0b5-418b-a88f-73c46d2cc8e9",  # G
    "Presence.Read.All": "a70e0c2d-e793-494c-94c4-118fa0a67f42",  # U (added after G's dump)
}

# Delegated permissions (oauth2PermissionScopes): name -> (id, type). ``type`` "Admin" needs an
# administrator's consent; "User" a user may consent to alone (G's ``type`` field).
GRAPH_SCOPE_IDS: dict[str, tuple[str, str]] = {
    "User.Read": ("e1fe6dd8-ba31-4d61-89e7-88639da4683d", "User"),  # G
    "User.ReadBasic.All": ("b340eb25-3456-403f-be2f-af7a0d370277", "User"),  # G
    "User.Read.All": ("a154be20-db9c-4678-8ab7-66f6cc099a59", "Admin"),  # G
    "Directory.Read.All": ("06da0dbc-49e2-44d2-8312-53f166ab848a", "Admin"),  # G
    "Presence.Read": ("76bc735e-aecd-4a1d-8b4c-2b915deabb79", "User"),  # G
    "Presence.Read.All": ("9c7a330d-35b3-4aa1-963d-cb2b9f927841", "User"),  # G
    "Presence.ReadWrite": ("8d3c54a7-cf58-4773-bf81-c0cd6ad522bb", "User"),  # U
    "Application.ReadWrite.All": ("bdfbf15f-ee85-4955-8675-146e8e5296b5", "Admin"),  # G
    "AppRoleAssignment.ReadWrite.All": ("84bccea3-f856-4a8a-967b-dbe0a3d53a64", "Admin"),  # G
    "User.ReadWrite.All": ("204e0828-b5ca-4ad8-b9f3-f32a958e7cc4", "Admin"),  # M
    "DelegatedPermissionGrant.ReadWrite.All": (
        "41ce6ca6-6826-4807-84f1-1c82854f7ee5",
        "Admin",
    ),  # G
    "offline_access": ("7427e0e9-2fba-42fe-b0c0-848c9e6a8182", "User"),  # G
    "openid": ("37f7f235-527c-4136-accd-4a02d197296e", "User"),  # G
    "profile": ("14dad69e-099b-42c9-810b-d002981feec1", "User"),  # G
    "email": ("64a6cdd6-aab1-4aaf-94b8-3cc8405e90d0", "User"),  # G
}

GLOBAL_ADMIN_ROLE_TEMPLATE_ID = "62e90394-69f5-4237-9190-012177145e10"  # R
