"""Everything presencectl knows about the Univerge Blue Connect wire, in one place.

Paths, the OAuth scope, the session resource we write under, the change-feed subscription body,
the hub target and the field names of its payload. The presence endpoints are not publicly
documented (FACTS.md "Univerge Blue"): when the vendor's real shapes turn out different, this is
the module to correct. Nothing here does I/O.
"""

from __future__ import annotations

from urllib.parse import quote

# OAuth2 client credentials at {login}/user/connect/token (EXTEND API).
TOKEN_PATH = "/user/connect/token"
SCOPE = "api.service.messaging api.user.address-book"
TOKEN_REFRESH_MARGIN_S = 60.0

# Address book (directory), paged by offsetToken.
CONTACTS_PATH = "/address-book/v3/accounts/_me/contacts"
CONTACTS_LIST_KEY = "contacts"
OFFSET_TOKEN = "offsetToken"

# Presence: per user, sessions ("resources") aggregated by the service.
PRESENCE_PATH = "/messaging/v1/presence/accounts/_me/users/{user_id}"
PRESENCE_FIELD = "presence"
RESOURCE = "presencectl"  # the session we own on every user

# Change feed: a subscription delivered over a SignalR hub.
SUBSCRIPTIONS_ALL_PATH = "/messaging/v1/subscriptions/accounts/_me/users/_all"
SUBSCRIPTION_PATH = "/messaging/v1/subscriptions/{subscription_id}"
SUBSCRIPTION_RENEW_PATH = SUBSCRIPTION_PATH + "/renew"
SUBSCRIPTION_EVENTS = ["*"]
SUBSCRIPTION_TTL_S = 30 * 60
HUB_TARGET = "OnPresenceEvent"
EVENT_USER_ID = "userId"
EVENT_PRESENCE = "presenceState"
EVENT_WHEN_RAISED = "whenRaised"

# Wire values of the Connect statuses (ARCHITECTURE.md §4), highest aggregate first.
STATUSES = (
    "agent_onphone",
    "onphone",
    "meeting",
    "screen_sharing",
    "dnd",
    "out_sick",
    "on_vacation",
    "off_work",
    "busy",
    "agent_busy",
    "on_break",
    "away",
    "agent_available",
    "available",
    "offline",
)


def presence_path(user_id: str) -> str:
    return PRESENCE_PATH.format(user_id=quote(user_id, safe=""))


def subscription_path(subscription_id: str) -> str:
    return SUBSCRIPTION_PATH.format(subscription_id=quote(subscription_id, safe=""))


def subscription_renew_path(subscription_id: str) -> str:
    return SUBSCRIPTION_RENEW_PATH.format(subscription_id=quote(subscription_id, safe=""))


def format_ttl(seconds: float) -> str:
    """A .NET TimeSpan string, as the subscription body wants: 1800 → "00:30:00"."""
    total = max(0, int(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def subscription_body(ttl_s: float = SUBSCRIPTION_TTL_S) -> dict[str, object]:
    return {"events": list(SUBSCRIPTION_EVENTS), "ttl": format_ttl(ttl_s)}
