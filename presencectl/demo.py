"""presencectl demo, the core: the whole product against an in-process sandbox, as events.

Owns the demo's order of steps and its measurements; every step calls the real code the
commands call (``presencectl.identity`` for setup-azure, consent --check and the sync user,
``presencectl.sync.engine`` for enable's prerequisites and ``sync --watch``), against a sandbox
started in-process (``presencectl.sandbox.running_sandbox``), while ``presencectl.sandbox.simulate``
makes genuine changes on both sides through the sandbox's control API.

Nothing here prints: :func:`run_demo` hands each :class:`DemoEvent` to ``on_event`` as it
happens (steps, the device-code message, each simulated change, the engine's own ``SyncEvent``s
unchanged) and returns the :class:`DemoSummary`.

Propagation is measured from the moment a simulated change is sent on side A to the moment the
engine reports its write on side B landed (its ``write`` event comes after the service
answered), for the first such write before that person's next change. A change that caused no
write is counted apart: "no write needed" when the engine saw it (the other side already
agreed, or the mapping says "unaltered" and we hold no session there), "not seen" when the
engine never reported it: it came and went between two Teams polls (every ``interval``
seconds), or the engine missed it — the closing in-step check tells the two apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets as token_source
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from presencectl.errors import AuthError

if TYPE_CHECKING:
    from presencectl.config import Profile
    from presencectl.sandbox.server import Sandbox
    from presencectl.sandbox.simulate import ScheduledChange
    from presencectl.sync.engine import SyncEvent, SyncResult

log = logging.getLogger(__name__)

DEFAULT_PROFILE = "demo"  # its own: never the `sandbox` profile of getting-started
DEMO_MARK = "demo_profile"  # state meta key: this state database was made by the demo for …
DEFAULT_USERS = 20
DEFAULT_DURATION = 60.0

FEED_GRACE = 1.0  # seconds the watch goes on after its last poll, for the last feed events

# Writes that keep a session alive are not the carrying of a change.
_UPKEEP_REASONS = ("renew", "refresh", "session expired", "re-assert", "teams is fading")


@dataclass
class DemoOptions:
    users: int = DEFAULT_USERS
    duration: float = DEFAULT_DURATION
    seed: int = 1
    interval: float = 5.0  # the Teams poll of `sync --watch` (its default)
    profile_name: str = DEFAULT_PROFILE
    change_every: float | None = None  # seconds between simulated activities (default: by duration)


@dataclass
class DemoEvent:
    """One thing the demo did. ``type``: step | setup | device_code | inject | summary, or the
    engine's own event types (start | cycle | change | write | feed | stop, ``sync`` set)."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    sync: SyncEvent | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.sync is not None:
            return self.sync.to_dict()
        return {"event": self.type, "at": self.at.isoformat(), **self.data}


@dataclass
class DirectionFigures:
    """The figures of one direction (``teams_to_connect`` or ``connect_to_teams``)."""

    injected: int = 0
    carried: int = 0
    no_write_needed: int = 0  # seen, but the other side already agreed (or "unaltered")
    not_seen: int = 0  # the engine never reported it (between two polls, or missed)
    samples: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "changes": self.injected,
            "carried": self.carried,
            "no_write_needed": self.no_write_needed,
            "not_seen": self.not_seen,
            "median_s": _round(statistics.median(self.samples)) if self.samples else None,
            "worst_s": _round(max(self.samples)) if self.samples else None,
        }


@dataclass
class DemoSummary:
    profile: str
    users: int = 0
    matched: int = 0
    watched_s: float = 0.0
    interrupted: bool = False
    completed_steps: list[str] = field(default_factory=list)
    teams_to_connect: DirectionFigures = field(default_factory=DirectionFigures)
    connect_to_teams: DirectionFigures = field(default_factory=DirectionFigures)
    writes_teams: int = 0
    writes_connect: int = 0
    written: int = 0
    cleared: int = 0
    failed: int = 0
    cycles: int = 0
    throttled: int = 0  # 429s the engine met and waited out
    throttle_wait_s: float = 0.0
    sandbox_429s: int = 0  # 429s the sandbox sent (should equal the above)
    sandbox_requests: int = 0
    in_step: int = 0  # people showing Available on both sides once every activity has ended
    out_of_step: list[dict[str, Any]] = field(default_factory=list)
    teams_notifications: dict[str, Any] | None = None  # how Teams changes arrived (notify.py)

    def propagation(self) -> tuple[float | None, float | None]:
        samples = self.teams_to_connect.samples + self.connect_to_teams.samples
        if not samples:
            return None, None
        return _round(statistics.median(samples)), _round(max(samples))

    def to_dict(self) -> dict[str, Any]:
        median, worst = self.propagation()
        return {
            "profile": self.profile,
            "users": self.users,
            "matched": self.matched,
            "watched_s": _round(self.watched_s),
            "interrupted": self.interrupted,
            "teams_to_connect": self.teams_to_connect.to_dict(),
            "connect_to_teams": self.connect_to_teams.to_dict(),
            "propagation_median_s": median,
            "propagation_worst_s": worst,
            "writes": {"teams": self.writes_teams, "connect": self.writes_connect},
            "written": self.written,
            "cleared": self.cleared,
            "failed": self.failed,
            "cycles": self.cycles,
            "throttled_429s_absorbed": self.throttled,
            "throttle_wait_s": _round(self.throttle_wait_s),
            "sandbox_429s_sent": self.sandbox_429s,
            "sandbox_requests": self.sandbox_requests,
            "in_step": self.in_step,
            "out_of_step": self.out_of_step,
            "teams_notifications": self.teams_notifications,
            "steps": self.completed_steps,
        }


