"""What the CLI and the demo call around the engine: wiring one to a profile's services, the
prerequisites of a direction, the directory match report and the state summary.

Owns :func:`engine_for` (an engine with the profile's Graph clients — app, and the sync user's
for Teams change-notification subscriptions — its Connect client and its state database, closed
on exit), :func:`check_sync_prerequisites` (what the profile must have proven before a direction
may run), :func:`match_report` (``presencectl users``: both directories matched by email) and
:func:`state_summary` (what ``presencectl status`` reads from the state database, no network).
The engine itself is ``sync/engine.py``; this module only builds and reads around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from presencectl.connect.directory import list_contacts
from presencectl.errors import ConfigError
from presencectl.mapping import Mapping as StatusMapping
from presencectl.sync import pacing
from presencectl.sync.engine import (
    OUTAGE_META,
    Clock,
    EngineOptions,
    EventCallback,
    Sleep,
    SyncEngine,
    utc_now,
)
from presencectl.sync.model import Direction, Side
from presencectl.sync.resilience import outage_text
from presencectl.sync.state import StateStore
from presencectl.sync.state_health import state_unavailable

if TYPE_CHECKING:
    from presencectl.config import Profile
    from presencectl.graph.client import GraphClient


def _app_client_id(profile: Profile) -> str:
    """The profile's app registration (our client id, and the Teams sessionId we write under)."""
    if not profile.client_id:
        raise ConfigError(
            f"profile '{profile.name}' has no app registration",
            hint="run `presencectl setup-azure` first",
            code="setup_missing",
        )
    return profile.client_id


def check_sync_prerequisites(profile: Profile, direction: Direction) -> None:
    """Raise ConfigError unless the profile can sync in ``direction`` (seed prerequisites)."""
    _app_client_id(profile)
    # Consent is proven by granting it (consent, setup-azure) or, without a person, by the app's
    # own token holding every role (`consent --check` records app_permissions): CI uses the latter.
    consented = profile.verified.get("admin_consent") or profile.verified.get("app_permissions")
    if direction.writes(Side.TEAMS) and not consented:
        raise ConfigError(
            "connect-to-teams needs admin consent for the presence permissions",
            hint="run `presencectl consent` (or `presencectl setup-azure`); in CI "
            "`presencectl consent --check` proves an existing consent",
            code="consent_missing",
        )
    if direction.writes(Side.CONNECT) and not profile.verified.get("sync_user"):
        raise ConfigError(
            "teams-to-connect needs a validated sync user",
            hint="run `presencectl sync-user set --username U`,"
            " then `presencectl sync-user validate`",
            code="sync_user_missing",
        )


@contextlib.asynccontextmanager
async def engine_for(
    profile: Profile,
    options: EngineOptions,
    *,
    clock: Clock = utc_now,
    sleep: Sleep = asyncio.sleep,
    on_event: EventCallback | None = None,
    store: StateStore | None = None,
    matcher: Callable[[Sequence[Any], Sequence[Any]], Any] | None = None,
) -> Any:
    """An engine wired to the profile's services (app + sync user tokens, Connect client)."""
    from presencectl.connect.client import connect_client_for
    from presencectl.graph.client import GraphClient
    from presencectl.graph.ratelimit import RateLimiter
    from presencectl.identity.tokens import app_token_provider

    session_id = _app_client_id(profile)
    settings = profile.http_settings()
    if options.echo_window is None:
        options = replace(options, echo_window=timedelta(seconds=profile.echo_window_s))
    if options.notify is not None and options.notify.app_id is None:
        # What each notification batch's validationTokens must name, and where the keys are.
        options = replace(
            options,
            notify=replace(
                options.notify,
                authority=profile.authority if profile.tenant_id else None,
                app_id=profile.client_id,
                http=settings,
            ),
        )
    limiter = RateLimiter()
    own_store = store is None
    store = store or StateStore.for_profile(profile.name)
    graph = GraphClient(profile.graph_url, app_token_provider(profile), settings, limiter=limiter)
    # Presence is read with the app token in every direction: getPresencesByUserId accepts
    # application Presence.Read.All or Presence.ReadWrite.All (which setup-azure grants). The
    # sync user (still required for teams-to-connect) owns the delegated-only presence
    # change-notification subscriptions instead, one per member of the pool of sync users.
    reader = graph
    subscribers = _subscriber_clients(profile, settings, limiter)
    subscriber = next(iter(subscribers.values()), None)
    connect = connect_client_for(profile)
    try:
        yield SyncEngine(
            graph=graph,
            teams_reader=reader,
            connect=connect,
            session_id=session_id,
            store=store,
            mapping=StatusMapping.from_profile(profile),
            options=options,
            clock=clock,
            sleep=sleep,
            on_event=on_event,
            matcher=matcher,
            subscriber=subscriber,
            subscribers=subscribers,
        )
    except sqlite3.Error as exc:  # writes are caught in StateStore.transaction; reads here
        raise state_unavailable(store.path, exc, "read") from exc
    finally:
        await graph.aclose()
        for client in subscribers.values():
            await client.aclose()
        if reader is not graph:
            await reader.aclose()
        await connect.aclose()
        if own_store:
            store.close()


