"""How fast a watch may go within the services' budgets, and what ``status`` says of them.

Owns:

- :func:`auto_interval`: ``sync --watch --interval auto``. Teams presence is read as often as
  half of Graph's presence budget allows after the writes' share (1,500 requests / 30 s / app /
  tenant, graph/ratelimit.py; one read covers 650 ids), never more often than once a second
  (``AUTO_FLOOR_S``). Users covered by Graph change notifications are not counted: they are not
  polled. 2,000 people: 4 reads a poll, polled every second = 4 reads a second (8 % of the
  budget).
- :func:`record_budget` / :func:`budget_report`: the Connect request budget as the engine last
  saw it (rate, used in the last minute, writes queued and the oldest one's wait) and the poll
  interval in use, kept in the state database so ``status`` shows them without the network.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from presencectl.sync.state import StateStore

AUTO_FLOOR_S = 1.0  # never poll Teams more often than once a second
POLL_SHARE = 0.5  # the share of Graph's presence budget (after writes) polling may take
IDS_PER_READ = 650  # getPresencesByUserId
BUDGET_META = "connect_budget"
INTERVAL_META = "poll_interval"


def auto_interval(
    polled_users: int, *, limit: int, window_s: float, write_units_per_s: float = 0.0
) -> dict[str, Any]:
    """The poll interval for ``polled_users`` under a presence budget of ``limit`` per
    ``window_s`` of which ``write_units_per_s`` go to writes: ``{"interval_s",
    "reads_per_poll", "reads_per_s", "budget_share"}`` (the share of the whole budget polling
    takes)."""
    reads = math.ceil(max(0, polled_users) / IDS_PER_READ)
    budget_per_s = limit / window_s
    for_polls = max(0.0, budget_per_s - max(0.0, write_units_per_s)) * POLL_SHARE
    if reads == 0:
        interval = AUTO_FLOOR_S
    elif for_polls <= 0:
        interval = window_s  # the writes take the whole budget: poll once a window
    else:
        interval = max(AUTO_FLOOR_S, reads / for_polls)
    reads_per_s = reads / interval
    return {
        "interval_s": round(interval, 3),
        "reads_per_poll": reads,
        "reads_per_s": round(reads_per_s, 2),
        "budget_share": round(reads_per_s / budget_per_s, 3) if budget_per_s else 0.0,
    }


def record_budget(
    store: StateStore,
    snapshot: dict[str, Any],
    *,
    queued_writes: int,
    oldest_write_wait_s: float,
    now: float | None = None,
) -> None:
    """Keep the Connect budget as the engine sees it now (``status`` reads it)."""
    doc = {
        **snapshot,
        "queued_writes": queued_writes,
        "oldest_write_wait_s": round(oldest_write_wait_s, 1),
        "at": round(time.time() if now is None else now, 3),
    }
    store.set_meta(BUDGET_META, json.dumps(doc))


def record_interval(store: StateStore, chosen: dict[str, Any] | None) -> None:
    store.set_meta(INTERVAL_META, None if chosen is None else json.dumps(chosen))


def budget_report(store: StateStore) -> dict[str, Any]:
    """What ``status`` shows of the budgets: ``{"connect_budget": …, "poll_interval": …}``
    (each None when no watch or sync recorded it)."""
    out: dict[str, Any] = {}
    for key in (BUDGET_META, INTERVAL_META):
        raw = store.get_meta(key)
        try:
            out[key] = json.loads(raw) if raw else None
        except ValueError:
            out[key] = None
    return out


def budget_line(budget: dict[str, Any] | None) -> str | None:
    """One line for ``status``: the budget, its use, the write backlog."""
    if not budget:
        return None
    rate = budget.get("per_minute") or 0
    head = f"{rate:g}/min" if rate else "no budget (testing only)"
    queued = int(budget.get("queued_writes") or 0)
    backlog = (
        f"{queued} write(s) queued, oldest waiting {budget.get('oldest_write_wait_s', 0):g} s"
        if queued
        else "no writes queued"
    )
    return f"{head}, {budget.get('used_last_minute', 0)} used in the last minute; {backlog}"


def interval_line(chosen: dict[str, Any] | None) -> str | None:
    if not chosen:
        return None
    line = f"every {chosen['interval_s']:g} s"
    if chosen.get("auto"):
        line += (
            f" (auto: {chosen['reads_per_poll']} read(s) a poll, "
            f"{chosen['budget_share'] * 100:.1f} % of Graph's presence budget)"
        )
    return line
