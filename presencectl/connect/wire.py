"""Everything presencectl knows about the Univerge Blue Connect wire, in one place.

Paths, OAuth scopes (one per token), the directory's page shape, the session resource we write
under, the change-feed subscription body, the hub target and the field names of its payload.
Each element names its public source, or says it is unverified (docs/verification.md has a row
for each; the presence endpoints are not publicly documented): when the vendor's real shapes
turn out different, this is the module to correct. Nothing here does I/O.
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import quote

# OAuth2 client credentials at {login}/user/connect/token (EXTEND API). One scope per token,
# only api.service.* scopes with client credentials: api.user.* scopes belong to user sign-in
# (extend-dotnet-sdk ClientCredentialsTokenProvider.cs, AuthorizationRouterTokenProvider.cs).
TOKEN_PATH = "/user/connect/token"
# presence, subscriptions and the hub (ips_extend_monitoring asks this scope)
MESSAGING_SCOPE = "api.service.messaging"
DIRECTORY_SCOPE = "api.service.address-book"  # default of connect_directory_scope (unverified)
USER_SCOPE_PREFIX = "api.user."
TOKEN_REFRESH_MARGIN_S = 60.0

# Address book (extend-dotnet-sdk Models/V3/Contacts.cs, Contact.cs; AddressBookClient.cs sends
# fields=_all). The service-token path and the request's paging parameters are unverified.
CONTACTS_PATH = "/address-book/v3/accounts/_me/contacts"
CONTACTS_LIST_KEY = "results"
CONTACTS_NEXT_KEY = "nextPageOffsetToken"
OFFSET_PARAM = "offsetToken"
COUNT_PARAM = "count"
FIELDS_PARAM = "fields"
FIELDS_ALL = "_all"
PAGE_SIZE = 500
# Contact.type values are undocumented: "user" is the plausible name for a person; a contact
# without a type is taken for a user (tolerant). Types that name no person (shared contacts,
# rooms) are not; a type the client does not know is a person when it has a PBX extension
# (Quraize/debrief-dashboards: "A user has `pbx.extension`; contacts and rooms do not").
USER_CONTACT_TYPE = "user"
NOT_PERSON_TYPES = frozenset(
    {
        "sharedcontact",
        "shared_contact",
        "shared",
        "contact",
        "room",
        "resource",
        "group",
        "huntgroup",
        "hunt_group",
        "autoattendant",
        "auto_attendant",
        "queue",
    }
)
# A service that rejects a `fields` value ("The given value is not supported": Quraize's client)
# is asked again without it: profile key connect_directory_fields ("_all" | "" = never send).

# Presence: per user, sessions ("resources") aggregated by the service (ips_extend_monitoring).
PRESENCE_PATH = "/messaging/v1/presence/accounts/_me/users/{user_id}"
PRESENCE_FIELD = "presence"
RESOURCE_PARAM = "resource"
LEGACY_RESOURCE = "presencectl"  # what versions before the GUID wrote under; `disable` clears it

# Change feed: a subscription delivered over a SignalR hub (ips_extend_monitoring; renew and
# delete are public for voice subscriptions only: extend-dotnet-sdk NotificationHub.cs).
SUBSCRIPTIONS_ALL_PATH = "/messaging/v1/subscriptions/accounts/_me/users/_all"
SUBSCRIPTION_PATH = "/messaging/v1/subscriptions/{subscription_id}"
SUBSCRIPTION_RENEW_PATH = SUBSCRIPTION_PATH + "/renew"
SUBSCRIPTION_RENEW_BODY: dict[str, object] = {}
SUBSCRIPTION_EVENTS = ["*"]
SUBSCRIPTION_TTL_S = 30 * 60
# A service that caps the lifetime answers 400: asked again with these, longest first (the public
# monitor asks 00:02:00 for a messaging subscription: ips_extend_monitoring extend_client.py).
SUBSCRIPTION_TTL_FALLBACKS_S = (15 * 60, 5 * 60, 2 * 60, 60)
SUBSCRIPTION_EXPIRES = "whenExpired"
HUB_TARGET = "OnPresenceEvent"
# No public source names the event's user-id field: the first present of these is taken. A
# bare "id" may be the event's own id: it is taken only when it names a known user
# (EVENT_BARE_ID). The profile key connect_feed_user_field (from `connect verify --apply`) names
# the field outright.
EVENT_USER_ID_FIELDS = ("userId", "unifiedUserId", "user.id", "id")
EVENT_BARE_ID = "id"
# A session-scoped event (one session's state, not the user's aggregate) may name its session:
# such an event is only a sign that the user changed (profile key connect_feed_event_scope).
EVENT_RESOURCE_FIELDS = ("resource", "resourceId")
FEED_EVENT_SCOPES = ("auto", "user", "session")
EVENT_PRESENCE = "presenceState"
EVENT_WHEN_RAISED = "whenRaised"

# API hosts: every public presence and subscription call goes to api.intermedia.net
# (ips_extend_monitoring, Quraize/debrief-dashboards); the Univerge Blue samples call
# api.univerge.blue (address book, meetings) and sign in at login.univerge.blue, the
# default pair (the product is Univerge Blue Connect). A 404 names the other one.
API_HOSTS = ("https://api.univerge.blue", "https://api.intermedia.net")


def other_api_host(api_url: str) -> str:
    """The public API host that ``api_url`` is not (a hint for a 404)."""
    current = api_url.rstrip("/").lower()
    return next((h for h in API_HOSTS if h != current), API_HOSTS[0])


# Rate limit: about 250 requests/minute per client (a third-party report; unverified).
RATE_PER_MIN = 250

# Wire values of the Connect statuses (docs/mapping.md), highest aggregate first.
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
    """A .NET TimeSpan string: 1800 → "00:30:00"; from one day on "d.hh:mm:ss" (90000 →
    "1.01:00:00"), as TimeSpan's invariant format writes it."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}.{clock}" if days else clock


def subscription_body(ttl_s: float = SUBSCRIPTION_TTL_S) -> dict[str, object]:
    return {"events": list(SUBSCRIPTION_EVENTS), "ttl": format_ttl(ttl_s)}


def new_resource_id() -> str:
    """A fresh session resource (a GUID, as ips_extend_monitoring writes under)."""
    return str(uuid.uuid4())


def resource_id_for(api_url: str, client_id: str, profile: str) -> str:
    """The session resource of one profile: a GUID made from what names it (RFC 4122 v5)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"presencectl:{api_url}|{client_id}|{profile}"))


_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_guid(text: str) -> bool:
    return bool(_GUID.match(text))


def is_user_scope(scope: str) -> bool:
    return scope.strip().lower().startswith(USER_SCOPE_PREFIX)
