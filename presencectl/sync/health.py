"""The sync's health as `status` shows it, from the state database alone (no network).

Owns the health facts and how they are recorded: the engine records, after each cycle, when it
ran, what it throttled and the Connect change feed's state (meta keys ``health.*``); the rest is
read from what the state already holds (the latest run, the failed writes of that run, our
sessions and the subscriptions). Any other part of the sync that has a fact worth showing
(change notifications, an outage) records it with :func:`record` under a ``health.`` key and
``status`` shows it without a change here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from presencectl.sync.state import StateStore

PREFIX = "health."
LAST_CYCLE_AT = PREFIX + "last_cycle_at"
THROTTLED = PREFIX + "throttled"
FEED = PREFIX + "connect_feed"


def record(store: StateStore, facts: dict[str, Any]) -> None:
    """Store health facts (``health.``-prefixed keys; a value of None removes the fact)."""
    for key, value in facts.items():
        name = key if key.startswith(PREFIX) else PREFIX + key
        store.set_meta(name, None if value is None else str(value))


def record_cycle(
    store: StateStore, *, throttled: int, feed_state: str | None, now: float | None = None
) -> None:
    """What the engine records after each cycle of a run."""
    now = time.time() if now is None else now
    record(
        store,
        {LAST_CYCLE_AT: f"{now:.3f}", THROTTLED: throttled, FEED: feed_state},
    )


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _next_write(
    store: StateStore, refresh_s: float, margin_s: float
) -> tuple[float, str, str] | None:
    """(when, pair key, why) of the next write that keeps a session of ours alive.

    The same rules as the planner's upkeep: an Available Teams session is re-sent ``refresh_s``
    after it was written (Teams fades it after 5 minutes), any session is renewed ``margin_s``
    before it expires. Not the expiry itself: what happens next is the refresh.
    """
    best: tuple[float, str, str] | None = None
    for session in store.sessions():
        candidates: list[tuple[float, str]] = []
        if session.side.value == "teams" and session.value.lower().startswith("available/"):
            candidates.append((session.written_at + refresh_s, "Available refresh"))
        if session.expires_at is not None:
            candidates.append((session.expires_at - margin_s, "renewal before expiry"))
        for at, why in candidates:
            if best is None or at < best[0]:
                best = (at, session.key, why)
    return best


def health_report(store: StateStore, now: float | None = None) -> dict[str, Any]:
    """The health facts, JSON-ready; keys are stable, new facts may be added."""
    from presencectl.sync.plan import PlanSettings

    now = time.time() if now is None else now
    settings = PlanSettings()
    report: dict[str, Any] = {}
    last = store.last_run()
    cycle_at = store.get_meta(LAST_CYCLE_AT)
    last_cycle = float(cycle_at) if cycle_at else None
    if last is not None:
        ended = last.finished_at or last.started_at
        last_cycle = max(last_cycle or 0.0, ended) if last.finished_at else last_cycle
        report["running"] = last.outcome is None
    report["last_cycle_at"] = _iso(last_cycle)
    report["last_cycle_age_s"] = None if last_cycle is None else round(now - last_cycle, 1)
    failing: dict[str, str] = {}
    if last is not None:
        for entry in store.audit_tail(200):
            if entry.at >= last.started_at and entry.outcome == "failed":
                failing[entry.user or entry.user_id or "?"] = entry.error or "failed"
    report["failing_users"] = [{"user": u, "error": e} for u, e in failing.items()]
    # The per-cycle facts belong to the latest run only (a one-shot run after a watch has none).
    current = last is not None and cycle_at is not None and float(cycle_at) >= last.started_at
    throttled = store.get_meta(THROTTLED) if current else None
    report["throttled"] = int(throttled) if throttled and throttled.isdigit() else 0
    report["throttle_wait_s"] = round(last.counts.throttle_wait, 3) if last is not None else 0.0
    running = last is not None and last.outcome is None
    report["connect_feed"] = store.get_meta(FEED) if current and running else None
    subscriptions = store.subscriptions()
    report["subscriptions"] = len(subscriptions)
    expiries = [s.expires_at for s in subscriptions if s.expires_at is not None]
    report["subscriptions_expire_next"] = _iso(min(expiries)) if expiries else None
    upcoming = _next_write(
        store, settings.available_refresh.total_seconds(), settings.renew_margin.total_seconds()
    )
    emails = {p.key: p.email for p in store.pairs()}
    report["next_session_write"] = (
        None
        if upcoming is None
        else {
            "at": _iso(upcoming[0]),
            "user": emails.get(upcoming[1], upcoming[1]),
            "why": upcoming[2],
        }
    )
    for key, value in store.meta_items(PREFIX):
        name = key[len(PREFIX) :]
        if key not in (LAST_CYCLE_AT, THROTTLED, FEED) and name not in report:
            report[name] = value
    return report


def health_lines(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows of the report for a table."""
    rows: list[tuple[str, str]] = []
    age = report.get("last_cycle_age_s")
    rows.append(
        (
            "last cycle",
            "never"
            if age is None
            else f"{_age(age)} ({report['last_cycle_at']})"
            + (", running" if report.get("running") else ""),
        )
    )
    failing = report.get("failing_users") or []
    rows.append(
        (
            "failing users",
            "none"
            if not failing
            else ", ".join(f"{f['user']} ({f['error']})" for f in failing[:5])
            + (f" and {len(failing) - 5} more" if len(failing) > 5 else ""),
        )
    )
    rows.append(
        (
            "throttling",
            f"{report.get('throttled', 0)} throttled answer(s), "
            f"{report.get('throttle_wait_s', 0.0)} s waited (last run)",
        )
    )
    rows.append(("connect feed", report.get("connect_feed") or "not running (polling or no watch)"))
    subs = report.get("subscriptions", 0)
    rows.append(
        (
            "subscriptions",
            f"{subs}" + (f", next expiry {report['subscriptions_expire_next']}" if subs else ""),
        )
    )
    upcoming = report.get("next_session_write")
    rows.append(
        (
            "next session write",
            "none (no session held)"
            if not upcoming
            else f"{upcoming['at']} {upcoming['why']} ({upcoming['user']})",
        )
    )
    known = {
        "running", "last_cycle_at", "last_cycle_age_s", "failing_users", "throttled",
        "throttle_wait_s", "connect_feed", "subscriptions", "subscriptions_expire_next",
        "next_session_write",
    }  # fmt: skip
    rows.extend((k.replace("_", " "), str(v)) for k, v in report.items() if k not in known)
    return rows