def _round(value: float) -> float:
    return round(value, 3)


class DemoInterrupted(Exception):
    """Raised inside :func:`run_demo` when ``stop`` was set between steps (never escapes)."""


@dataclass
class _Pending:
    side: str  # where the change was made
    sent_at: float
    seen: bool = False  # the engine reported a genuine change of this person since
    carried: bool = False


class PropagationTracker:
    """Pairs each simulated change with the engine's first write it caused on the other side."""

    def __init__(self, summary: DemoSummary, clock: Callable[[], float] = time.monotonic) -> None:
        self.summary = summary
        self.clock = clock
        self.pending: dict[tuple[str, str], _Pending] = {}  # (user, side of the change)
        self.genuine: dict[tuple[str, str], Any] = {}  # (user, side) → last genuine value seen

    def _direction(self, side: str) -> DirectionFigures:
        if side == "teams":
            return self.summary.teams_to_connect
        return self.summary.connect_to_teams

    def _settle(self, key: tuple[str, str]) -> None:
        previous = self.pending.pop(key, None)
        if previous is None or previous.carried:
            return
        figures = self._direction(previous.side)
        if previous.seen:
            figures.no_write_needed += 1
        else:
            figures.not_seen += 1

    def injected(self, user: str, side: str, sent_at: float) -> None:
        key = (user.lower(), side)
        self._settle(key)
        self.pending[key] = _Pending(side, sent_at)
        self._direction(side).injected += 1

    def on_sync(self, event: SyncEvent, at: float | None = None) -> float | None:
        """Account for one engine event; returns the propagation time when it carried a change."""
        user = str(event.data.get("user") or "").lower()
        if event.type == "change":
            for side in ("teams", "connect"):
                value = event.data.get(side)
                if self.genuine.get((user, side), value) == value and (user, side) in self.genuine:
                    continue  # this side did not change
                self.genuine[(user, side)] = value
                seen = self.pending.get((user, side))
                if seen is not None:
                    seen.seen = True
            return None
        if event.type != "write" or event.data.get("outcome") != "ok":
            return None
        side = str(event.data.get("side"))
        if side == "teams":
            self.summary.writes_teams += 1
        else:
            self.summary.writes_connect += 1
        reason = str(event.data.get("reason") or "").lower()
        if reason.startswith(_UPKEEP_REASONS):
            return None
        source = "connect" if side == "teams" else "teams"
        pending = self.pending.get((user, source))
        if pending is None or pending.carried:
            return None
        pending.carried = pending.seen = True
        elapsed = max(0.0, (self.clock() if at is None else at) - pending.sent_at)
        direction = self._direction(pending.side)
        direction.carried += 1
        direction.samples.append(elapsed)
        return elapsed

    def finish(self, *, interrupted: bool = False) -> None:
        """Classify what is still pending; after an interruption it stays unclassified."""
        for key in list(self.pending):
            if interrupted:
                self.pending.pop(key)
            else:
                self._settle(key)


EventSink = Callable[[DemoEvent], None]


