"""The Azure directory as the sync sees it: users with every email address they answer to.

Owns: :class:`DirectoryUser`, :func:`list_users` (``/users`` with the fields matching needs,
``$top=999``, every page) and :func:`smtp_addresses` (mail, userPrincipalName and the SMTP
proxyAddresses, lowercased — the matching of docs/architecture.md).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from presencectl.graph.client import GraphClient

log = logging.getLogger(__name__)

USER_FIELDS = ("id", "displayName", "mail", "userPrincipalName", "proxyAddresses", "accountEnabled")
PAGE_SIZE = 999


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    id: str
    display_name: str = ""
    mail: str | None = None
    user_principal_name: str | None = None
    proxy_addresses: tuple[str, ...] = field(default_factory=tuple)
    account_enabled: bool = True


def parse_user(item: Mapping[str, Any]) -> DirectoryUser | None:
    """A Graph user object → :class:`DirectoryUser`; None (with a warning) without an id."""
    user_id = item.get("id")
    if not isinstance(user_id, str) or not user_id:
        log.warning("skipping a directory entry without an id")
        return None
    proxies = item.get("proxyAddresses")
    enabled = item.get("accountEnabled")
    return DirectoryUser(
        id=user_id,
        display_name=str(item.get("displayName") or ""),
        mail=item.get("mail") if isinstance(item.get("mail"), str) else None,
        user_principal_name=(
            item.get("userPrincipalName")
            if isinstance(item.get("userPrincipalName"), str)
            else None
        ),
        proxy_addresses=tuple(p for p in proxies if isinstance(p, str))
        if isinstance(proxies, list)
        else (),
        account_enabled=enabled is not False,  # absent means enabled
    )


async def iter_users(
    client: GraphClient, *, page_size: int = PAGE_SIZE
) -> AsyncIterator[DirectoryUser]:
    """Every user of the directory, page by page."""
    params = {"$select": ",".join(USER_FIELDS), "$top": str(min(max(1, page_size), PAGE_SIZE))}
    async for item in client.paged("/users", params):
        user = parse_user(item)
        if user is not None:
            yield user


async def list_users(client: GraphClient, *, page_size: int = PAGE_SIZE) -> list[DirectoryUser]:
    """Every user of the directory (see :func:`iter_users`)."""
    return [u async for u in iter_users(client, page_size=page_size)]


def smtp_addresses(user: DirectoryUser) -> list[str]:
    """The user's email addresses, lowercased, deduplicated: mail, UPN, SMTP proxyAddresses."""
    found: list[str] = []
    for candidate in (user.mail, user.user_principal_name):
        if candidate and "@" in candidate:
            found.append(candidate.strip().lower())
    for proxy in user.proxy_addresses:
        scheme, sep, address = proxy.partition(":")
        if sep and scheme.lower() == "smtp" and "@" in address:
            found.append(address.strip().lower())
    return list(dict.fromkeys(found))
