"""What the sync engine takes and gives back: its options, its results and its events.

Owns ``EngineOptions`` (the CLI's flags), ``SyncResult`` / ``ActionReport`` (what a run did,
``ActionReport.as_row``: one write as a row), ``SyncEvent`` (the live view's and NDJSON's
events), ``DisableResult``, the injected clock and sleep types, and the run's counts as the state
stores them. Plain data: the engine (``sync/engine.py`` and the modules it is made of) fills them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from presencectl.sync.model import Direction
from presencectl.sync.state import RunCounts

if TYPE_CHECKING:
    from presencectl.sync.notify import NotifyOptions

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]
EventCallback = Callable[["SyncEvent"], None]
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


def run_counts(result: SyncResult) -> RunCounts:
    """The run's counts as the state stores them (``status``'s last run)."""
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
