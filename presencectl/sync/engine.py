"""The sync engine: runs cycles (one-shot or watch) and ``disable``, and reports what it did.

Owns the driver around the pure planner (``sync/plan.py``): one cycle = the directories of both
sides (cached, refreshed every ``directory_refresh`` seconds) → ``match_users`` → bulk reads
(Teams: getPresencesByUserId by 650; Connect: bounded-concurrency GETs, or the change feed in
watch mode) → ``plan`` → writes (Teams through ``$batch`` under the per-tenant rate limiter;
Connect with bounded concurrency) → state + audit (``sync/state.py``) → :class:`SyncResult`.

Crash safety: the planned states (sessions and pending writes as if every write succeeds) are
saved before a batch is sent and the real outcome after, so a restart neither loses nor repeats
writes (see ``sync/state.py``). A write that failed without an answer (timeout, connection lost)
is treated as possibly applied; one the service refused is not.

Watch mode polls Teams every ``interval`` seconds and reacts to each Connect feed event at once
(the Connect→Teams write follows the event, not the next poll); while the feed is down, Connect
is polled with Teams, and read once fully after every reconnect. Renewals are planned every poll.
With ``options.notify`` (``sync --watch --notify-url``), Teams changes come by Graph change
notifications (``sync/notify.py``, ``sync/receiver.py``) between polls, and Teams is polled every
reconcile interval instead while they cover every matched user.
``stop`` (an ``asyncio.Event``; the CLI sets it on SIGINT/SIGTERM) ends the loop after the batch
in flight has been written and persisted. Clock and sleep are injected: ``clock()`` gives the
planner's ``now`` (aware UTC), ``sleep`` waits between polls.

Tokens (the engine is wired by ``sync/service.py``'s ``engine_for``): Graph reads, writes and
the directory use the app token; the sync user's delegated token owns the Teams change-notification
subscriptions (delegated only). Both Graph clients share one rate limiter (the limit is per app
and tenant).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from presencectl.connect import feed as connect_feed
from presencectl.connect import presence as connect_presence
from presencectl.connect.directory import list_contacts
from presencectl.errors import AuthError, PresencectlError
from presencectl.mapping import Mapping as StatusMapping
from presencectl.mapping import TeamsStatus
from presencectl.sync import plan as planner
from presencectl.sync.adopt import adopt_pairs
from presencectl.sync.model import (
    Action,
    ActionKind,
    ActionPurpose,
    Direction,
    Observation,
    PairState,
    PlanResult,
    Side,
    UserPair,
    encode_value,
)
from presencectl.sync.progress import Progress
from presencectl.sync.resilience import (
    Backoff,
    Outage,
    is_transient,
    service_down,
    service_of,
)
from presencectl.sync.state import (
    AuditEntry,
    HeldSession,
    RunCounts,
    StateStore,
    SubscriptionRow,
    side_user_id,
)

if TYPE_CHECKING:
    from presencectl.connect.client import ConnectClient
    from presencectl.graph.client import GraphClient
    from presencectl.sync.notify import NotifyOptions, TeamsNotifications

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]
EventCallback = Callable[["SyncEvent"], None]
OUTAGE_META = "outage"  # state meta key: the outage a watch is waiting out (status shows it)
WRITE_CHUNK_PAIRS = 500  # pairs written (and persisted) per step: a stop waits for one step
PROGRESS_MIN_WRITES = 20  # fewer writes than this are not worth a progress display
DEFAULT_ECHO_WINDOW = timedelta(seconds=60)  # a profile without echo_window_s


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class EngineOptions:
    """How the engine runs (the CLI's flags)."""

    direction: Direction = Direction.BOTH
    dry_run: bool = False
    interval: float = 5.0  # watch: Teams poll period
    auto_interval: bool = False  # watch: poll as often as Graph's budget allows (sync/pacing.py)
    directory_refresh: float = 600.0  # seconds a directory listing stays fresh
    connect_concurrency: int = 32
    teams_session_ttl: timedelta = timedelta(hours=1)
    renew_margin: timedelta = timedelta(minutes=5)
    available_refresh: timedelta = timedelta(minutes=4)
    echo_window: timedelta | None = None  # None: the profile's echo_window_s (default 60 s)
    use_feed: bool = True  # watch: Connect change feed (False: poll Connect with Teams)
    notify: NotifyOptions | None = None  # watch: Teams by Graph change notifications (notify.py)


@dataclass
class ActionReport:
    """One planned (and, unless dry run, attempted) write, flat for output."""

    user: str
    side: str
    kind: str
    from_value: str | None
    to_value: str | None
    reason: str
    purpose: str
    outcome: str  # planned | ok | gone | failed
    error: str | None = None

    def as_row(self) -> dict[str, Any]:
        """The write as one row (``sync -o json``'s actions, the watch's ``write`` event);
        ``error`` only when it failed."""
        return {
            "user": self.user,
            "side": self.side,
            "kind": self.kind,
            "from": self.from_value,
            "to": self.to_value,
            "reason": self.reason,
            "purpose": self.purpose,
            "outcome": self.outcome,
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class SyncResult:
    """What a run did (one-shot: one cycle; watch: all of them)."""

    direction: str
    dry_run: bool
    cycles: int = 0
    matched: int = 0
    unmatched: int = 0
    conflicts: int = 0
    read: int = 0
    written: int = 0
    cleared: int = 0
    skipped: int = 0
    failed: int = 0
    throttled: int = 0
    throttle_wait_s: float = 0.0
    duration_s: float = 0.0
    adopted: int = 0  # pairs met with no state: any session of ours cleared before reading
    interrupted: bool = False  # stopped by SIGINT/SIGTERM (after the batch in flight)
    actions: list[ActionReport] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "dry_run": self.dry_run,
            "cycles": self.cycles,
            "matched": self.matched,
            "unmatched": self.unmatched,
            "conflicts": self.conflicts,
            "read": self.read,
            "written": self.written,
            "cleared": self.cleared,
            "skipped": self.skipped,
            "failed": self.failed,
            "adopted": self.adopted,
            "interrupted": self.interrupted,
            "throttled": self.throttled,
            "throttle_wait_s": round(self.throttle_wait_s, 3),
            "duration_s": round(self.duration_s, 3),
        }


@dataclass
class SyncEvent:
    """Something the watch (or a one-shot run) did, for the live view and NDJSON."""

    type: str  # start | cycle | change | write | feed | stop
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.type, "at": self.at.isoformat(), **self.data}