def run_demo(
    options: DemoOptions,
    on_event: EventSink,
    *,
    stop: threading.Event | None = None,
) -> DemoSummary:
    """Run the whole demo; ``stop`` (set on Ctrl-C by the CLI) ends it early, summary included."""
    from presencectl.sandbox import running_sandbox
    from presencectl.sandbox.people import ADMIN_EMAIL

    stop = stop or threading.Event()
    summary = DemoSummary(profile=options.profile_name, users=options.users)

    def step(name: str, detail: str, **extra: Any) -> None:
        summary.completed_steps.append(name)
        on_event(DemoEvent("step", {"step": name, "status": "ok", "detail": detail, **extra}))

    def check_stop() -> None:
        if stop.is_set():
            raise DemoInterrupted

    _forget_previous_run(options.profile_name)
    started = time.monotonic()
    with running_sandbox(
        users=options.users,
        seed=options.seed,
        auto_approve=ADMIN_EMAIL,
        allow_http_notifications=True,  # the receiver below listens on loopback, plain http
    ) as sb:
        step(
            "sandbox",
            f"Entra ID + Graph + Connect on {sb.base_url} ({options.users} people, tenant "
            f"{sb.world.tenant_id}); device codes are approved as {ADMIN_EMAIL}",
            base_url=sb.base_url,
            took_s=_round(time.monotonic() - started),
        )
        try:
            profile = _prepare(sb, options, step, on_event, check_stop)
            check_stop()
            people = _matched_people(profile, summary, step)
            check_stop()
            _watch(sb, profile, people, options, summary, on_event, stop, step)
        except DemoInterrupted:
            summary.interrupted = True
        with contextlib.suppress(Exception):
            stats = sb.control.get("/_sandbox/stats").json()
            summary.sandbox_429s = int(stats.get("throttled", 0))
            summary.sandbox_requests = int(stats.get("total_requests", 0))
    on_event(DemoEvent("summary", summary.to_dict()))
    return summary


def _prepare(
    sb: Sandbox,
    options: DemoOptions,
    step: Callable[..., None],
    on_event: EventSink,
    check_stop: Callable[[], None],
) -> Profile:
    """Profile → setup-azure → consent --check → sync-user set/validate (fails, fixed) → enable."""
    from presencectl.config import config_path, save_profile
    from presencectl.identity import setup
    from presencectl.identity.sync_user import store_sync_user, validate_sync_user
    from presencectl.sync.model import Direction as SyncDirection
    from presencectl.sync.service import check_sync_prerequisites

    profile: Profile = sb.write_profile(options.profile_name)
    _mark_state(options.profile_name)
    step(
        "profile",
        f"wrote profile '{profile.name}' to {config_path()} (Connect client secret in the "
        "secret store)",
        config=str(config_path()),
    )
    check_stop()

    def on_setup_step(item: Any) -> None:
        on_event(
            DemoEvent(
                "setup",
                {"step": item.step, "result": item.result, "detail": item.detail}
                | ({"remedy": item.remedy} if item.remedy else {}),
            )
        )

    report = setup.setup_azure(
        profile,
        setup.SetupOptions(),
        method="device_code",
        on_message=lambda prompt: on_event(DemoEvent("device_code", {"message": str(prompt)})),
        on_step=on_setup_step,
        on_consent_url=lambda url: on_event(DemoEvent("device_code", {"message": url})),
    )
    step(
        "setup-azure",
        f"app registration {report.client_id} created with its secret and admin consent, "
        f"admin {report.admin}",
        client_id=report.client_id,
    )
    check_stop()

    checks = setup.check_app_permissions(profile)
    step(
        "consent --check",
        "Graph lists as granted " + ", ".join(c.permission for c in checks if c.granted),
    )
    check_stop()

    info = sb.profile_info()
    sync_user = str(info["sync_user"])
    store_sync_user(profile, sync_user, str(info["sync_user_password"]))
    step("sync-user set", f"{sync_user}, password in the secret store", username=sync_user)
    check_stop()

    try:
        validate_sync_user(profile)
    except AuthError as exc:
        on_event(
            DemoEvent(
                "step",
                {
                    "step": "sync-user validate",
                    "status": "failed",
                    "detail": exc.message,
                    "code": exc.code,
                    "hint": exc.hint or "",
                    "expected": True,
                },
            )
        )
        check_stop()
        new_password = "Demo-" + token_source.token_urlsafe(12)
        response = sb.control.post(
            f"/_sandbox/users/{sync_user}/password", json={"password": new_password}
        )
        response.raise_for_status()
        store_sync_user(profile, sync_user, new_password)
        step(
            "password change",
            f"{sync_user} signed in once and changed the first-login password (through the "
            "sandbox); the new password is stored",
        )
        check_stop()
    else:  # a sandbox without the pending change: nothing to fix
        log.info("the sync user had no pending first-login password change")
    status = validate_sync_user(profile)
    step(
        "sync-user validate",
        f"{status.username} signed in and read its own presence ({status.presence}); "
        f"scopes {status.scopes}",
    )
    check_stop()

    check_sync_prerequisites(profile, SyncDirection.BOTH)
    profile.enabled_direction = SyncDirection.BOTH.value
    save_profile(profile)
    step("enable", "both directions: Connect → Teams and Teams → Connect")
    return profile


