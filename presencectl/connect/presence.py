"""Connect presence: read a user's aggregate, write and clear our own session (the client's
``resource_id``, a GUID per profile), clear the session older versions held under
``wire.LEGACY_RESOURCE``, and bulk reads with bounded concurrency.

Values are returned exactly as Connect sends them: deciding what an unknown value means is the
mapping layer's job, not the adapter's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from presencectl.connect import wire
from presencectl.connect.budget import Priority
from presencectl.errors import ApiError, AuthError, NetworkError, PresencectlError

if TYPE_CHECKING:
    from presencectl.connect.client import ConnectClient

log = logging.getLogger(__name__)


@dataclass
class PresenceReads:
    """The result of a bulk read: values by user id, and the users that failed (not fatal)."""

    presences: dict[str, str] = field(default_factory=dict)
    failures: dict[str, PresencectlError] = field(default_factory=dict)


async def get_presence(
    client: ConnectClient, user_id: str, priority: Priority | None = None
) -> str:
    """The user's aggregate presence, as Connect names it (e.g. ``onphone``)."""
    response = await client.request("GET", wire.presence_path(user_id), priority=priority)
    try:
        body = response.json()
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ApiError(
            f"Connect sent a presence for {user_id} that is not JSON",
            status=response.status_code,
            code="connect_bad_response",
        ) from exc
    value = body.get(wire.PRESENCE_FIELD) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise ApiError(
            f"Connect sent no presence value for {user_id}",
            status=response.status_code,
            code="connect_bad_response",
        )
    return value


async def get_presences(
    client: ConnectClient,
    user_ids: Sequence[str],
    concurrency: int = 32,
    *,
    priority: Priority = Priority.BULK,
    on_progress: Callable[[int], None] | None = None,
) -> PresenceReads:
    """Read many users at once, at most ``concurrency`` requests in flight, and never more than
    the client's request budget lets through at once. A bulk read goes after every urgent
    request (writes, connect/budget.py); ``on_progress(done)`` is called as users are read.

    A user whose read fails is reported in ``failures``; an AuthError (the whole account is
    refused) aborts the read and is raised. Once a read finds Connect unreachable (its retries
    spent), the users not yet read fail with that same error without a request: asking again
    for each would spend the client's retries and the request budget on a service that is not
    there (a watch then waits it out, sync/resilience.py).
    """
    concurrency = min(concurrency, client.budget.max_in_flight)
    result = PresenceReads()
    fatal: list[AuthError] = []
    unreachable: list[NetworkError] = []
    # ``concurrency`` workers share one iterator: as many tasks as requests in flight, not one
    # task per user (50,000 waiting tasks cost ~70 MB of peak RSS; bench/cycle.py at 50,000).
    pending = iter(dict.fromkeys(user_ids))

    async def worker() -> None:
        for user_id in pending:
            if fatal:
                return
            if unreachable:
                result.failures[user_id] = unreachable[0]
                continue
            try:
                result.presences[user_id] = await get_presence(client, user_id, priority)
            except AuthError as exc:
                fatal.append(exc)
            except NetworkError as exc:
                unreachable.append(exc)
                result.failures[user_id] = exc
            except PresencectlError as exc:
                log.debug("connect: presence of %s failed: %s", user_id, exc.code)
                result.failures[user_id] = exc
            if on_progress is not None:
                on_progress(len(result.presences) + len(result.failures))

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    if fatal:
        raise fatal[0]
    return result


async def set_presence(client: ConnectClient, user_id: str, value: str) -> None:
    """Set our session on the user to ``value`` (a Connect wire value)."""
    if value not in wire.STATUSES:
        log.warning("connect: writing a presence value Connect may not know: %s", value)
    await client.request(
        "PUT",
        wire.presence_path(user_id),
        params={wire.RESOURCE_PARAM: client.resource_id},
        json={wire.PRESENCE_FIELD: value},
    )


async def clear_presence(
    client: ConnectClient, user_id: str, priority: Priority | None = None
) -> bool:
    """Remove our session from the user; False when there was none (404)."""
    response = await client.request(
        "DELETE",
        wire.presence_path(user_id),
        params={wire.RESOURCE_PARAM: client.resource_id},
        allow=(404,),
        priority=priority,
    )
    return response.status_code != 404


async def clear_legacy_presence(client: ConnectClient, user_id: str) -> bool:
    """Remove the session versions before the GUID resource held (``presencectl``); False when
    there was none, or when Connect refuses a resource name that is not a GUID (400: then it
    never held one)."""
    response = await client.request(
        "DELETE",
        wire.presence_path(user_id),
        params={wire.RESOURCE_PARAM: wire.LEGACY_RESOURCE},
        allow=(400, 404),
    )
    return 200 <= response.status_code < 300