@dataclass
class DisableResult:
    teams_cleared: int = 0
    connect_cleared: int = 0
    already_gone: int = 0
    failed: int = 0
    subscriptions_deleted: int = 0
    interrupted: bool = False  # stopped by SIGINT/SIGTERM: the rest is still to clear
    source: str = "state"  # state | directory (the state was gone: every matched user swept)
    failures: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Outcome:
    ok: bool
    gone: bool = False
    uncertain: bool = False  # no answer: the write may have landed
    error: str | None = None


class SyncEngine:
    """Drives cycles over two live services and a state store.

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
    ) -> None:
        self.graph = graph
        # The sync user's client: owns the delegated-only Teams notification subscriptions.
        self.subscriber = subscriber
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
        # Progress of long work (sync/progress.py): on in one-shot runs and disable, and in a
        # watch only during a full read.
        self.progress = Progress(self._on_progress)
        self._progress_on = True
        self._budget_recorded = 0.0
        self._writes_waiting: dict[int, float] = {}  # Connect writes not yet answered: queued at
        self._teams_write_times: list[tuple[float, int]] = []  # (monotonic, units): the last 30 s
        self._interval_chosen: dict[str, Any] | None = None

    # -- events ---------------------------------------------------------------------------------

    def _emit(self, event_type: str, /, **data: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(SyncEvent(event_type, self.clock(), data))
            except Exception:  # a broken view must not stop the sync
                log.exception("sync event callback failed")

    def _on_progress(self, snapshot: dict[str, Any]) -> None:
        if not self._progress_on:
            return
        self._emit("progress", **snapshot)
        if time.monotonic() - self._budget_recorded >= 2.0:
            self._record_budget()

    def _record_budget(self) -> None:
        """Keep the Connect budget and the write backlog where ``status`` reads them."""
        if self.options.dry_run:
            return
        from presencectl.sync import pacing

        now = time.monotonic()
        self._budget_recorded = now
        waiting = self._writes_waiting.values()
        pacing.record_budget(
            self.store,
            self.connect.budget.snapshot(),
            queued_writes=len(self._writes_waiting),
            oldest_write_wait_s=max((now - t for t in waiting), default=0.0),
        )

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

        ``adopt`` False: the caller adopted ``keys`` already (sync/fullread.py). In a watch, a
        full read of both sides keeps Teams watched while Connect is read (sync/fullread.py)."""
        self._failed_now = set()
        wanted = list(self.pairs) if keys is None else [k for k in keys if k in self.pairs]
        full = read_connect and keys is None
        self._progress_on = not self._watching or full
        if not self.options.dry_run and adopt:
            fresh = sum(1 for k in wanted if k not in self.states)
            if fresh:
                sides = 2  # both sides are cleared (sync/adopt.py)
                self.progress.begin(
                    "adopt", fresh * sides, budget_per_min=self.connect.budget.per_minute
                )
            wanted = await adopt_pairs(self, wanted, result, chunk=WRITE_CHUNK_PAIRS)
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
            if read_teams:
                jobs.append(self.read_teams(wanted))
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
        """Write the plan ``WRITE_CHUNK_PAIRS`` pairs at a time, each chunk persisted before the
        next starts, so that a stop (SIGINT/SIGTERM) ends the run after the chunk in flight.
        Returns the keys handled (all, unless stopped)."""
        by_key: dict[str, list[Action]] = {}
        for action in plan.actions:
            by_key.setdefault(action.key, []).append(action)
        if len(plan.actions) >= PROGRESS_MIN_WRITES:
            self.progress.begin(
                "writes", len(plan.actions), budget_per_min=self.connect.budget.per_minute
            )
        if len(by_key) <= WRITE_CHUNK_PAIRS:
            await self._execute(plan.actions, plan.new_states, plan.observed_states, result, now)
            self.progress.end("writes")
            return list(plan.observed_states)
        keys = list(by_key)
        handled = [k for k in plan.observed_states if k not in by_key]  # nothing to write
        observed = {k: plan.observed_states[k] for k in handled}
        for start in range(0, len(keys), WRITE_CHUNK_PAIRS):
            if start and self._stopping():
                result.interrupted = True
                break
            part = keys[start : start + WRITE_CHUNK_PAIRS]
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
            counts = _counts(result)
            self.store.save_states(
                changed,
                audit=audit,
                run=(self._run_id, counts) if self._run_id is not None else None,
            )

    # -- writes ---------------------------------------------------------------------------------

    async def _send(self, actions: Sequence[Action]) -> list[_Outcome]:
        outcomes: list[_Outcome | None] = [None] * len(actions)
        teams_set = [(i, a) for i, a in enumerate(actions) if a.side is Side.TEAMS and a.value]
        teams_clear = [
            (i, a) for i, a in enumerate(actions) if a.side is Side.TEAMS and a.value is None
        ]
        connect = [(i, a) for i, a in enumerate(actions) if a.side is Side.CONNECT]
        await asyncio.gather(
            self._send_teams_set(teams_set, outcomes),
            self._send_teams_clear(teams_clear, outcomes),
            self._send_connect(connect, outcomes),
        )
        return [o or _Outcome(False, error="not sent") for o in outcomes]

    async def _send_teams_set(
        self, items: list[tuple[int, Action]], outcomes: list[_Outcome | None]
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
        self._note_teams_writes(len(writes))
        sent = set_presences_batch(self.graph, self.session_id, writes)
        await _fill_batch_outcomes(items, outcomes, sent, clear=False)
        self.progress.tick("writes", len(items))

    async def _send_teams_clear(
        self, items: list[tuple[int, Action]], outcomes: list[_Outcome | None]
    ) -> None:
        if not items:
            return
        from presencectl.graph.presence import clear_presences_batch

        ids = [side_user_id(a.key, Side.TEAMS) for _, a in items]
        self._note_teams_writes(len(ids))
        sent = clear_presences_batch(self.graph, self.session_id, ids)
        await _fill_batch_outcomes(items, outcomes, sent, clear=True)
        self.progress.tick("writes", len(items))
        self.progress.tick("adopt", len(items))

    async def _send_connect(
        self, items: list[tuple[int, Action]], outcomes: list[_Outcome | None]
    ) -> None:
        gate = asyncio.Semaphore(max(1, self.options.connect_concurrency))

        async def one(i: int, action: Action) -> None:
            user_id = side_user_id(action.key, Side.CONNECT)
            token = object()
            # queued from here: status reports the backlog of writes (sync/pacing.py)
            self._writes_waiting[id(token)] = time.monotonic()
            async with gate:
                try:
                    if action.kind is ActionKind.SET:
                        await connect_presence.set_presence(
                            self.connect, user_id, str(action.value)
                        )
                        outcomes[i] = _Outcome(True)
                    else:
                        existed = await connect_presence.clear_presence(self.connect, user_id)
                        outcomes[i] = _Outcome(True, gone=not existed)
                except AuthError:
                    raise
                except PresencectlError as exc:
                    status = getattr(exc, "status", None)
                    outcomes[i] = _Outcome(False, uncertain=status is None, error=_why(exc))
                finally:
                    self._writes_waiting.pop(id(token), None)
                    self.progress.tick("writes")
                    self.progress.tick("adopt")

        await asyncio.gather(*(one(i, a) for i, a in items))

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
            self.store.finish_run(self._run_id, _counts(result), outcome=outcome, now=time.time())

    def _new_result(self) -> SyncResult:
        return SyncResult(direction=self.options.direction.value, dry_run=self.options.dry_run)

    def _fill_directory_counts(self, result: SyncResult) -> None:
        result.matched = len(self.pairs)
        result.unmatched = self._unmatched
        result.conflicts = self._conflicts

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def run_once(self, stop: asyncio.Event | None = None) -> SyncResult:
        """One full cycle: directory, both sides read, plan, write, persist.

        ``stop`` set (SIGINT/SIGTERM): the writes already sent are finished and persisted, no
        new ones start, and the result says ``interrupted``."""
        started = time.monotonic()
        result = self._new_result()
        self._stop = stop
        self._start_run("once")
        outcome = "error"
        try:
            await self.refresh_directory(force=True)
            self._fill_directory_counts(result)
            if not self._stopping():
                await self.release_unmatched(result)
            if not self._stopping():
                await self.cycle(result)
                result.cycles = 1
            result.interrupted = self._stopping()
            outcome = "partial" if result.failed else "ok"
            outcome = "interrupted" if result.interrupted else outcome
        finally:
            result.duration_s = time.monotonic() - started
            result.throttled, result.throttle_wait_s = self._throttle()
            self._finish_run(result, outcome)
            self._record_budget()
        return result

    async def watch(
        self,
        *,
        stop: asyncio.Event | None = None,
        max_cycles: int | None = None,
        duration: float | None = None,
        after_cycle: Callable[[int], Awaitable[None] | None] | None = None,
    ) -> SyncResult:
        """Poll Teams every ``interval``; write Connect changes to Teams as their events come.

        Ends when ``stop`` is set, after ``max_cycles`` polls, or after ``duration`` seconds
        (of the injected clock); the batch in flight is always written and persisted first.
        """
        stop = stop or asyncio.Event()
        self._stop = stop
        started = time.monotonic()
        started_at = self.clock()
        result = self._new_result()
        self._start_run("watch")
        self._set_outage_meta(None)  # left by a watch that was killed while waiting
        self._watching = True
        events: asyncio.Queue[Any] = asyncio.Queue()
        self._emit(
            "start",
            direction=self.options.direction.value,
            interval="auto" if self.options.auto_interval else self.options.interval,
        )
        feed = await self._start_feed(events) if self.options.use_feed else None
        await self._start_notifications(events)
        outcome = "error"
        try:
            while not stop.is_set():
                if duration is not None and self._outage and self._elapsed(started_at) >= duration:
                    break  # the duration ran out while a service was down
                # A failure a retry can fix is waited out, then the poll starts over (_survive).
                if not await self._survive(self.refresh_directory(), stop):
                    continue
                self._fill_directory_counts(result)
                if not await self._survive(self._follow_directory_with_notifications(), stop):
                    continue
                if not await self._survive(self.release_unmatched(result), stop):
                    continue
                # Connect is read in full on the first poll, while the feed is down, and once
                # after every reconnect (events raised meanwhile are lost); else the feed says.
                poll_connect = (
                    result.cycles == 0
                    or feed is None
                    or not feed.connected
                    or self._feed_deaf(feed)
                    or self._feed_reconnected(feed)
                    or self._outage is not None  # and after an outage
                )
                if not await self._survive(self.cycle(result, read_connect=poll_connect), stop):
                    continue
                self._recovered()
                result.cycles += 1
                self._emit_cycle(result)
                if after_cycle is not None:
                    maybe = after_cycle(result.cycles)
                    if maybe is not None:
                        await maybe
                if max_cycles is not None and result.cycles >= max_cycles:
                    break
                if duration is not None and (self.clock() - started_at).total_seconds() >= duration:
                    break
                await self._survive(self._wait_for_events(events, stop, result), stop)
            result.interrupted = stop.is_set()
            outcome = "partial" if result.failed else "ok"
        finally:
            if feed is not None:
                with contextlib.suppress(Exception):
                    await feed.close()
                self._forget_feed(feed)
            await self._stop_notifications()
            result.duration_s = time.monotonic() - started
            result.throttled, result.throttle_wait_s = self._throttle()
            self._set_outage_meta(None)  # a stopped watch is not waiting for anything
            self._finish_run(result, outcome)
            self._emit("stop", **result.summary(), failures=result.failures)
        return result

    # -- weathering outages (sync/resilience.py) --------------------------------------------------

    def _elapsed(self, since: datetime) -> float:
        return (self.clock() - since).total_seconds()

    async def _survive(self, step: Awaitable[Any], stop: asyncio.Event) -> bool:
        """Run one step of a watch; False when it failed in a way a retry can fix and the
        failure was waited out (anything else is raised)."""
        try:
            await step
        except Exception as exc:
            await self._weather(exc, stop)
            return False
        return True

    async def _weather(self, exc: Exception, stop: asyncio.Event) -> None:
        """Wait out a failure a retry can fix (re-raise any other); the next cycle reconciles
        in full: directories listed again, Connect read in full."""
        if not is_transient(exc):
            raise exc
        delay = self._backoff.next_delay()
        text = _why(exc) if isinstance(exc, PresencectlError) else f"{type(exc).__name__}: {exc}"
        if self._outage is None:
            self._outage = Outage(service_of(exc), self.clock(), text)
        self._outage.service, self._outage.error = service_of(exc), text
        self._outage.retry(self.clock(), delay, self._backoff.attempts)
        self._directory_at = None
        log.warning("%s (%s)", self._outage.message(), text)
        self._emit("outage", **self._outage.to_dict())
        self._set_outage_meta(self._outage)
        await self._pause(delay, stop)

    def _recovered(self) -> None:
        if self._outage is None:
            return
        down = self._elapsed(self._outage.since)
        log.warning("%s reachable again after %.0f s; reconciled in full", self._outage.service,
                    down)  # fmt: skip
        self._emit("recovered", service=self._outage.service, down_s=round(down, 1),
                   attempts=self._outage.attempts)  # fmt: skip
        self._outage = None
        self._backoff.reset()
        self._set_outage_meta(None)

    def _set_outage_meta(self, outage: Outage | None) -> None:
        if self.options.dry_run:
            return
        import json

        self.store.set_meta(OUTAGE_META, None if outage is None else json.dumps(outage.to_dict()))

    async def _pause(self, seconds: float, stop: asyncio.Event) -> None:
        """``sleep(seconds)``, cut short by ``stop``."""
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        stopper = asyncio.ensure_future(stop.wait())
        _, pending = await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    def _emit_cycle(self, result: SyncResult) -> None:
        if not self.options.dry_run:  # what `status` shows as health (sync/health.py)
            from presencectl.sync import health

            health.record_cycle(
                self.store,
                throttled=self._throttle()[0],
                feed_state=getattr(self, "_feed_state", None),
            )
            self._record_budget()
        renewals = sorted(
            (s.expires_at, self._user(k))
            for k, st in self.states.items()
            for s in st.sessions()
            if s.expires_at is not None
        )[:5]
        self._emit(
            "cycle",
            cycle=result.cycles,
            matched=result.matched,
            written=result.written,
            cleared=result.cleared,
            failed=result.failed,
            throttled=result.throttled,
            throttle_wait_s=round(result.throttle_wait_s, 3),
            sessions=sum(len(st.sessions()) for st in self.states.values()),
            next_renewals=[{"user": u, "at": at.isoformat()} for at, u in renewals],
        )

    async def _wait_for_events(
        self, events: asyncio.Queue[Any], stop: asyncio.Event, result: SyncResult
    ) -> None:
        """Until the next poll is due: handle Connect events as they come."""
        deadline = time.monotonic() + self._poll_interval()
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            getter = asyncio.ensure_future(events.get())
            stopper = asyncio.ensure_future(stop.wait())
            sleeper = asyncio.ensure_future(self.sleep(left))
            done, pending = await asyncio.wait(
                {getter, stopper, sleeper}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            if getter in done:
                batch = [getter.result()]
                while not events.empty():
                    batch.append(events.get_nowait())
                await self._on_connect_events(batch, result)
            elif sleeper in done:
                return

    async def _on_connect_events(self, batch: list[Any], result: SyncResult) -> None:
        batch = await self._take_teams_notifications(batch, result)
        observations: dict[str, list[Observation]] = defaultdict(list)
        now = self.clock()
        for event in batch:
            key = self._by_connect.get(event.user_id)
            if key is not None:
                observations[key].append(Observation(Side.CONNECT, event.presence, now))
        if observations:
            await self.cycle(
                result,
                read_teams=False,
                read_connect=False,
                connect_observations=observations,
                keys=list(observations),
            )

    async def _start_feed(self, events: asyncio.Queue[Any]) -> Any:
        from presencectl.connect.feed import PresenceFeed

        def on_state(state: Any) -> None:
            self._feed_state = str(state)
            self._emit("feed", state=str(state))

        feed = PresenceFeed(self.connect, on_event=events.put_nowait, on_state=on_state)
        feed._seen_reconnects = 0  # type: ignore[attr-defined]
        try:
            await feed.start()
            await feed.wait_connected(timeout=5.0)
        except PresencectlError as exc:
            log.warning("connect feed unavailable, polling instead: %s", exc.message)
            return None
        if feed.subscription is not None:
            self.store.save_subscription(
                SubscriptionRow(feed.subscription.id, "connect", time.time(), None, "users/_all")
            )
        return feed

    async def _clear_legacy_connect(self, user_ids: Sequence[str]) -> int:
        return await _clear_legacy(self.connect, user_ids, self.options.connect_concurrency)

    def _feed_deaf(self, feed: Any) -> bool:
        """Events arrive but none can be read: poll Connect as if the feed were down, say why
        (once, and in the state for ``status``), and keep the count of unreadable events."""
        unparsed = getattr(feed, "events_unparsed", 0)
        if unparsed != getattr(feed, "_stored_unparsed", 0):
            feed._stored_unparsed = unparsed
            self.store.set_meta("connect_feed_unparsed", str(unparsed))
        deaf = bool(getattr(feed, "deaf", False))
        if deaf != getattr(feed, "_reported_deaf", False):
            feed._reported_deaf = deaf
            note = (
                f"the Connect feed delivers events presencectl cannot read ({unparsed} so far): "
                "polling Connect with Teams instead"
                if deaf
                else None
            )
            if note:
                log.warning("%s", note)
                self._emit("feed", state="deaf")
            self.store.set_meta("connect_feed_note", note)
        return deaf

    def _feed_reconnected(self, feed: Any) -> bool:
        seen = getattr(feed, "_seen_reconnects", 0)
        if feed.reconnects != seen:
            feed._seen_reconnects = feed.reconnects
            return True
        return False

    def _forget_feed(self, feed: Any) -> None:
        for sub in self.store.subscriptions():
            if sub.side == "connect":
                self.store.delete_subscription(sub.id)

    # -- Teams change notifications (sync/notify.py) --------------------------------------------

    async def _start_notifications(self, events: asyncio.Queue[Any]) -> None:
        notify = self.options.notify
        if notify is None or self.options.dry_run or not self.options.direction.writes(
            Side.CONNECT
        ):
            return
        from presencectl.sync.notify import TeamsNotifications

        self.notifications = TeamsNotifications(
            notify,
            graph=self.subscriber or self.teams_reader,
            store=self.store,
            profile=notify.profile,
            interval=self.options.interval,
            wake=events,
        )
        await self.notifications.start([])
        self._emit("notifications", **self.notifications.summary())

    async def _follow_directory_with_notifications(self) -> None:
        if self.notifications is not None:
            ids = sorted(p.azure_id for p in self.pairs.values())
            await self.notifications.sync_subscriptions(ids)

    async def _stop_notifications(self) -> None:
        if self.notifications is not None:
            with contextlib.suppress(Exception):
                await self.notifications.close()

    def _poll_interval(self) -> float:
        if self.notifications is not None:
            interval = self.notifications.poll_interval()
            if interval != self.options.interval or not self.options.auto_interval:
                return interval  # notifications cover everyone: the reconcile period
        if not self.options.auto_interval:
            return self.options.interval
        return float(self._auto_interval()["interval_s"])

    def _auto_interval(self) -> dict[str, Any]:
        """``--interval auto``: as often as half of Graph's presence budget allows after the
        writes' share (sync/pacing.py); users covered by notifications are not counted."""
        from presencectl.sync import pacing

        covered = len(self.notifications.covered) if self.notifications is not None else 0
        polled = max(0, len(self.pairs) - covered)
        limiter = self.graph.limiter
        cutoff = time.monotonic() - limiter.window
        self._teams_write_times = [(t, n) for t, n in self._teams_write_times if t > cutoff]
        write_units = sum(n for _, n in self._teams_write_times) / limiter.window
        chosen = {
            **pacing.auto_interval(
                polled,
                limit=limiter.ceiling,
                window_s=limiter.window,
                write_units_per_s=write_units,
            ),
            "auto": True,
            "polled_users": polled,
        }
        if self._interval_chosen is None or (
            chosen["interval_s"] != self._interval_chosen["interval_s"]
            or chosen["polled_users"] != self._interval_chosen["polled_users"]
        ):
            self._interval_chosen = chosen
            self._emit("interval", **chosen)
            if not self.options.dry_run:
                pacing.record_interval(self.store, chosen)
        return chosen

    def _note_teams_writes(self, units: int) -> None:
        self._teams_write_times.append((time.monotonic(), units))

    async def _take_teams_notifications(self, batch: list[Any], result: SyncResult) -> list[Any]:
        """Handle the Teams notifications among ``batch``; the rest are Connect events."""
        notes = self.notifications
        if notes is None or not any(item is notes for item in batch):
            return batch
        changes, full = notes.drain()
        if full:
            await self.cycle(result, read_connect=False)
        elif changes:
            now = self.clock()
            observations: dict[str, list[Observation]] = defaultdict(list)
            basic: list[str] = []
            for change in changes:
                key = self._by_azure.get(change.user_id)
                if key is None:
                    continue
                if change.availability is not None and change.activity is not None:
                    status = TeamsStatus.of(change.availability, change.activity, False)
                    observations[key].append(Observation(Side.TEAMS, status, now))
                else:
                    basic.append(key)
            if basic:  # basic notifications carry only the id: one bulk read
                for key, obs in (await self.read_teams(basic)).items():
                    observations[key].append(obs)
            if observations:
                await self.cycle(
                    result,
                    read_teams=False,
                    read_connect=False,
                    connect_observations=observations,
                    keys=list(observations),
                )
        return [item for item in batch if item is not notes]

    async def _delete_subscription(self, sub: SubscriptionRow) -> bool:
        """Delete it at its service; False when the service no longer had it (404)."""
        if sub.side == "graph":
            from presencectl.graph.subscriptions import delete_subscription

            return await delete_subscription(self.subscriber or self.teams_reader, sub.id)
        return await connect_feed.delete_subscription(self.connect, sub.id)

    # -- disable --------------------------------------------------------------------------------

    async def disable(
        self,
        on_progress: Callable[[int, int], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> DisableResult:
        """Clear every session we hold on both sides and delete our subscriptions.

        From the state database; when it holds nothing (state lost), from the directory: our
        session is cleared for every matched user on both sides (404 = nothing to clear).
        ``stop`` set: the chunk in flight is finished and persisted, the rest left (interrupted)."""
        result = DisableResult()
        held: list[HeldSession] = self.store.sessions()
        targets: list[tuple[str, Side, str]] = [(h.key, h.side, h.user_id) for h in held]
        if not targets and self.store.pair_count() == 0 and self.store.last_run() is None:
            result.source = "directory"
            await self.refresh_directory(force=True)
            for pair in self.pairs.values():
                targets.append((pair.key, Side.TEAMS, pair.azure_id))
                targets.append((pair.key, Side.CONNECT, pair.connect_id))
        total = len(targets)
        done = 0
        self.progress.begin("writes", total, budget_per_min=self.connect.budget.per_minute)
        emails = {p.key: p.email for p in self.store.pairs()}  # failures name people, not ids
        cleared: list[tuple[str, Side]] = []
        audit: list[AuditEntry] = []
        chunk = 200
        for start in range(0, total, chunk):
            if stop is not None and stop.is_set():
                result.interrupted = True
                break
            part = targets[start : start + chunk]
            actions = [
                Action(
                    key, side, ActionKind.CLEAR, None, "disable", ActionPurpose.CLEAR, None, None
                )
                for key, side, _ in part
            ]
            outcomes = await self._send(actions)
            at = time.time()
            for (key, side, user_id), outcome in zip(part, outcomes, strict=True):
                if outcome.ok and outcome.gone:
                    result.already_gone += 1
                elif outcome.ok and side is Side.TEAMS:
                    result.teams_cleared += 1
                elif outcome.ok:
                    result.connect_cleared += 1
                else:
                    result.failed += 1
                    email = self.pairs[key].email if key in self.pairs else emails.get(key)
                    result.failures.append(
                        {
                            "user": email or user_id,
                            "user_id": user_id,
                            "side": side.value,
                            "error": outcome.error or "failed",
                        }
                    )
                if outcome.ok:
                    cleared.append((key, side))
                if result.source == "state" or (outcome.ok and not outcome.gone):
                    status = "gone" if outcome.gone else ("ok" if outcome.ok else "failed")
                    audit.append(
                        AuditEntry(
                            at, side.value, "clear", None, status, key=key, user_id=user_id,
                            reason="disable", error=outcome.error,
                        )
                    )  # fmt: skip
            done += len(part)
            self.store.forget_sessions(cleared)
            self.store.append_audit(audit)  # per chunk: an abort keeps what was done so far
            cleared, audit = [], []
            if on_progress is not None:
                on_progress(done, total)
        self.progress.end("writes")
        if result.interrupted:
            return result  # sessions are still held: keep what disable needs to finish later
        result.connect_cleared += await self._clear_legacy_connect(
            [user_id for _, side, user_id in targets if side is Side.CONNECT]
        )
        for sub in self.store.subscriptions():
            with contextlib.suppress(PresencectlError):
                if await self._delete_subscription(sub):  # False: the service had none
                    result.subscriptions_deleted += 1
            self.store.delete_subscription(sub.id)
        if result.failed == 0:
            self.store.clear_sync_state()
        return result


async def _clear_legacy(connect: ConnectClient, user_ids: Sequence[str], limit: int) -> int:
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


def _default_matcher() -> Callable[[Sequence[Any], Sequence[Any]], Any]:
    from presencectl.sync.match import match_users

    return match_users


def _count(report: Any, name: str) -> int:
    value = getattr(report, name, None)
    if value is None:
        return 0
    return len(value) if not isinstance(value, int) else value


def _why(exc: PresencectlError) -> str:
    return f"{exc.code}: {exc.message}"


async def _fill_batch_outcomes(
    items: list[tuple[int, Action]],
    outcomes: list[_Outcome | None],
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
            outcomes[i] = _Outcome(False, uncertain=True, error=_why(exc))
        return
    for (i, _), answer in zip(items, answers, strict=True):
        outcomes[i] = _graph_outcome(answer, clear=clear)


def _graph_outcome(answer: Any, *, clear: bool) -> _Outcome:
    outcome = str(getattr(answer.outcome, "value", answer.outcome))
    if outcome == "ok":
        return _Outcome(True)
    if outcome == "gone":
        # clear: no session left (done); set: the user is gone (a failure).
        return _Outcome(True, gone=True) if clear else _Outcome(False, error="user not found")
    error = answer.error
    text = _why(error) if isinstance(error, PresencectlError) else f"HTTP {answer.status}"
    return _Outcome(False, uncertain=not answer.status, error=text)


def _counts(result: SyncResult) -> RunCounts:
    return RunCounts(
        cycles=result.cycles,
        matched=result.matched,
        read=result.read,
        written=result.written,
        cleared=result.cleared,
        skipped=result.skipped,
        failed=result.failed,
        throttle_wait=result.throttle_wait_s,
    )


__all__ = [
    "ActionReport",
    "DisableResult",
    "EngineOptions",
    "SyncEngine",
    "SyncEvent",
    "SyncResult",
]
