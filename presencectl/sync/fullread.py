"""A watch's full Connect read with Teams still watched: a change is written within seconds.

Owns :func:`read_connect_watching`. Under Connect's request budget (about 250 a minute) a full
read of every user takes minutes — 150 people at 200/min: 45 s; 1,000 at 250/min: 4 minutes.
A watch reads Connect in full on its first cycle, after a feed reconnect and after an outage;
before this module a Teams change made meanwhile waited for the whole read. Now, while the bulk
read runs (at ``Priority.BULK``: it fills what the budget leaves, connect/budget.py), Teams is
polled at the watch's interval (at most once a second); for each user whose Teams status
changed, that user's Connect state is read at once (``Priority.URGENT``, "the read a write
needs"), the pair planned and written (urgent too) — one small cycle, as a Connect feed event
makes. When the bulk read ends, the full cycle plans every pair with the freshest Teams
reading; the pairs handled meanwhile keep their fresher Connect reading (the bulk read of them
may predate it, or show our own new session).

Adoption (sync/adopt.py, pairs with no state) still runs before the read, not beside it: a
pair's old session must be gone before any of its readings is trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from presencectl.connect.budget import Priority, current_priority

if TYPE_CHECKING:
    from presencectl.sync.model import Observation

# Teams is polled during a full read at the watch's interval, but at most once a second (the
# floor --interval auto keeps too): a read that ends within a second costs no extra poll, and a
# back-to-back engine (bench/engine_driver.py runs at ~0 s) does not poll Teams on every tick.
POLL_FLOOR_S = 1.0


async def read_connect_watching(
    engine: Any, wanted: Sequence[str], teams: dict[str, Observation], result: Any
) -> tuple[dict[str, Observation], dict[str, str], dict[str, Observation], set[str]]:
    """The bulk Connect read of ``wanted``, with Teams polled and its changes written meanwhile.

    Returns the Connect observations and read failures, the freshest Teams observations, and the
    keys planned and written meanwhile (``engine`` is the SyncEngine)."""
    from presencectl.connect import presence as connect_presence
    from presencectl.sync.model import Observation, Side

    async def bulk() -> tuple[dict[str, Observation], dict[str, str]]:
        current_priority.set(Priority.BULK)  # this task's requests only
        return await engine.read_connect(wanted)  # type: ignore[no-any-return]

    read = asyncio.ensure_future(bulk())
    latest = dict(teams)
    handled: set[str] = set()
    try:
        while not read.done() and not engine._stopping():
            pause = max(POLL_FLOOR_S, engine._poll_interval())
            sleeper = asyncio.ensure_future(engine.sleep(pause))
            await asyncio.wait({read, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
            if read.done() or engine._stopping():
                break
            # everyone: notifications are not handled until the read ends
            fresh = await engine.read_teams(wanted)
            changed = [
                k for k, obs in fresh.items() if k not in latest or obs.value != latest[k].value
            ]
            latest.update(fresh)
            if not changed:
                continue
            ids = [engine.pairs[k].connect_id for k in changed if k in engine.pairs]
            reads = await connect_presence.get_presences(
                engine.connect, ids, engine.options.connect_concurrency, priority=Priority.URGENT
            )
            now = engine.clock()
            observations: dict[str, list[Observation]] = {k: [fresh[k]] for k in changed}
            for user_id, value in reads.presences.items():
                key = engine._by_connect.get(user_id)
                if key in observations:
                    observations[key].append(Observation(Side.CONNECT, value, now))
            outer_failed = engine._failed_now
            await engine.cycle(
                result,
                read_teams=False,
                read_connect=False,
                connect_observations=observations,
                keys=changed,
                adopt=False,
            )
            engine._failed_now = outer_failed | engine._failed_now
            handled.update(changed)
        if not read.done() and engine._stopping():
            return {}, {}, latest, handled  # stopped: the cycle writes nothing more (finally)
        connect, failures = await read
    finally:
        if not read.done():
            read.cancel()
            with contextlib.suppress(BaseException):
                await read
    return connect, failures, latest, handled