def _subscriber_clients(profile: Profile, settings: Any, limiter: Any) -> dict[str, GraphClient]:
    """One Graph client per member of the pool of sync users (username → client, pool order):
    each owns one Teams notification subscription. A client signs in only when first used;
    a member without what it needs to sign in is left out (the others still cover people)."""
    from presencectl.graph.client import GraphClient
    from presencectl.identity.tokens import sync_user_token_provider

    clients: dict[str, GraphClient] = {}
    for username in _pool_usernames(profile):
        try:
            provider = sync_user_token_provider(profile, username)
        except ConfigError:
            continue
        clients[username] = GraphClient(profile.graph_url, provider, settings, limiter=limiter)
    return clients


def _pool_usernames(profile: Profile) -> list[str]:
    """The pool's members in the order added (identity/sync_user.py); [] without a sync user."""
    from presencectl.identity.sync_user import pool_members

    return [member.username for member in pool_members(profile)]


async def match_report(profile: Profile) -> list[dict[str, str]]:
    """The email matching report of both directories (``presencectl users``)."""
    from presencectl.connect.client import connect_client_for
    from presencectl.graph.client import GraphClient
    from presencectl.graph.users import list_users
    from presencectl.identity.tokens import app_token_provider
    from presencectl.sync.match import match_users

    _app_client_id(profile)
    async with (
        GraphClient(
            profile.graph_url, app_token_provider(profile), profile.http_settings()
        ) as graph,
        connect_client_for(profile) as connect,
    ):
        azure_users, contacts = await asyncio.gather(list_users(graph), list_contacts(connect))
    return match_users(azure_users, contacts).rows()


def state_summary(profile_name: str) -> dict[str, Any]:
    """What ``status`` shows from the state database (no network)."""
    from presencectl.sync.state import database_path

    path = database_path(profile_name)
    if not path.exists():
        return {"state_db": str(path), "exists": False}
    try:
        return _state_summary(path)
    except sqlite3.Error as exc:
        raise state_unavailable(path, exc, "read") from exc


def _state_summary(path: Any) -> dict[str, Any]:
    with StateStore(path) as store:
        last = store.last_run()
        sessions = store.session_count()
        renewals = store.next_expiries(3)
        return {
            "state_db": str(path),
            "exists": True,
            "pairs": store.pair_count(),
            "sessions_teams": sessions["teams"],
            "sessions_connect": sessions["connect"],
            "subscriptions": len(store.subscriptions()),
            "connect_feed_unparsed": int(store.get_meta("connect_feed_unparsed") or 0),
            "connect_feed_note": store.get_meta("connect_feed_note"),
            **pacing.budget_report(store),  # connect_budget, poll_interval
            "teams_notifications": _notifications_of_last_run(store, last),
            "last_run": None
            if last is None
            else {
                "mode": last.mode,
                "direction": last.direction,
                "started": _iso(last.started_at),
                "finished": _iso(last.finished_at),
                "outcome": last.outcome,
                "cycles": last.counts.cycles,
                "matched": last.counts.matched,
                "written": last.counts.written,
                "cleared": last.counts.cleared,
                "failed": last.counts.failed,
            },
            "next_renewal": _iso(renewals[0].expires_at) if renewals else None,
            "outage": outage_summary(store.get_meta(OUTAGE_META)),
            "recent_writes": [
                {
                    "at": _iso(e.at),
                    "user": e.user or e.user_id,
                    "side": e.side,
                    "action": e.action,
                    "from": e.from_value,
                    "to": e.to_value,
                    "outcome": e.outcome,
                    "reason": e.reason,
                }
                for e in store.audit_tail(10)
            ],
        }


def _notifications_of_last_run(store: StateStore, last: Any) -> dict[str, Any] | None:
    """The notification figures, if the last run recorded them: figures older than the last
    run's start belong to an earlier watch (another sandbox's, say) and are not shown."""
    from presencectl.sync.notify import notifications_summary

    figures = notifications_summary(store)
    if figures is None or last is None or last.started_at is None:
        return figures
    try:
        updated = datetime.fromisoformat(str(figures.get("updated"))).timestamp()
    except ValueError:
        return None
    return figures if updated >= int(last.started_at) else None


def outage_summary(meta: str | None, now: datetime | None = None) -> str | None:
    """What ``status`` says about a watch waiting for a service ("Graph unreachable since …,
    retrying in 12 s"), the seconds counted at ``now`` (read time), not when it was stored."""
    import json

    if not meta:
        return None
    try:
        stored = json.loads(meta)
    except ValueError:
        return None
    return outage_text(stored, now or utc_now()) if isinstance(stored, dict) else None


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


__all__ = [
    "check_sync_prerequisites",
    "engine_for",
    "match_report",
    "outage_summary",
    "state_summary",
]
