"""The Connect directory: every contact of the account, following ``offsetToken`` pages."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from presencectl.connect import wire
from presencectl.errors import ApiError

if TYPE_CHECKING:
    from presencectl.connect.client import ConnectClient

log = logging.getLogger(__name__)

MAX_PAGES = 10_000


@dataclass(frozen=True)
class ConnectContact:
    """One person of the Connect account."""

    id: str
    display_name: str
    email: str | None
    roles: tuple[str, ...] = ()


def parse_contact(raw: Any) -> ConnectContact | None:
    """A contact from its JSON; None (logged) when it has no id."""
    if not isinstance(raw, dict) or not raw.get("id"):
        log.warning("ignoring a Connect contact without an id")
        return None
    email = raw.get("email")
    roles = raw.get("roles") or []
    return ConnectContact(
        id=str(raw["id"]),
        display_name=str(raw.get("displayName") or ""),
        email=email.strip() if isinstance(email, str) and email.strip() else None,
        roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
    )


async def list_contacts(client: ConnectClient) -> list[ConnectContact]:
    """Every contact, all pages."""
    contacts: list[ConnectContact] = []
    params: dict[str, str] = {}
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        response = await client.request("GET", wire.CONTACTS_PATH, params=params or None)
        try:
            body = response.json()
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise ApiError(
                "Connect sent a directory page that is not JSON",
                status=response.status_code,
                code="connect_bad_response",
            ) from exc
        page = body.get(wire.CONTACTS_LIST_KEY, []) if isinstance(body, dict) else []
        for raw in page if isinstance(page, list) else []:
            contact = parse_contact(raw)
            if contact is not None:
                contacts.append(contact)
        token = body.get(wire.OFFSET_TOKEN) if isinstance(body, dict) else None
        if not token:
            return contacts
        if token in seen:
            raise ApiError(
                "Connect's directory paging repeats itself (same offsetToken twice)",
                code="connect_bad_response",
            )
        seen.add(str(token))
        params = {wire.OFFSET_TOKEN: str(token)}
    raise ApiError(
        f"Connect's directory has more than {MAX_PAGES} pages", code="connect_bad_response"
    )