def _forget_previous_run(profile_name: str) -> None:
    """A new sandbox is a new world: drop the last demo's sync state and cached sign-ins.

    Only a state database the demo made for this very profile name (its meta ``demo_profile``)
    is deleted: a database of another profile that shares the file name (``contoso prod`` and
    ``contoso_prod``), or one a sync made, is refused with ``state_not_demo`` and left alone.
    """
    from presencectl.errors import ConfigError
    from presencectl.identity import msal_apps
    from presencectl.sync.state import StateStore, database_path

    path = database_path(profile_name)
    if path.exists():
        with StateStore(path) as store:
            made_for = store.get_meta(DEMO_MARK)
        if made_for != profile_name:
            whose = f"the demo's for profile '{made_for}'" if made_for else "not the demo's"
            raise ConfigError(
                f"the state database {path} is {whose}: the demo for profile "
                f"'{profile_name}' would delete it",
                hint="run the demo with another profile (`presencectl demo --profile demo`), or "
                "move that file away if you no longer need it",
                code="state_not_demo",
            )
    for identity in (msal_apps.ADMIN, msal_apps.APP, msal_apps.SYNC_USER):
        msal_apps.forget_cache(profile_name, identity)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).unlink()


def _mark_state(profile_name: str) -> None:
    """The state database the demo is about to fill is marked as the demo's own."""
    from presencectl.sync.state import StateStore

    with StateStore.for_profile(profile_name) as store:
        store.set_meta(DEMO_MARK, profile_name)


def _matched_people(profile: Profile, summary: DemoSummary, step: Callable[..., None]) -> list[str]:
    from presencectl.sync.service import match_report

    rows = asyncio.run(match_report(profile))
    matched = [r["email"] for r in rows if r["status"] == "matched"]
    unmatched = sum(1 for r in rows if r["status"] == "unmatched")
    conflicts = sum(1 for r in rows if r["status"] == "conflict")
    summary.matched = len(matched)
    step(
        "users",
        f"{len(matched)} matched by email, {unmatched} unmatched, {conflicts} conflict(s) "
        f"(never synced); `presencectl --profile {profile.name} users` lists them",
        matched=len(matched),
        unmatched=unmatched,
        conflicts=conflicts,
    )
    return matched


def _watch(
    sb: Sandbox,
    profile: Profile,
    people: list[str],
    options: DemoOptions,
    summary: DemoSummary,
    on_event: EventSink,
    stop_flag: threading.Event,
    step: Callable[..., None],
) -> None:
    from presencectl.sandbox import simulate

    quiet = min(options.interval, options.duration / 3)
    span = max(0.0, options.duration - quiet)
    change_every = options.change_every or (1.0 if options.duration >= 30 else 0.5)
    plan = simulate.schedule(
        people,
        span=span,
        seed=options.seed,
        change_every=change_every,
        min_length=options.interval + 1,  # long enough for a Teams poll to see most of them
    )
    tracker = PropagationTracker(summary)
    step(
        "sync --watch",
        f"watching both sides for {options.duration:g} s (Teams by Graph change notifications, "
        f"reconciled every {options.interval:g} s; Connect by its change feed) while "
        f"{len(people)} simulated "
        f"people make {len(plan)} changes",
        changes=len(plan),
    )
    began = time.monotonic()
    try:
        result = asyncio.run(
            _watch_async(sb, profile, people, plan, options, tracker, on_event, stop_flag)
        )
    finally:
        summary.watched_s = time.monotonic() - began
        tracker.finish(interrupted=stop_flag.is_set())
    summary.interrupted = summary.interrupted or stop_flag.is_set()
    if not summary.interrupted:
        _check_in_step(sb, people, summary, on_event)
    summary.written = result.written
    summary.cleared = result.cleared
    summary.failed = result.failed
    summary.cycles = result.cycles
    summary.throttled = result.throttled
    summary.throttle_wait_s = result.throttle_wait_s


