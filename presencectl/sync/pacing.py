"""How fast a watch may go within the services' budgets, and what ``status`` says of them.

Owns:

- :func:`auto_interval`: ``sync --watch --interval auto``. Teams presence is read as often as
  half of Graph's presence budget allows after the writes' share (1,500 requests / 30 s / app /
  tenant, graph/ratelimit.py; one read covers 650 ids), never more often than once a second
  (``AUTO_FLOOR_S``). Users covered by Graph change notifications are not counted: they are not
  polled. 2,000 people: 4 reads a poll, polled every second = 4 reads a second (8 % of the
  budget).
- :class:`Pacing`, a base of the engine (sync/cycle.py): its progress events, the Teams writes'
  share, the chosen interval and the budget it records.
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
    from presencectl.connect.client import ConnectClient
    from presencectl.graph.client import GraphClient
    from presencectl.sync.notify import TeamsNotifications
    from presencectl.sync.results import EngineOptions
    from presencectl.sync.state import StateStore

AUTO_FLOOR_S = 1.0  # never poll Teams more often than once a second
POLL_SHARE = 0.5  # the share of Graph's presence budget (after writes) polling may take
IDS_PER_READ = 650  # getPresencesByUserId
BUDGET_META = "connect_budget"
STARTS_META = "connect_budget_starts"  # Unix times of the last minute's Connect requests
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


class Pacing:
    """The engine's side of the budgets (a base of ``SyncCycle``, sync/cycle.py): progress
    events (sync/progress.py), the Connect budget and write backlog kept for ``status``, the
    Teams writes' share of Graph's budget, and ``--interval auto``."""

    if TYPE_CHECKING:
        options: EngineOptions
        store: StateStore
        connect: ConnectClient
        graph: GraphClient
        notifications: TeamsNotifications | None
        pairs: dict[str, Any]
        _watching: bool

        def _emit(self, event_type: str, /, **data: Any) -> None: ...

    def _init_pacing(self) -> None:
        from presencectl.sync.progress import Progress

        # on in one-shot runs and disable; in a watch only during a full read
        self.progress = Progress(self._on_progress)
        self._progress_on = True
        self._budget_recorded = 0.0
        self._writes_waiting: dict[int, float] = {}  # Connect writes not yet answered: queued at
        self._teams_write_times: list[tuple[float, int]] = []  # (monotonic, units)
        self._interval_chosen: dict[str, Any] | None = None
        self._preload_budget()

    def _on_progress(self, snapshot: dict[str, Any]) -> None:
        if self._progress_on:
            self._emit("progress", **snapshot)
        if time.monotonic() - self._budget_recorded >= 2.0:  # a long batch: status sees it
            self._record_budget()

    def _on_sent(self, side: Any, count: int) -> None:
        """``count`` writes answered on ``side`` (sync/writes.py)."""
        from presencectl.sync.model import Side

        if side is Side.TEAMS:
            self._teams_write_times.append((time.monotonic(), count))
        self.progress.tick("writes", count)
        self.progress.tick("adopt", count)

    def _preload_budget(self) -> None:
        """The last minute's Connect requests of the previous run of this profile count in
        this run's budget (the service's window holds them too)."""
        budget = self.connect.budget
        raw = self.store.get_meta(STARTS_META)
        if not budget.enabled or not raw:
            return
        try:
            starts = [float(t) for t in json.loads(raw)]
        except (ValueError, TypeError):
            return
        offset = time.time() - budget.now()
        budget.preload([t - offset for t in starts])

    def _record_budget(self) -> None:
        """Keep the Connect budget and the write backlog where ``status`` reads them."""
        if self.options.dry_run:
            return
        now = time.monotonic()
        self._budget_recorded = now
        budget = self.connect.budget
        offset = time.time() - budget.now()
        starts = [round(t + offset, 3) for t in budget.recent_starts()]
        self.store.set_meta(STARTS_META, json.dumps(starts))
        record_budget(
            self.store,
            self.connect.budget.snapshot(),
            queued_writes=len(self._writes_waiting),
            oldest_write_wait_s=max((now - t for t in self._writes_waiting.values()), default=0.0),
        )

    def _auto_interval(self) -> dict[str, Any]:
        """``--interval auto`` now: users covered by notifications are not counted; the writes'
        share is what Teams writes used in the last window. Emitted and recorded on change."""
        covered = len(self.notifications.covered) if self.notifications is not None else 0
        polled = max(0, len(self.pairs) - covered)
        limiter = self.graph.limiter
        cutoff = time.monotonic() - limiter.window
        self._teams_write_times = [(t, n) for t, n in self._teams_write_times if t > cutoff]
        write_units = sum(n for _, n in self._teams_write_times) / limiter.window
        chosen = {
            **auto_interval(
                polled, limit=limiter.ceiling, window_s=limiter.window,
                write_units_per_s=write_units,
            ),
            "auto": True,
            "polled_users": polled,
        }  # fmt: skip
        last = self._interval_chosen
        key = (chosen["interval_s"], polled)
        if last is None or key != (last["interval_s"], last["polled_users"]):
            self._interval_chosen = chosen
            self._emit("interval", **chosen)
            if not self.options.dry_run:
                record_interval(self.store, chosen)
        return chosen
