"""Graph change notifications for presence: delegated only, ≤650 ids, ≤60 min.

Sources: docs/verification.md.

Owns: the resource string, create / renew / reauthorize / delete / list, and
:class:`PresenceSubscription`. ``sync/notify.py`` creates, renews, reauthorizes, lists and deletes
them with each pool member's delegated token (a delegated ``GET /subscriptions`` lists what this
app created for the signed-in user: how leftovers of a lost state are found); ``disable``
(sync/disable.py) deletes those still recorded; ``sync/receiver.py`` receives the
notifications, ``graph/notifications.py`` reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from presencectl.errors import ApiError
from presencectl.graph.client import GraphClient
from presencectl.transport import path_segment

SUBSCRIPTION_IDS_MAX = 650
MAX_LIFETIME = timedelta(minutes=60)


@dataclass(frozen=True, slots=True)
class PresenceSubscription:
    id: str
    resource: str
    expires_at: datetime
    notification_url: str = ""
    client_state: str | None = None


def presence_resource(user_ids: Sequence[str]) -> str:
    """``/communications/presences?$filter=id in ('a','b')`` for ≤ 650 ids."""
    if not user_ids:
        raise ValueError("a presence subscription needs at least one user id")
    if len(user_ids) > SUBSCRIPTION_IDS_MAX:
        raise ValueError(f"a presence subscription takes at most {SUBSCRIPTION_IDS_MAX} ids")
    quoted = ",".join("'" + i.replace("'", "''") + "'" for i in user_ids)
    return f"/communications/presences?$filter=id in ({quoted})"


def chunk_ids(user_ids: Sequence[str], size: int = SUBSCRIPTION_IDS_MAX) -> list[list[str]]:
    """Split ids into lists a subscription accepts."""
    size = max(1, min(size, SUBSCRIPTION_IDS_MAX))
    return [list(user_ids[i : i + size]) for i in range(0, len(user_ids), size)]


def _expiry(lifetime: timedelta, now: datetime | None) -> datetime:
    start = now or datetime.now(UTC)
    return start + min(max(lifetime, timedelta(minutes=1)), MAX_LIFETIME)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str) or not value:
        raise ApiError("Graph subscription answer without expirationDateTime", code="graph_error")
    text = value.replace("Z", "+00:00")
    # Graph sends up to 7 fractional digits; fromisoformat takes 6.
    if "." in text:
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        rest = tail[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse(body: Any, fallback_resource: str = "") -> PresenceSubscription:
    if not isinstance(body, Mapping) or not isinstance(body.get("id"), str):
        raise ApiError("Graph subscription answer without an id", code="graph_error")
    return PresenceSubscription(
        id=body["id"],
        resource=str(body.get("resource") or fallback_resource),
        expires_at=_parse_time(body.get("expirationDateTime")),
        notification_url=str(body.get("notificationUrl") or ""),
        client_state=body.get("clientState") if isinstance(body.get("clientState"), str) else None,
    )


async def create_presence_subscription(
    client: GraphClient,
    user_ids: Sequence[str],
    notification_url: str,
    *,
    client_state: str | None = None,
    lifetime: timedelta = MAX_LIFETIME,
    lifecycle_url: str | None = None,
    now: datetime | None = None,
    encryption_certificate: str | None = None,
    encryption_certificate_id: str | None = None,
) -> PresenceSubscription:
    """Subscribe to presence changes of ≤ 650 users for ≤ 60 minutes.

    With ``encryption_certificate`` (base64 DER, public key only) and its id the subscription
    asks for rich notifications (``includeResourceData``: the presence arrives encrypted)."""
    if client_state is not None and len(client_state) > 128:
        raise ValueError("clientState is at most 128 characters")
    resource = presence_resource(user_ids)
    body: dict[str, Any] = {
        "changeType": "updated",
        "notificationUrl": notification_url,
        "resource": resource,
        "expirationDateTime": _iso(_expiry(lifetime, now)),
    }
    if client_state is not None:
        body["clientState"] = client_state
    if lifecycle_url:
        body["lifecycleNotificationUrl"] = lifecycle_url
    if encryption_certificate:
        body["includeResourceData"] = True
        body["encryptionCertificate"] = encryption_certificate
        body["encryptionCertificateId"] = encryption_certificate_id or ""
    return _parse(await client.post_json("/subscriptions", body), resource)


async def renew_subscription(
    client: GraphClient,
    subscription_id: str,
    *,
    lifetime: timedelta = MAX_LIFETIME,
    now: datetime | None = None,
    encryption_certificate: str | None = None,
    encryption_certificate_id: str | None = None,
) -> datetime:
    """Extend a subscription (which also reauthorizes it); returns its new expiry.

    With ``encryption_certificate`` the renewal also rotates the certificate (the
    resource-data page: "make this update part of regular subscription renewal")."""
    body: dict[str, Any] = {"expirationDateTime": _iso(_expiry(lifetime, now))}
    if encryption_certificate:
        body["encryptionCertificate"] = encryption_certificate
        body["encryptionCertificateId"] = encryption_certificate_id or ""
    response = await client.request(
        "PATCH", f"/subscriptions/{path_segment(subscription_id)}", json=body
    )
    answer = response.json() if response.content else None
    if isinstance(answer, Mapping) and answer.get("expirationDateTime"):
        return _parse_time(answer["expirationDateTime"])
    return _expiry(lifetime, now)


async def reauthorize_subscription(client: GraphClient, subscription_id: str) -> None:
    """``POST /subscriptions/{id}/reauthorize`` (lifecycle-events page: resumes the flow)."""
    await client.request("POST", f"/subscriptions/{path_segment(subscription_id)}/reauthorize")


def is_presence_resource(resource: str) -> bool:
    """A presence subscription's resource (``/communications/presences…``, with or without the
    leading slash, as Graph echoes what was sent)."""
    return resource.lstrip("/").lower().startswith("communications/presences")


async def list_subscriptions(client: GraphClient) -> list[PresenceSubscription]:
    """``GET /subscriptions``, every page (subscription-list.md: with a delegated token, the
    subscriptions **this app** created for the signed-in user; ``clientState`` comes back null)."""
    found: list[PresenceSubscription] = []
    async for item in client.paged("/subscriptions"):
        if isinstance(item.get("id"), str) and item.get("expirationDateTime"):
            found.append(_parse(item))
    return found


def is_conflict(exc: Exception) -> bool:
    """Graph's answer to a second presence subscription by the same user and app: 409 Conflict
    (docs/verification.md: ``ExtensionError`` … "A subscripton already exists")."""
    return isinstance(exc, ApiError) and exc.status == 409


async def delete_subscription(client: GraphClient, subscription_id: str) -> bool:
    """Delete a subscription; False when it was already gone (404)."""
    response = await client.request(
        "DELETE", f"/subscriptions/{path_segment(subscription_id)}", ok_statuses=(404,)
    )
    return response.status_code != 404
