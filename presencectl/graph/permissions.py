"""The Microsoft Graph permissions presencectl asks for, with their fixed ids.

Ids are the same in every tenant (Microsoft Graph's service principal, appId
00000003-0000-0000-c000-000000000000; see the Graph permissions reference). The sandbox's Graph
service principal exposes the same ids, so setup-azure runs unchanged against both.
"""

from __future__ import annotations

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_DEFAULT_SCOPE = "https://graph.microsoft.com/.default"

# Application permissions (app roles): what the app does without a user.
APP_ROLES: dict[str, str] = {
    "Presence.ReadWrite.All": "83cded22-8297-4ff6-a7fa-e97e9545a259",
    "User.Read.All": "df021288-bdef-4463-88db-98f22de89214",
}

# Delegated permissions (scopes): what the dedicated sync user's token carries.
DELEGATED_SCOPES: dict[str, str] = {
    "Presence.Read.All": "9c7a330d-35b3-4aa1-963d-cb2b9f927841",
    "User.Read": "e1fe6dd8-ba31-4d61-89e7-88639da4683d",
}

# The OpenID Connect scopes msal adds to every user sign-in (msal: "openid profile offline_access"
# are always requested): the sync user's sign-in asks for them too, so the tenant-wide grant holds
# them (else Entra may answer AADSTS65001). Never passed to msal by name (it reserves them).
SIGN_IN_SCOPES: dict[str, str] = {
    "openid": "37f7f235-527c-4136-accd-4a02d197296e",
    "profile": "14dad69e-099b-42c9-810b-d002981feec1",
    "offline_access": "7427e0e9-2fba-42fe-b0c0-848c9e6a8182",
}

# Every delegated permission the tenant-wide grant holds.
GRANTED_SCOPES: dict[str, str] = {**DELEGATED_SCOPES, **SIGN_IN_SCOPES}

# Delegated scopes the admin's sign-in (bootstrap public client) needs for setup-azure.
ADMIN_SCOPES = (
    "https://graph.microsoft.com/Application.ReadWrite.All",
    "https://graph.microsoft.com/AppRoleAssignment.ReadWrite.All",
    "https://graph.microsoft.com/DelegatedPermissionGrant.ReadWrite.All",
    "https://graph.microsoft.com/Directory.Read.All",
    "https://graph.microsoft.com/User.Read",
)

GLOBAL_ADMIN_ROLE_TEMPLATE_ID = "62e90394-69f5-4237-9190-012177145e10"
