"""Teams presence through Graph: bulk reads, our session's writes and clears, single and batched.

Owns: :class:`TeamsPresenceRead` (what getPresencesByUserId says about one user), bulk reads in
chunks of 650 ids (docs/verification.md), ``setPresence`` / ``clearPresence`` for our own
session (sessionId = our app's client id), and their ``$batch`` forms with a per-user
:class:`WriteOutcome`.

Graph's presence values come in PascalCase and camelCase and sometimes outside the documented
enums: they are kept as Graph sent them (the mapping compares case-insensitively); a record
without an id or availability is skipped with a warning, the rest of the answer is kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from presencectl.errors import PresencectlError
from presencectl.graph.client import BatchRequest, BatchResult, GraphClient
from presencectl.transport import path_segment

log = logging.getLogger(__name__)

PRESENCE_IDS_MAX = 650
MIN_EXPIRATION = timedelta(minutes=5)
MAX_EXPIRATION = timedelta(hours=4)
GET_PRESENCES_PATH = "/communications/getPresencesByUserId"


@dataclass(frozen=True, slots=True)
class TeamsPresenceRead:
    """One user's aggregated Teams presence as Graph reports it."""

    user_id: str
    availability: str
    activity: str
    out_of_office: bool = False
    sequence: str | None = None


class Outcome(StrEnum):
    OK = "ok"
    GONE = "gone"  # 404: the session (clear) or the user (set) no longer exists
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    user_id: str
    outcome: Outcome
    status: int = 0
    error: PresencectlError | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is not Outcome.FAILED


@dataclass(frozen=True, slots=True)
class PresenceWrite:
    """One setPresence of our session for one user."""

    user_id: str
    availability: str
    activity: str
    expiration: timedelta | float = MIN_EXPIRATION


def parse_presence(item: Mapping[str, Any]) -> TeamsPresenceRead | None:
    """A presence resource → :class:`TeamsPresenceRead`; None (with a warning) when unusable."""
    user_id = item.get("id")
    availability = item.get("availability")
    if not isinstance(user_id, str) or not user_id or not isinstance(availability, str):
        log.warning("skipping a presence record without id or availability: %.200r", item)
        return None
    activity = item.get("activity")
    if not isinstance(activity, str) or not activity:
        activity = availability
    ooo = item.get("outOfOfficeSettings")
    out_of_office = bool(ooo.get("isOutOfOffice")) if isinstance(ooo, Mapping) else False
    seq = item.get("sequenceNumber")
    return TeamsPresenceRead(
        user_id=user_id,
        availability=availability,
        activity=activity,
        out_of_office=out_of_office,
        sequence=None if seq is None else str(seq),
    )


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in ids if i))


async def get_presences(
    client: GraphClient,
    ids: Iterable[str],
    *,
    chunk_size: int = PRESENCE_IDS_MAX,
    concurrency: int = 4,
) -> dict[str, TeamsPresenceRead]:
    """Presence of every user in ``ids``: ceil(n / 650) requests. ``concurrency`` chunks are
    prepared and parsed side by side, but the client sends one presence request at a time
    (``RateLimiter.presence_on_wire``: none may be on its way when a 429 arrives)."""
    wanted = _unique(ids)
    size = max(1, min(chunk_size, PRESENCE_IDS_MAX))
    chunks = [wanted[i : i + size] for i in range(0, len(wanted), size)]
    gate = asyncio.Semaphore(max(1, concurrency))

    async def read(chunk: list[str]) -> list[TeamsPresenceRead]:
        async with gate:
            body = await client.post_json(GET_PRESENCES_PATH, {"ids": chunk})
        items = body.get("value") if isinstance(body, Mapping) else None
        if not isinstance(items, list):
            log.warning(
                "getPresencesByUserId answered without a value list; %d users unread", len(chunk)
            )
            return []
        out = []
        for item in items:
            parsed = parse_presence(item) if isinstance(item, Mapping) else None
            if parsed is not None:
                out.append(parsed)
        return out

    result: dict[str, TeamsPresenceRead] = {}
    for part in await asyncio.gather(*(read(c) for c in chunks)):
        for presence in part:
            result[presence.user_id] = presence
    return result


