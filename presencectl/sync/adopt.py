"""Adoption: a matched pair met with no state is cleared of any session of ours before it is read.

Owns :func:`adopt_pairs`. Without its state (a first run, a fresh ``PRESENCECTL_STATE_DIR`` in a
container or CI job, a state file moved away) the engine cannot tell a session it wrote in an
earlier life from the user's own state: both sides aggregate sessions, so Teams showing
Busy/InACall may be nothing but our old session. Taking that for the user's doing writes it back
to the other side, and after the call ends both sides stay in a call for good (each session props
up the other). So before such a pair is read, our session is cleared on both sides — Graph
``clearPresence`` with our sessionId (404: there was none) and the Connect ``DELETE`` of our
resource (404: none) — through the engine's ordinary write path: ``$batch`` under the shared rate
limiter for Teams, bounded concurrency for Connect. Then the pair is read and planned as usual.

A side this run does not write (one-way sync) is cleared too when it can be; there a refusal for
lack of permission only means we could not have written there with these credentials, so it does
not hold the pair back. Any other failure keeps the pair out of this cycle (reported as failed):
reading it would risk the very echo adoption prevents; the next cycle tries again.
Only clears that removed something, and failures, get an audit row (a 404 is the common case and
says nothing). The run's ``adopted`` counts the pairs adopted this way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from presencectl.errors import AuthError
from presencectl.sync.model import Action, ActionKind, ActionPurpose, Side
from presencectl.sync.state import AuditEntry, side_user_id

log = logging.getLogger(__name__)

REASON = "no state for this pair: clear any session of ours before reading"


class Outcome(Protocol):
    """What the engine says of one write it sent."""

    ok: bool
    gone: bool
    error: str | None


class Result(Protocol):
    """The run's counts adoption adds to."""

    adopted: int
    cleared: int


class Engine(Protocol):
    """What adoption uses of the engine (sync/engine.py's ``SyncEngine``): its write path, its
    failure book-keeping, and what it knows of the pairs. Described here, not imported, so that
    the engine can import this module."""

    @property
    def states(self) -> Mapping[str, Any]: ...

    @property
    def options(self) -> Any: ...

    @property
    def store(self) -> Any: ...

    @property
    def clock(self) -> Callable[[], datetime]: ...

    async def _send(self, actions: Sequence[Action]) -> Sequence[Outcome]: ...

    def _fail(self, result: Any, key: str, side: str, error: str) -> None: ...

    def _stopping(self) -> bool: ...

    def _user(self, key: str) -> str: ...


async def adopt_pairs(
    engine: Engine, keys: Sequence[str], result: Result, *, chunk: int
) -> list[str]:
    """Clear our sessions on every pair of ``keys`` with no state; return the keys safe to plan.

    ``chunk`` pairs at a time, each chunk's audit saved before the next: a stop (SIGINT/SIGTERM)
    leaves the rest for the next run, held back like a failure but not one."""
    fresh = [k for k in keys if k not in engine.states]
    if not fresh:
        return list(keys)
    held_back: set[str] = set()
    for start in range(0, len(fresh), chunk):
        if start and engine._stopping():
            held_back.update(fresh[start:])
            break
        held_back |= await _adopt_chunk(engine, fresh[start : start + chunk], result)
    adopted = len(fresh) - len(held_back)
    result.adopted += adopted
    log.info("adopted %d pair(s) with no state, %d held back", adopted, len(held_back))
    return [k for k in keys if k not in held_back]


async def _adopt_chunk(engine: Engine, keys: Sequence[str], result: Result) -> set[str]:
    """Clear one chunk; the keys whose clear failed."""
    direction = engine.options.direction
    written = [s for s in (Side.TEAMS, Side.CONNECT) if direction.writes(s)]
    others = [s for s in (Side.TEAMS, Side.CONNECT) if not direction.writes(s)]
    outcomes: dict[tuple[str, Side], Outcome] = {}
    await _clear(engine, keys, written, outcomes, tolerate_auth=False)
    await _clear(engine, keys, others, outcomes, tolerate_auth=True)
    failed: set[str] = set()
    audit: list[AuditEntry] = []
    at = engine.clock().timestamp()
    for (key, side), outcome in outcomes.items():
        if outcome.ok and not outcome.gone:
            result.cleared += 1
        elif not outcome.ok:
            failed.add(key)
            engine._fail(result, key, side.value, f"adopting failed: {outcome.error or 'failed'}")
        if not (outcome.ok and outcome.gone):
            audit.append(
                AuditEntry(
                    at, side.value, "clear", None, "ok" if outcome.ok else "failed", key=key,
                    user=engine._user(key), user_id=side_user_id(key, side), reason=REASON,
                    error=outcome.error,
                )
            )  # fmt: skip
    if audit:
        engine.store.append_audit(audit)
    return failed


async def _clear(
    engine: Engine,
    keys: Sequence[str],
    sides: Sequence[Side],
    outcomes: dict[tuple[str, Side], Outcome],
    *,
    tolerate_auth: bool,
) -> None:
    if not sides:
        return
    targets = [(key, side) for key in keys for side in sides]
    actions = [
        Action(key, side, ActionKind.CLEAR, None, REASON, ActionPurpose.CLEAR, None, None)
        for key, side in targets
    ]
    try:
        sent = await engine._send(actions)
    except AuthError as exc:
        if not tolerate_auth:
            raise
        log.info("not clearing a side this run does not write (%s): %s", exc.code, exc.message)
        return
    outcomes.update(zip(targets, sent, strict=True))
