"""One sync cycle and the engine's state: directories, reads, plan, writes, persistence.

Owns :class:`SyncCycle`, the base of ``SyncEngine`` (``sync/engine.py``): the engine's state
(pairs, pair states, failures, the store), the directories of both sides (cached, refreshed every
``directory_refresh`` seconds) → ``match_users`` → bulk reads (Teams: getPresencesByUserId by
650; Connect: bounded-concurrency GETs) → ``plan`` (pure, ``sync/plan.py``) → writes
(``sync/writes.py``) a chunk of pairs at a time → state + audit (``sync/state.py``); releasing
pairs that left the directory; the run's bookkeeping. The one-shot run (``sync/engine.py``), the
watch loop (``sync/watch.py``), the Teams-notifications glue (``sync/notify_glue.py``) and
``disable`` (``sync/disable.py``) build on it.

Crash safety: the planned states (sessions and pending writes as if every write succeeds) are
saved before a batch is sent and the real outcome after, so a restart neither loses nor repeats
writes (see ``sync/state.py``). A write that failed without an answer is treated as possibly
applied; one the service refused is not (``sync/writes.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from presencectl.connect import presence as connect_presence
from presencectl.connect.directory import list_contacts
from presencectl.mapping import Mapping as StatusMapping
from presencectl.mapping import TeamsStatus
from presencectl.sync import plan as planner
from presencectl.sync import writes
from presencectl.sync.adopt import adopt_pairs
from presencectl.sync.model import (
    Action,
    ActionKind,
    Observation,
    PairState,
    PlanResult,
    Side,
    UserPair,
    encode_value,
)
from presencectl.sync.pacing import Pacing
from presencectl.sync.resilience import Backoff, Outage, service_down
from presencectl.sync.results import (
    DEFAULT_ECHO_WINDOW,
    ActionReport,
    Clock,
    EngineOptions,
    EventCallback,
    Sleep,
    SyncEvent,
    SyncResult,
    run_counts,
    utc_now,
)
from presencectl.sync.state import AuditEntry, StateStore, side_user_id
from presencectl.sync.writes import WriteOutcome

if TYPE_CHECKING:
    from presencectl.connect.client import ConnectClient
    from presencectl.graph.client import GraphClient
    from presencectl.sync.notify import TeamsNotifications

log = logging.getLogger(__name__)

WRITE_CHUNK_PAIRS = 500  # pairs written (and persisted) per step: a stop waits for one step
PROGRESS_MIN_WRITES = 20  # fewer writes than this are not worth a progress display


class SyncCycle(Pacing):
    """Drives cycles over two live services and a state store (its budgets and progress:
    ``Pacing``, sync/pacing.py).

    ``graph`` writes (app token) and lists users; ``teams_reader`` reads presence (``graph``
    from a profile: the app token); ``session_id`` is our app's client id (the Teams sessionId).
    """

    def __init__(
        self,
        *,
        graph: GraphClient,
        teams_reader: GraphClient,
        connect: ConnectClient,
        session_id: str,
        store: StateStore,
        mapping: StatusMapping,
        options: EngineOptions,
        clock: Clock = utc_now,
        sleep: Sleep = asyncio.sleep,
        on_event: EventCallback | None = None,
        matcher: Callable[[Sequence[Any], Sequence[Any]], Any] | None = None,
        subscriber: GraphClient | None = None,
        subscribers: Mapping[str, GraphClient] | None = None,
    ) -> None:
        self.graph = graph
        # The sync user's client: owns the delegated-only Teams notification subscriptions; with a
        # pool of sync users, ``subscribers`` (username → client) and one subscription each.
        self.subscriber = subscriber
        self.subscribers: dict[str, GraphClient] = dict(subscribers or {})
        self.matcher = matcher
        self.teams_reader = teams_reader
        self.connect = connect
        self.session_id = session_id
        self.store = store
        self.mapping = mapping
        self.options = options
        self.clock = clock
        self.sleep = sleep
        self.on_event = on_event
        self.pairs: dict[str, UserPair] = {}
        self.states: dict[str, PairState] = store.load_states()
        self._by_connect: dict[str, str] = {}
        self._connect_ids: set[str] = set()
        self._by_azure: dict[str, str] = {}
        self._directory_at: float | None = None
        self._unmatched = 0
        self._conflicts = 0
        self._run_id: int | None = None
        self._write_lock = asyncio.Lock()
        self.notifications: TeamsNotifications | None = None
        self._stop: asyncio.Event | None = None  # set: plan no more writes (SIGINT/SIGTERM)
        # (pair key, side) → its latest failure, until a later cycle handles that pair cleanly:
        # what `failed` and the exit code of a long run report (a failure since healed is not).
        self._failing: dict[tuple[str, str], dict[str, str]] = {}
        self._failed_now: set[tuple[str, str]] = set()
        self._outage: Outage | None = None  # watch: a service we are waiting for
        self._backoff = Backoff()
        self._watching = False  # a watch waits out a service that is down (sync/resilience.py)
        self._init_pacing()

    # -- events ---------------------------------------------------------------------------------

    def _emit(self, event_type: str, /, **data: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(SyncEvent(event_type, self.clock(), data))
            except Exception:  # a broken view must not stop the sync
                log.exception("sync event callback failed")

    # -- directory ------------------------------------------------------------------------------

    async def refresh_directory(self, *, force: bool = False) -> None:
        """List both directories and match them, unless the last listing is still fresh."""
        mono = time.monotonic()
        if (
            not force
            and self._directory_at is not None
            and mono - self._directory_at < self.options.directory_refresh
        ):
            return
        from presencectl.graph.users import list_users

        self.progress.begin("directory", 2)

        async def counted(listing: Awaitable[Any]) -> Any:
            listed = await listing
            self.progress.tick("directory")
            return listed

        azure_users, contacts = await asyncio.gather(
            counted(list_users(self.graph)), counted(list_contacts(self.connect))
        )
        self.progress.end("directory")
        report = (self.matcher or _default_matcher())(azure_users, contacts)
        self.pairs = {p.key: p for p in report.pairs}
        self._by_connect = {p.connect_id: p.key for p in report.pairs}
        self._connect_ids = {c.id for c in contacts}  # whom a feed event may name
        self._by_azure = {p.azure_id: p.key for p in report.pairs}
        self._unmatched = _count(report, "unmatched_azure") + _count(report, "unmatched_connect")
        self._conflicts = _count(report, "conflicts")
        self._directory_at = mono
        if not self.options.dry_run:
            self.store.replace_pairs(list(self.pairs.values()), now=time.time())
        log.info(
            "directory: %d matched, %d unmatched, %d conflicts",
            len(self.pairs),
            self._unmatched,
            self._conflicts,
        )

    # -- reads ----------------------------------------------------------------------------------

    async def read_teams(self, keys: Iterable[str]) -> dict[str, Observation]:
        from presencectl.graph.presence import get_presences

        ids = [self.pairs[k].azure_id for k in keys if k in self.pairs]
        if self.progress.phase is None:  # a poll during a longer phase does not replace it
            self.progress.begin("graph_reads", len(ids))
        reads = await get_presences(self.teams_reader, ids)
        self.progress.end("graph_reads")
        now = self.clock()
        out: dict[str, Observation] = {}
        for user_id, read in reads.items():
            key = self._by_azure.get(user_id)
            if key is None:
                continue
            status = TeamsStatus.of(read.availability, read.activity, read.out_of_office)
            out[key] = Observation(Side.TEAMS, status, now)
        return out

    async def read_connect(
        self, keys: Iterable[str]
    ) -> tuple[dict[str, Observation], dict[str, str]]:
        ids = [self.pairs[k].connect_id for k in keys if k in self.pairs]
        budget = self.connect.budget.per_minute
        self.progress.begin("connect_reads", len(ids), budget_per_min=budget)
        reads = await connect_presence.get_presences(
            self.connect,
            ids,
            self.options.connect_concurrency,
            on_progress=lambda done: self.progress.tick("connect_reads", done, absolute=True),
        )
        self.progress.end("connect_reads")
        down = service_down(len(reads.presences), reads.failures) if self._watching else None
        if down is not None:
            raise down  # Connect is down, not these users: the watch waits it out (_weather)
        now = self.clock()
        out = {
            self._by_connect[u]: Observation(Side.CONNECT, v, now)
            for u, v in reads.presences.items()
            if u in self._by_connect
        }
        failures = {
            self._by_connect[u]: f"{e.code}: {e.message}"
            for u, e in reads.failures.items()
            if u in self._by_connect
        }
        return out, failures

    # -- one cycle ------------------------------------------------------------------------------

    async def cycle(
        self,
        result: SyncResult,
        *,
        read_teams: bool = True,
        read_connect: bool = True,
        connect_observations: Mapping[str, Sequence[Observation]] | None = None,
        keys: Sequence[str] | None = None,
        adopt: bool = True,
    ) -> None:
        """Read (as asked), plan and write for ``keys`` (default: every matched pair).

        ``adopt`` False: the caller adopted ``keys`` already. In a watch, a full read of both
        sides keeps Teams watched while Connect is read (sync/fullread.py)."""
        self._failed_now = set()
        wanted = list(self.pairs) if keys is None else [k for k in keys if k in self.pairs]
        if keys is None:  # a cycle for a few pairs (an event) leaves the display as it is
            self._progress_on = not self._watching or read_connect
        if not self.options.dry_run and adopt:
            fresh = sum(1 for k in wanted if k not in self.states)
            budget = self.connect.budget.per_minute
            if fresh:  # both sides of each are cleared (sync/adopt.py)
                self.progress.begin("adopt", 2 * fresh, budget_per_min=budget)
            wanted = await adopt_pairs(self, wanted, result, chunk=self._chunk_pairs())
            self.progress.end("adopt")
        observations: dict[str, list[Observation]] = defaultdict(list)
        read_failures: dict[str, str] = {}
        jobs: list[Awaitable[Any]] = []
        meanwhile: set[str] = set()  # planned and written while Connect was read (fullread.py)
        if read_teams and read_connect and self._watching and not self.options.dry_run:
            from presencectl.sync.fullread import read_connect_watching

            first = await self.read_teams(wanted)
            connect_obs, read_failures, first, meanwhile = await read_connect_watching(
                self, wanted, first, result
            )
            answers: list[Any] = [first, (connect_obs, read_failures)]
        else:
            if read_teams:  # a watch's poll: not the users notifications cover (notify_glue.py)
                polled = self._teams_poll_keys(wanted) if self._watching else wanted
                jobs.append(self.read_teams(polled))
            if read_connect:
                jobs.append(self.read_connect(wanted))
            answers = list(await asyncio.gather(*jobs))
        if read_teams:
            teams_obs = answers.pop(0)
            for key, obs in teams_obs.items():
                observations[key].append(obs)
            result.read += len(teams_obs)
        if read_connect:
            connect_obs, read_failures = answers.pop(0)
            for key, obs in connect_obs.items():
                if key not in meanwhile:  # a fresher reading was planned meanwhile
                    observations[key].append(obs)
            result.read += len(connect_obs)
        for key, seq in (connect_observations or {}).items():
            if key in self.pairs:
                observations[key].extend(seq)
                result.read += len(seq)
        for key, why in read_failures.items():
            self._fail(result, key, "connect", f"read failed: {why}")

        now = self.clock()
        states = {k: self.states.get(k) or PairState(k) for k in wanted}
        before = {k: (s.genuine_teams, s.genuine_connect) for k, s in states.items()}
        plan = planner.plan(
            states,
            observations,
            self.mapping,
            self.options.direction,
            now,
            teams_session_ttl=self.options.teams_session_ttl,
            renew_margin=self.options.renew_margin,
            available_refresh=self.options.available_refresh,
            echo_window=self.options.echo_window or DEFAULT_ECHO_WINDOW,
        )
        for key, observed in plan.observed_states.items():
            if (observed.genuine_teams, observed.genuine_connect) != before.get(key):
                self._emit(
                    "change",
                    user=self._user(key),
                    teams=encode_value(observed.genuine_teams),
                    connect=encode_value(observed.genuine_connect),
                )
        if self._stopping():
            return  # stopped before writing: nothing planned here is sent, nothing persisted
        acted = {a.key for a in plan.actions}
        result.skipped += sum(1 for k in wanted if k not in acted)
        if self.options.dry_run:
            for action in plan.actions:
                result.actions.append(self._report(action, "planned"))
            return
        handled = await self._execute_in_chunks(plan, result, now)
        self._settle_failures(handled, result)

    async def _execute_in_chunks(
        self, plan: PlanResult, result: SyncResult, now: datetime
    ) -> list[str]:
        """Write the plan ``_chunk_pairs()`` pairs at a time, each chunk persisted before the
        next starts, so that a stop (SIGINT/SIGTERM) ends the run after the chunk in flight.
        Returns the keys handled (all, unless stopped)."""
        chunk = self._chunk_pairs()
        by_key: dict[str, list[Action]] = {}
        for action in plan.actions:
            by_key.setdefault(action.key, []).append(action)
        if len(plan.actions) >= PROGRESS_MIN_WRITES:
            budget = self.connect.budget.per_minute
            self.progress.begin("writes", len(plan.actions), budget_per_min=budget)
        if len(by_key) <= chunk:
            await self._execute(plan.actions, plan.new_states, plan.observed_states, result, now)
            self.progress.end("writes")
            return list(plan.observed_states)
        keys = list(by_key)
        handled = [k for k in plan.observed_states if k not in by_key]  # nothing to write
        observed = {k: plan.observed_states[k] for k in handled}
        for start in range(0, len(keys), chunk):
            if start and self._stopping():
                result.interrupted = True
                break
            part = keys[start : start + chunk]
            observed.update((k, plan.observed_states[k]) for k in part)
            actions = [a for k in part for a in by_key[k]]
            await self._execute(actions, plan.new_states, observed, result, now)
            handled.extend(part)
            observed = {}
        self.progress.end("writes")
        return handled

    async def _execute(
        self,
        actions: list[Action],
        new_states: Mapping[str, PairState],
        observed_states: Mapping[str, PairState],
        result: SyncResult,
        now: datetime,
    ) -> None:
        async with self._write_lock:
            if actions:
                # Intent first: a crash while sending leaves these writes known (see state.py).
                self.store.save_states([new_states[k] for k in {a.key for a in actions}])
            outcomes = await self._send(actions)
            final = dict(observed_states)
            audit: list[AuditEntry] = []
            at = self.clock()
            for action, outcome in zip(actions, outcomes, strict=True):
                state = final[action.key]
                if outcome.ok or outcome.uncertain:
                    final[action.key] = planner.apply_action(state, action, now)
                status = "gone" if outcome.gone else ("ok" if outcome.ok else "failed")
                if outcome.ok:
                    if action.kind is ActionKind.SET:
                        result.written += 1
                    else:
                        result.cleared += 1
                else:
                    self._fail(result, action.key, action.side.value, outcome.error or "failed")
                report = self._report(action, status, outcome.error)
                result.actions.append(report)
                audit.append(
                    AuditEntry(
                        at=at.timestamp(),
                        side=action.side.value,
                        action=action.kind.value,
                        to_value=report.to_value,
                        outcome=status,
                        key=action.key,
                        user=report.user,
                        user_id=side_user_id(action.key, action.side),
                        from_value=report.from_value,
                        reason=action.reason,
                        error=outcome.error,
                    )
                )
                self._emit("write", **report.as_row())
            # The planner hands back the very same object for a pair it found settled (its
            # steady-state fast path): nothing about it changed, so nothing to write. At 10,000
            # users that spares rewriting every pair's rows every watch cycle.
            changed = [s for k, s in final.items() if s is not self.states.get(k)]
            self.states.update(final)
            result.throttled, result.throttle_wait_s = self._throttle()
            counts = run_counts(result)
            self.store.save_states(
                changed,
                audit=audit,
                run=(self._run_id, counts) if self._run_id is not None else None,
            )

    # -- writes (sync/writes.py) ------------------------------------------------------------------

    def _chunk_pairs(self) -> int:
        """Pairs written (and persisted) per step: a stop waits for one step."""
        return WRITE_CHUNK_PAIRS

    def _teams_poll_keys(self, wanted: list[str]) -> list[str]:
        return wanted  # every pair (sync/notify_glue.py leaves out those notifications cover)

    async def _send(self, actions: Sequence[Action]) -> list[WriteOutcome]:
        return await writes.send(
            actions,
            graph=self.graph,
            connect=self.connect,
            session_id=self.session_id,
            connect_concurrency=self.options.connect_concurrency,
            on_sent=self._on_sent,
            waiting=self._writes_waiting,
        )

    # -- reporting helpers ----------------------------------------------------------------------

    def _user(self, key: str) -> str:
        pair = self.pairs.get(key)
        return pair.email if pair is not None else key

    def _report(self, action: Action, outcome: str, error: str | None = None) -> ActionReport:
        described = action.describe()
        return ActionReport(
            user=self._user(action.key),
            side=action.side.value,
            kind=action.kind.value,
            from_value=described["from"],
            to_value=described["to"],
            reason=action.reason,
            purpose=action.purpose.value,
            outcome=outcome,
            error=error,
        )

    def _fail(self, result: SyncResult, key: str, side: str, error: str) -> None:
        result.failed += 1
        result.failures.append({"user": self._user(key), "side": side, "error": error})
        self._failing[(key, side)] = result.failures[-1]
        self._failed_now.add((key, side))

    def _settle_failures(
        self, handled: Iterable[str], result: SyncResult, failed: set[tuple[str, str]] | None = None
    ) -> None:
        """Pairs handled without failure are no longer failing; ``failed`` counts what still is."""
        failed = self._failed_now if failed is None else failed
        for key in handled:
            for side in ("teams", "connect"):
                if (key, side) not in failed:
                    self._failing.pop((key, side), None)
        result.failed = len(self._failing)
        result.failures = list(self._failing.values())

    def _throttle(self) -> tuple[int, float]:
        metrics = self.graph.metrics  # one limiter shared with the reader
        waited = metrics.retry_after_wait_s + metrics.bucket_wait_s
        return metrics.throttled, waited

    # -- pairs that left the directory ------------------------------------------------------------

    async def release_unmatched(self, result: SyncResult) -> None:
        """Clear our sessions on pairs that are no longer matched (they would linger otherwise)."""
        gone = [s for k, s in self.states.items() if k not in self.pairs and s.sessions()]
        if not gone or self.options.dry_run:
            return
        actions = planner.release(gone, "user no longer matched: clear our session")
        outcomes = await self._send(actions)
        forget: set[str] = set()
        keep: dict[str, PairState] = {}
        at = self.clock()
        audit = []
        for action, outcome in zip(actions, outcomes, strict=True):
            status = "gone" if outcome.gone else ("ok" if outcome.ok else "failed")
            if outcome.ok:
                result.cleared += 1
                forget.add(action.key)
            else:
                keep[action.key] = self.states[action.key]
                self._fail(result, action.key, action.side.value, outcome.error or "failed")
            audit.append(
                AuditEntry(
                    at.timestamp(), action.side.value, "clear", None, status, key=action.key,
                    user_id=side_user_id(action.key, action.side), reason=action.reason,
                    error=outcome.error,
                )
            )  # fmt: skip
        forget -= set(keep)
        for key in forget:
            self.states.pop(key, None)
        self._settle_failures(forget, result, failed=set())
        self.store.save_states([], audit=audit, forget=sorted(forget))

    # -- runs -----------------------------------------------------------------------------------

    def _start_run(self, mode: str) -> None:
        if not self.options.dry_run:
            self._run_id = self.store.start_run(
                mode=mode,
                direction=self.options.direction.value,
                dry_run=False,
                now=time.time(),
            )

    def _finish_run(self, result: SyncResult, outcome: str) -> None:
        if self._run_id is not None:
            counts = run_counts(result)
            self.store.finish_run(self._run_id, counts, outcome=outcome, now=time.time())

    def _new_result(self) -> SyncResult:
        return SyncResult(direction=self.options.direction.value, dry_run=self.options.dry_run)

    def _fill_directory_counts(self, result: SyncResult) -> None:
        result.matched = len(self.pairs)
        result.unmatched = self._unmatched
        result.conflicts = self._conflicts

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()


def _default_matcher() -> Callable[[Sequence[Any], Sequence[Any]], Any]:
    from presencectl.sync.match import match_users

    return match_users


def _count(report: Any, name: str) -> int:
    value = getattr(report, name, None)
    if value is None:
        return 0
    return len(value) if not isinstance(value, int) else value