def _check_in_step(
    sb: Sandbox, people: list[str], summary: DemoSummary, on_event: EventSink
) -> None:
    """Every activity has ended: each person must show Available on both sides again."""
    for user in people:
        teams = sb.control.get("/_sandbox/teams/presence", params={"user": user}).json()
        connect = sb.control.get("/_sandbox/connect/presence", params={"user": user}).json()
        shown = (f"{teams.get('availability')}/{teams.get('activity')}", connect.get("status"))
        if shown == ("Available/Available", "available"):
            summary.in_step += 1
        else:
            summary.out_of_step.append({"user": user, "teams": shown[0], "connect": shown[1]})
    on_event(
        DemoEvent(
            "check",
            {
                "in_step": summary.in_step,
                "out_of_step": summary.out_of_step,
                "detail": "every activity has ended: each person shows Available on both sides",
            },
        )
    )


async def _watch_async(
    sb: Sandbox,
    profile: Profile,
    people: list[str],
    plan: list[ScheduledChange],
    options: DemoOptions,
    tracker: PropagationTracker,
    on_event: EventSink,
    stop_flag: threading.Event,
) -> SyncResult:
    from presencectl.sandbox import simulate
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.model import Direction as SyncDirection
    from presencectl.sync.service import engine_for
    from presencectl.transport import build_async_client

    stop = asyncio.Event()
    first_cycle = asyncio.Event()
    # Monotonic time of the last simulated change, once all of them are sent.
    last_change: dict[str, float | None] = {"at": None}
    previous_cycle: list[float] = []
    interval = options.interval

    def on_sync(event: SyncEvent) -> None:
        now = time.monotonic()
        tracker.on_sync(event, now)
        on_event(DemoEvent(event.type, dict(event.data), event.at, sync=event))
        if event.type != "cycle":
            return
        first_cycle.set()
        done_at = last_change["at"]
        # The cycle that just ended began one interval after the previous one ended: once that
        # is after the last change, Teams has been read since; a moment more lets the engine
        # handle the last Connect feed events (they are handled between polls).
        if done_at is not None and previous_cycle and previous_cycle[-1] + interval > done_at:
            asyncio.get_running_loop().call_later(FEED_GRACE, stop.set)
        previous_cycle.append(now)

    def on_change(item: ScheduledChange, sent_at: float) -> None:
        c = item.change
        tracker.injected(c.user, c.side, sent_at)
        on_event(
            DemoEvent(
                "inject",
                {"user": c.user, "side": c.side, "what": c.what, "value": c.value},
            )
        )

    async def watch_flag() -> None:
        while not stop.is_set():
            if stop_flag.is_set():
                stop.set()
            await asyncio.sleep(0.1)

    async with build_async_client(profile.http_settings(), base_url=sb.base_url) as control:
        for change in simulate.morning(people):
            await simulate.apply(control, change)
        engine_options = EngineOptions(direction=SyncDirection.BOTH, interval=interval)
        engine_options.notify = _loopback_notifications(profile, interval)
        async with engine_for(profile, engine_options, on_event=on_sync) as engine:
            flag_task = asyncio.ensure_future(watch_flag())
            watch_task = asyncio.ensure_future(engine.watch(stop=stop))
            first = asyncio.ensure_future(first_cycle.wait())
            await asyncio.wait({watch_task, first}, return_when=asyncio.FIRST_COMPLETED)
            first.cancel()
            sim_task: asyncio.Future[int] | None = None
            if not watch_task.done():
                sim_task = asyncio.ensure_future(
                    simulate.run(control, plan, on_change=on_change, stop=stop)
                )
            try:
                if sim_task is not None:
                    done, _ = await asyncio.wait(
                        {watch_task, sim_task}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if sim_task in done:
                        sim_task.result()  # a refused change is a bug worth seeing
                        last_change["at"] = time.monotonic()
                # Let the last changes be read and carried (see on_sync), within bounds.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(watch_task), timeout=2 * interval + 5)
                stop.set()
                result: SyncResult = await watch_task
                return result
            finally:
                stop.set()
                for task in (sim_task, flag_task):
                    if task is not None and not task.done():
                        task.cancel()
                with contextlib.suppress(BaseException):
                    await watch_task
                if engine.notifications is not None:
                    tracker.summary.teams_notifications = engine.notifications.summary()


def _loopback_notifications(profile: Profile, interval: float) -> Any:
    """Teams changes by Graph notifications to a receiver on a free loopback port; the
    reconciling poll keeps the demo's interval, so its cycles (and its stop) stay as they were."""
    import socket

    from presencectl.sync.notify import NotifyOptions

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return NotifyOptions(
        notify_url=f"http://127.0.0.1:{port}/presencectl",
        profile=profile.name,
        listen=f"127.0.0.1:{port}",
        reconcile_interval=interval,
    )


__all__ = [
    "DemoEvent",
    "DemoOptions",
    "DemoSummary",
    "DirectionFigures",
    "PropagationTracker",
    "run_demo",
]
