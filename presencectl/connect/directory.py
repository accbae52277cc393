"""The Connect directory: every contact of the account, page by page, in the SDK's shape.

Pages are ``{"results": [...], "nextPageOffsetToken": "…"|null}`` (extend-dotnet-sdk
``Models/V3/Contacts.cs``); a page without its ``results`` list is a bad answer, never an empty
directory. Requests send ``fields=_all`` (the SDK always does; fewer fields come back otherwise),
``count`` and the previous page's token as ``offsetToken``. Contacts keep ``type``, ``pbx`` and
``messaging`` (``Contact.cs``); the account also lists shared contacts and rooms, which
:attr:`ConnectContact.is_user` tells apart by ``type``, or, for a type name presencectl does not
know, by a ``pbx.extension`` (only users are synced). A 400 to a request with ``fields`` (a
service that rejects the value: Quraize/debrief-dashboards) is asked again without it, and the
client remembers (``client.directory_fields``; the profile's ``connect_directory_fields``, which
``connect verify --apply`` sets). Tokens: the profile's ``connect_directory_scope``.
"""

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
    """One contact of the Connect account (a user, a shared contact, a room, …)."""

    id: str
    display_name: str
    email: str | None
    type: str | None = None
    pbx_enabled: bool | None = None
    extension: str | None = None
    messaging_enabled: bool | None = None
    jid: str | None = None

    @property
    def is_user(self) -> bool:
        """A person whose presence can be synced. Contact types are undocumented: no type or
        ``user`` is a person; a type that names no person (shared contact, room) is not; any
        other type is a person when the contact has a PBX extension."""
        if self.type is None:
            return True
        kind = self.type.strip().lower()
        if kind == wire.USER_CONTACT_TYPE:
            return True
        if kind in wire.NOT_PERSON_TYPES:
            return False
        return self.extension is not None


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def parse_contact(raw: Any) -> ConnectContact | None:
    """A contact from its JSON; None (logged) when it has no id."""
    if not isinstance(raw, dict) or not raw.get("id") or isinstance(raw.get("id"), (dict, list)):
        log.warning("ignoring a Connect contact without an id")
        return None
    pbx: dict[str, Any] = raw["pbx"] if isinstance(raw.get("pbx"), dict) else {}
    messaging: dict[str, Any] = raw["messaging"] if isinstance(raw.get("messaging"), dict) else {}
    extension = pbx.get("extension")
    return ConnectContact(
        id=str(raw["id"]),
        display_name=str(raw.get("displayName") or ""),
        email=_text(raw.get("email")),
        type=_text(raw.get("type")),
        pbx_enabled=_flag(pbx.get("enabled")),
        extension=str(extension) if isinstance(extension, (str, int)) and extension != "" else None,
        messaging_enabled=_flag(messaging.get("enabled")),
        jid=_text(messaging.get("jid")),
    )


def _page(response: Any) -> tuple[list[Any], str | None]:
    try:
        body = response.json()
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ApiError(
            "Connect sent a directory page that is not JSON",
            status=response.status_code,
            code="connect_bad_response",
        ) from exc
    results = body.get(wire.CONTACTS_LIST_KEY) if isinstance(body, dict) else None
    if not isinstance(results, list):
        keys = ", ".join(sorted(str(k) for k in body)[:10]) if isinstance(body, dict) else ""
        raise ApiError(
            f"Connect sent a directory page without a '{wire.CONTACTS_LIST_KEY}' list"
            + (f" (keys: {keys})" if keys else ""),
            status=response.status_code,
            code="connect_bad_response",
            hint="the address book answered in a shape presencectl does not know (the SDK's "
            "Contacts page); report it with the keys above",
        )
    token = body.get(wire.CONTACTS_NEXT_KEY)
    return results, (str(token) if isinstance(token, (str, int)) and token != "" else None)


async def list_contacts(client: ConnectClient, *, users_only: bool = True) -> list[ConnectContact]:
    """The account's user contacts (what is synced), all pages; ``users_only=False``: every
    contact, shared contacts and rooms included."""
    contacts: list[ConnectContact] = []
    base = {wire.COUNT_PARAM: str(wire.PAGE_SIZE)}
    fields = getattr(client, "directory_fields", wire.FIELDS_ALL)
    if fields:
        base[wire.FIELDS_PARAM] = fields
    params = dict(base)
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        try:
            response = await client.request(
                "GET", wire.CONTACTS_PATH, params=params, scope=client.directory_scope
            )
        except ApiError as exc:
            if exc.status != 400 or wire.FIELDS_PARAM not in params:
                raise
            log.warning(
                "connect: the directory refused fields=%s (%s); listing without it",
                params[wire.FIELDS_PARAM],
                exc.message,
            )
            client.directory_fields = ""
            base.pop(wire.FIELDS_PARAM, None)
            params.pop(wire.FIELDS_PARAM, None)
            continue
        results, token = _page(response)
        for raw in results:
            contact = parse_contact(raw)
            if contact is not None:
                contacts.append(contact)
        if token is None:
            users = [c for c in contacts if c.is_user]
            if len(users) < len(contacts):
                log.debug(
                    "connect: %d contacts are not users (shared contacts, rooms)",
                    len(contacts) - len(users),
                )
            return users if users_only else contacts
        if token in seen:
            raise ApiError(
                "Connect's directory paging repeats itself (same nextPageOffsetToken twice)",
                code="connect_bad_response",
            )
        seen.add(token)
        params = {**base, wire.OFFSET_PARAM: token}
    raise ApiError(
        f"Connect's directory has more than {MAX_PAGES} pages", code="connect_bad_response"
    )
