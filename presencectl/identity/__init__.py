"""Identity through msal: admin sign-in, app registration and consent, the sync user, AADSTS errors.

The sync engine calls :func:`app_token_provider` (client credentials: reads and writes presence,
reads the directory); :func:`sync_user_token_provider` is the dedicated user's delegated token
(validated by sync-user; it owns the delegated-only presence subscriptions); both return
``presencectl.graph.tokens.AccessToken`` from ``provider(force_refresh)``. ``setup`` holds
setup-azure and consent, ``sync_user`` the sync-user commands, ``errors`` the classification of
sign-in failures.
"""

from presencectl.identity.tokens import (
    AppTokenProvider,
    DeviceCodePrompt,
    SyncUserTokenProvider,
    admin_sign_in,
    app_token_provider,
    sync_user_token_provider,
)

__all__ = [
    "AppTokenProvider",
    "DeviceCodePrompt",
    "SyncUserTokenProvider",
    "admin_sign_in",
    "app_token_provider",
    "sync_user_token_provider",
]
