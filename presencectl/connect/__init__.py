"""The Univerge Blue Connect adapter (docs/architecture.md): all Connect knowledge lives here.

- ``client``: :class:`ConnectClient` (token, retries, errors) and :func:`connect_client_for`.
- ``directory``: :class:`ConnectContact`, every contact of the account.
- ``presence``: read, bulk read, write and clear our session.
- ``feed``: :class:`PresenceFeed`, the change feed over SignalR.
- ``budget``: the per-client request budget (about 250 a minute, unverified).
- ``verify``: each unverified assumption checked on the account (``connect verify``).
- ``wire``: paths, scope, names — the one module to correct when the vendor's API differs.
"""

from presencectl.connect.client import ConnectClient, ConnectStats, connect_client_for
from presencectl.connect.directory import ConnectContact
from presencectl.connect.feed import FeedState, PresenceEvent, PresenceFeed, Subscription
from presencectl.connect.presence import PresenceReads

__all__ = [
    "ConnectClient",
    "ConnectContact",
    "ConnectStats",
    "FeedState",
    "PresenceEvent",
    "PresenceFeed",
    "PresenceReads",
    "Subscription",
    "connect_client_for",
]
