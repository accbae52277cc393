"""The engine's writes on the wire and what came of each: one list of actions in, one outcome each.

Owns :func:`send`: Teams sets and clears through ``$batch`` (``graph/presence.py``, under the
client's per-tenant rate limiter), Connect sets and clears with bounded concurrency
(``connect/presence.py``), and the rule that turns an answer into a :class:`WriteOutcome`: a write
that failed without an answer (timeout, connection lost, a whole batch lost) is *uncertain* (it
may have landed), one the service refused is not; a sign-in or permission failure is raised and
stops the cycle. Also the best-effort clear of the sessions older versions held on Connect
(``disable``). Plain functions of the services they use: the engine keeps no write state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from presencectl.connect import presence as connect_presence
from presencectl.errors import AuthError, PresencectlError
from presencectl.mapping import TeamsStatus
from presencectl.sync.model import Action, ActionKind, Side
from presencectl.sync.state import side_user_id

if TYPE_CHECKING:
    from presencectl.connect.client import ConnectClient
    from presencectl.graph.client import GraphClient

log = logging.getLogger(__name__)


@dataclass
class WriteOutcome:
    ok: bool
    gone: bool = False
    uncertain: bool = False  # no answer: the write may have landed
    error: str | None = None


async def send(
    actions: Sequence[Action],
    *,
    graph: GraphClient,
    connect: ConnectClient,
    session_id: str,
    connect_concurrency: int,
    on_sent: Callable[[Side, int], None] | None = None,
    waiting: dict[int, float] | None = None,
) -> list[WriteOutcome]:
    """Send every action (both sides at once); one outcome per action, in order.

    ``on_sent(side, n)``: n more writes answered (progress, the Teams writes' budget share);
    ``waiting``: each Connect write not yet answered, by when it was queued (the backlog
    ``status`` reports, sync/pacing.py)."""
    sent = on_sent or (lambda side, n: None)
    outcomes: list[WriteOutcome | None] = [None] * len(actions)
    teams_set = [(i, a) for i, a in enumerate(actions) if a.side is Side.TEAMS and a.value]
    teams_clear = [
        (i, a) for i, a in enumerate(actions) if a.side is Side.TEAMS and a.value is None
    ]
    connect_items = [(i, a) for i, a in enumerate(actions) if a.side is Side.CONNECT]
    await asyncio.gather(
        _send_teams_set(graph, session_id, teams_set, outcomes, sent),
        _send_teams_clear(graph, session_id, teams_clear, outcomes, sent),
        _send_connect(
            connect, connect_concurrency, connect_items, outcomes, sent,
            {} if waiting is None else waiting,
        ),
    )  # fmt: skip
    return [o or WriteOutcome(False, error="not sent") for o in outcomes]


async def _send_teams_set(
    graph: GraphClient,
    session_id: str,
    items: list[tuple[int, Action]],
    outcomes: list[WriteOutcome | None],
    on_sent: Callable[[Side, int], None],
) -> None:
    if not items:
        return
    from presencectl.graph.presence import MIN_EXPIRATION, PresenceWrite, set_presences_batch

    writes = []
    for _, action in items:
        value = action.value
        assert isinstance(value, TeamsStatus)
        writes.append(
            PresenceWrite(
                side_user_id(action.key, Side.TEAMS),
                value.availability,
                value.activity,
                action.expiration or MIN_EXPIRATION,
            )
        )
    sent = set_presences_batch(graph, session_id, writes)
    await _fill_batch_outcomes(items, outcomes, sent, clear=False)
    on_sent(Side.TEAMS, len(items))


async def _send_teams_clear(
    graph: GraphClient,
    session_id: str,
    items: list[tuple[int, Action]],
    outcomes: list[WriteOutcome | None],
    on_sent: Callable[[Side, int], None],
) -> None:
    if not items:
        return
    from presencectl.graph.presence import clear_presences_batch

    ids = [side_user_id(a.key, Side.TEAMS) for _, a in items]
    sent = clear_presences_batch(graph, session_id, ids)
    await _fill_batch_outcomes(items, outcomes, sent, clear=True)
    on_sent(Side.TEAMS, len(items))


async def _send_connect(
    connect: ConnectClient,
    concurrency: int,
    items: list[tuple[int, Action]],
    outcomes: list[WriteOutcome | None],
    on_sent: Callable[[Side, int], None],
    waiting: dict[int, float],
) -> None:
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(i: int, action: Action) -> None:
        user_id = side_user_id(action.key, Side.CONNECT)
        token = object()
        waiting[id(token)] = time.monotonic()
        async with gate:
            try:
                if action.kind is ActionKind.SET:
                    await connect_presence.set_presence(connect, user_id, str(action.value))
                    outcomes[i] = WriteOutcome(True)
                else:
                    existed = await connect_presence.clear_presence(connect, user_id)
                    outcomes[i] = WriteOutcome(True, gone=not existed)
            except AuthError:
                raise
            except PresencectlError as exc:
                status = getattr(exc, "status", None)
                outcomes[i] = WriteOutcome(False, uncertain=status is None, error=why(exc))
            finally:
                waiting.pop(id(token), None)
                on_sent(Side.CONNECT, 1)

    await asyncio.gather(*(one(i, a) for i, a in items))


async def clear_legacy(connect: ConnectClient, user_ids: Sequence[str], limit: int) -> int:
    """Best effort: clear the sessions versions before the GUID resource held on Connect."""
    gate = asyncio.Semaphore(max(1, limit))

    async def one(user_id: str) -> bool:
        async with gate:
            try:
                return await connect_presence.clear_legacy_presence(connect, user_id)
            except PresencectlError as exc:
                log.debug("connect: legacy session of %s not cleared: %s", user_id, exc.code)
                return False

    return sum(await asyncio.gather(*(one(u) for u in dict.fromkeys(user_ids))))


def why(exc: PresencectlError) -> str:
    """An error as one line of a failure report: ``code: message``."""
    return f"{exc.code}: {exc.message}"


async def _fill_batch_outcomes(
    items: list[tuple[int, Action]],
    outcomes: list[WriteOutcome | None],
    sent: Awaitable[list[Any]],
    *,
    clear: bool,
) -> None:
    """Each batched write's outcome; a batch that failed as a whole leaves them all uncertain
    (they may have landed), except a sign-in/permission failure, which stops the cycle."""
    try:
        answers = await sent
    except AuthError:
        raise
    except PresencectlError as exc:
        for i, _ in items:
            outcomes[i] = WriteOutcome(False, uncertain=True, error=why(exc))
        return
    for (i, _), answer in zip(items, answers, strict=True):
        outcomes[i] = _graph_outcome(answer, clear=clear)


def _graph_outcome(answer: Any, *, clear: bool) -> WriteOutcome:
    outcome = str(getattr(answer.outcome, "value", answer.outcome))
    if outcome == "ok":
        return WriteOutcome(True)
    if outcome == "gone":
        # clear: no session left (done); set: the user is gone (a failure).
        if clear:
            return WriteOutcome(True, gone=True)
        return WriteOutcome(False, error="user not found")
    error = answer.error
    text = why(error) if isinstance(error, PresencectlError) else f"HTTP {answer.status}"
    return WriteOutcome(False, uncertain=not answer.status, error=text)