def iso_duration(expiration: timedelta | float) -> str:
    """``expirationDuration`` for setPresence, clamped to PT5M–PT4H (whole seconds)."""
    span = expiration if isinstance(expiration, timedelta) else timedelta(seconds=expiration)
    span = min(max(span, MIN_EXPIRATION), MAX_EXPIRATION)
    total = int(span.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = "PT"
    if hours:
        text += f"{hours}H"
    if minutes:
        text += f"{minutes}M"
    if seconds:
        text += f"{seconds}S"
    return text


def _set_path(user_id: str) -> str:
    return f"/users/{path_segment(user_id)}/presence/setPresence"


def _clear_path(user_id: str) -> str:
    return f"/users/{path_segment(user_id)}/presence/clearPresence"


def _set_body(session_id: str, write: PresenceWrite) -> dict[str, str]:
    return {
        "sessionId": session_id,
        "availability": write.availability,
        "activity": write.activity,
        "expirationDuration": iso_duration(write.expiration),
    }


async def set_presence(
    client: GraphClient,
    user_id: str,
    session_id: str,
    availability: str,
    activity: str,
    expiration: timedelta | float = MIN_EXPIRATION,
) -> None:
    """setPresence for our session (``session_id`` = our app's client id)."""
    write = PresenceWrite(user_id, availability, activity, expiration)
    await client.request("POST", _set_path(user_id), json=_set_body(session_id, write))


async def clear_presence(client: GraphClient, user_id: str, session_id: str) -> bool:
    """clearPresence for our session; False when there was no such session (404)."""
    response = await client.request(
        "POST", _clear_path(user_id), json={"sessionId": session_id}, ok_statuses=(404,)
    )
    return response.status_code != 404


def _outcomes(
    results: Sequence[BatchResult], requests: Sequence[BatchRequest], user_ids: Sequence[str]
) -> list[WriteOutcome]:
    out = []
    for result, request, user_id in zip(results, requests, user_ids, strict=True):
        if result.ok:
            out.append(WriteOutcome(user_id, Outcome.OK, result.status))
        elif result.status == 404:
            out.append(WriteOutcome(user_id, Outcome.GONE, 404))
        else:
            out.append(
                WriteOutcome(
                    user_id,
                    Outcome.FAILED,
                    result.status,
                    result.error(request.method, request.url),
                )
            )
    return out


async def set_presences_batch(
    client: GraphClient, session_id: str, writes: Sequence[PresenceWrite]
) -> list[WriteOutcome]:
    """setPresence for many users through ``$batch``; one outcome per write, in order.

    404 (no such user) is ``gone``. A user appearing twice is written once, with the last write.
    """
    latest = {w.user_id: w for w in writes}
    requests = [
        BatchRequest(str(i), "POST", _set_path(w.user_id), _set_body(session_id, w))
        for i, w in enumerate(latest.values())
    ]
    results = await client.batch(requests)
    by_user = dict(zip(latest, _outcomes(results, requests, list(latest)), strict=True))
    return [by_user[w.user_id] for w in writes]


async def clear_presences_batch(
    client: GraphClient, session_id: str, user_ids: Sequence[str]
) -> list[WriteOutcome]:
    """clearPresence of our session for many users via ``$batch``; 404 (none left) is ``gone``."""
    unique = _unique(user_ids)
    requests = [
        BatchRequest(str(i), "POST", _clear_path(u), {"sessionId": session_id})
        for i, u in enumerate(unique)
    ]
    results = await client.batch(requests)
    by_user = dict(zip(unique, _outcomes(results, requests, unique), strict=True))
    return [by_user[u] for u in user_ids if u]
