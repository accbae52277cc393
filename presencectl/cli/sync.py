"""enable, disable, sync, status, users: running the sync and reporting on it.

Thin: parse → build the engine (``presencectl.sync.engine``) → run → render. No HTTP, no SQL here.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from presencectl.cli.context import AppContext, app_context
from presencectl.cli.events import plain_line
from presencectl.cli.options import (
    NoInputOption,
    OutputFormat,
    OutputOption,
    ProfileOption,
    QuietOption,
    VerboseOption,
)
from presencectl.errors import (
    ConfigError,
    ExitCode,
    PartialSyncError,
    PresencectlError,
    UsageError,
)

DIRECTION_HELP = "both | connect-to-teams | teams-to-connect"
DIRECTIONS = ("both", "connect-to-teams", "teams-to-connect")


def complete_direction(incomplete: str) -> list[str]:
    """Shell completion of --direction."""
    return [d for d in DIRECTIONS if d.startswith(incomplete)]


def _direction(value: str | None, profile: Any) -> Any:
    from presencectl.sync.model import Direction

    text = value or profile.enabled_direction
    if text is None:
        return None
    try:
        return Direction(text.lower())
    except ValueError:
        raise UsageError(
            f"unknown direction '{text}'", hint=f"use one of: {DIRECTION_HELP}"
        ) from None


def enable(
    ctx: typer.Context,
    direction: str = typer.Option(
        "both", "--direction", help=DIRECTION_HELP, autocompletion=complete_direction
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Turn the sync on for one direction or both (checks the prerequisites first).

    Examples: presencectl enable · presencectl enable --direction connect-to-teams
    """
    from presencectl.config import save_profile
    from presencectl.sync.service import check_sync_prerequisites

    app = app_context(ctx)
    profile = app.load_profile()
    chosen = _direction(direction, profile)
    check_sync_prerequisites(profile, chosen)
    previous = profile.enabled_direction
    profile.enabled_direction = chosen.value
    save_profile(profile)
    app.status(
        "Note: enabling the sync with Connect also covers Univerge Blue Engage agent states "
        "(agent_available, agent_busy, agent_onphone); turn off any Engage-only Teams presence "
        "sync first."
    )
    app.status("Next: `presencectl sync` (one-shot) or `presencectl sync --watch`.")
    app.render(
        {"profile": profile.name, "enabled_direction": chosen.value, "previous": previous},
    )


def disable(
    ctx: typer.Context,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Turn the sync off and clear every session presencectl holds on both sides.

    Example: presencectl disable --yes
    """
    from presencectl.config import save_profile
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.model import Direction
    from presencectl.sync.service import engine_for

    app = app_context(ctx)
    # The off switch never depends on the mapping: a bad override must not keep sessions alive.
    profile = app.load_profile(check_mapping=False)
    if not yes and not app.confirm(
        "Disable presence sync? Every presence session presencectl holds in Teams and Connect "
        "will be cleared."
    ):
        raise typer.Abort()
    from presencectl.cli.progress import ProgressDisplay

    progress = ProgressDisplay(app)

    async def go(stop: Any) -> Any:
        import dataclasses

        options = EngineOptions(direction=Direction.BOTH)
        # The off switch never depends on the mapping: disable clears sessions, it maps nothing.
        unmapped = dataclasses.replace(profile, mapping={})
        async with engine_for(unmapped, options, on_event=progress.on_event) as engine:
            return await engine.disable(stop=stop)

    from presencectl.cli.signals import run_stoppable

    try:
        with _instance_lock(profile):
            result = run_stoppable(go, on_first=_stopping_note(app))
    finally:
        progress.close()
    if not result.interrupted:  # interrupted: still enabled, sessions left to clear
        profile.enabled_direction = None
        save_profile(profile)
    data = {
        "teams_cleared": result.teams_cleared,
        "connect_cleared": result.connect_cleared,
        "already_gone": result.already_gone,
        "subscriptions_deleted": result.subscriptions_deleted,
        "failed": result.failed,
        "source": result.source,
        "interrupted": result.interrupted,
    }
    error: PresencectlError | None = None
    if result.failed:
        where = 'in "failures"' if app.json else "listed above"
        error = PartialSyncError(
            f"{result.failed} session(s) could not be cleared",
            hint=f"run `presencectl disable --yes` again; the failures are {where}",
        )
    if result.interrupted:
        error = _interrupted("disable")
    if app.json:
        data["failures"] = result.failures
        if error is not None:
            data["error"] = error.to_dict()
            error.in_document = True
    app.render(data)
    if result.failures and app.output in ("table", "md"):
        app.render(result.failures, columns=["user", "side", "error"], title="Could not be cleared")
    if error is not None:
        raise error


def _interrupted(command: str) -> PresencectlError:
    return PresencectlError(
        "interrupted: the writes in flight were finished and recorded, no new ones started",
        hint=f"run `presencectl {command}` again to finish",
        code="interrupted",
        exit_code=ExitCode.INTERRUPTED,
    )


def _stopping_note(app: AppContext) -> Any:
    def note(signal_name: str) -> None:
        app.status(f"{signal_name}: stopping after the writes in flight (again to abort at once)…")

    return note


def _instance_lock(profile: Any, *, skip: bool = False) -> Any:
    """The profile's one-instance lock (``already_running``, exit 3, if another one holds it)."""
    import contextlib
    import shlex

    from presencectl.sync.lock import profile_lock

    if skip:
        return contextlib.nullcontext()
    return profile_lock(profile.name, "presencectl " + shlex.join(sys.argv[1:]))


def sync(
    ctx: typer.Context,
    watch: bool = typer.Option(False, "--watch", help="Keep syncing until interrupted."),
    interval: str = typer.Option(
        "auto",
        "--interval",
        metavar="SECONDS|auto",
        help="Watch: seconds between Teams polls (at least 0.5), or auto: as often as half "
        "of Graph's presence budget allows, at most once a second.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; write nothing."),
    direction: str | None = typer.Option(
        None,
        "--direction",
        help=f"{DIRECTION_HELP} (default: the enabled direction)",
        autocompletion=complete_direction,
    ),
    max_cycles: int | None = typer.Option(None, "--max-cycles", min=1, help="Watch: stop after N."),
    duration: float | None = typer.Option(None, "--duration", help="Watch: stop after SECONDS."),
    notify_url: str | None = typer.Option(
        None,
        "--notify-url",
        help="Watch: public HTTPS URL Graph sends Teams changes to (profile key notify_url).",
    ),
    listen: str | None = typer.Option(
        None,
        "--listen",
        metavar="HOST:PORT",
        help="Watch: serve /healthz, /readyz, /metrics and the notification receiver here "
        "(with --notify-url the default is 127.0.0.1:8765).",
    ),
    listen_cert: str | None = typer.Option(
        None, "--listen-cert", metavar="PEM", help="Watch: serve the receiver over HTTPS."
    ),
    listen_key: str | None = typer.Option(
        None, "--listen-key", metavar="PEM", help="Watch: the key of --listen-cert."
    ),
    reconcile_interval: float = typer.Option(
        60.0,
        "--reconcile-interval",
        help="Watch: seconds between full Teams polls while notifications are active.",
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Run one sync cycle, or keep syncing with --watch.

    Examples: presencectl sync · presencectl sync --dry-run -o json ·
    presencectl sync --watch --interval 5 ·
    presencectl sync --watch --notify-url https://sync.example.com/presencectl
    """
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.service import check_sync_prerequisites

    app = app_context(ctx)
    seconds = _interval(interval)  # bad input first: before any profile is needed
    profile = app.load_profile()
    chosen = _direction(direction, profile)
    if chosen is None:
        from presencectl.errors import ConfigError

        raise ConfigError(
            f"the sync is not enabled for profile '{profile.name}'",
            hint="run `presencectl enable` (or pass --direction)",
            code="sync_not_enabled",
        )
    if watch and app.output in ("csv", "md"):
        raise UsageError(
            f"sync --watch streams events; -o {app.output} has no stream form",
            hint="use -o json (one JSON object per line) or -o table (plain lines when piped)",
        )
    check_sync_prerequisites(profile, chosen)
    options = EngineOptions(
        direction=chosen,
        dry_run=dry_run,
        interval=seconds if seconds is not None else AUTO_START_INTERVAL_S,
        auto_interval=seconds is None,
    )
    probes: Any = None
    if watch:
        from presencectl.sync.notify import notify_options_for
        from presencectl.sync.receiver import DEFAULT_LISTEN

        options.notify = notify_options_for(
            profile,
            notify_url,
            listen or DEFAULT_LISTEN,
            listen_cert,
            listen_key,
            reconcile_interval,
        )
        probes = _probes_for(profile, options, listen, listen_cert, listen_key)
    elif listen is not None:
        raise UsageError("--listen goes with --watch", hint="presencectl sync --watch --listen …")
    with _instance_lock(profile, skip=dry_run):  # a dry run writes nothing: no lock needed
        if watch:
            result = _watch(app, profile, options, max_cycles, duration, probes)
        else:
            result = _once(app, profile, options)
    if result.interrupted and not watch:  # a watch is meant to be stopped: see _watch_exit
        error = _interrupted("sync")
        error.in_document = app.json
        raise error
    if result.failed:
        error = _partial(result)
        error.in_document = app.json and not watch
        raise error


AUTO_START_INTERVAL_S = 5.0  # --interval auto: the period a notification fallback polls at
MIN_INTERVAL_S = 0.5


def _interval(text: str) -> float | None:
    """``--interval``: seconds (at least 0.5), or None for ``auto``."""
    if text.strip().lower() == "auto":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= MIN_INTERVAL_S or seconds == float("inf"):
        raise UsageError(
            f"--interval {text!r}: not a number of seconds >= {MIN_INTERVAL_S:g} or auto",
            hint="e.g. --interval 5, or --interval auto (as often as Graph's budget allows)",
        )
    return seconds


def _probes_for(
    profile: Any, options: Any, listen: str | None, cert: str | None, key: str | None
) -> Any:
    """Health, readiness and metrics on ``--listen`` (sync/probes.py): in the notification
    receiver's app when there is one, else in a receiver of their own; None without --listen."""
    if listen is None:
        return None
    from presencectl.sync.probes import WatchProbes
    from presencectl.sync.receiver import parse_listen

    try:
        parse_listen(listen)
    except ValueError as exc:
        raise UsageError(str(exc), hint="e.g. --listen 0.0.0.0:8080") from exc
    if bool(cert) != bool(key):
        raise UsageError("--listen-cert and --listen-key go together", hint="pass both, or neither")
    probes = WatchProbes(profile.name)
    if options.notify is not None:
        options.notify.routes = probes.routes()
        probes.server = None
    else:
        from presencectl.sync.receiver import NotificationReceiver

        probes.server = NotificationReceiver(
            listen, "", None, certfile=cert, keyfile=key, routes=probes.routes()
        )
    return probes


def _partial(result: Any) -> PartialSyncError:
    users = sorted({f["user"] for f in result.failures})
    named = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
    failing = f" (failing: {named})" if named else ""
    return PartialSyncError(
        f"{result.failed} user(s) failed; the rest synced{failing}",
        hint="see the failures above; run again, or with -v for details",
    )


def _once(app: AppContext, profile: Any, options: Any) -> Any:
    from presencectl.cli.progress import ProgressDisplay
    from presencectl.sync.service import engine_for

    progress = ProgressDisplay(app)  # stderr, on a terminal, unless -q

    async def go(stop: Any) -> Any:
        async with engine_for(profile, options, on_event=progress.on_event) as engine:
            return await engine.run_once(stop=stop)

    from presencectl.cli.signals import run_stoppable

    try:
        result = run_stoppable(go, on_first=_stopping_note(app))
    finally:
        progress.close()
    if app.json:
        document = {
            **result.summary(),
            "actions": [a.as_row() for a in result.actions],
            "failures": result.failures,
        }
        if result.failed:  # one document: the exit-5 error rides along (see errors.in_document)
            document["error"] = _partial(result).to_dict()
        if result.interrupted:  # exit 130 wins over 5
            document["error"] = _interrupted("sync").to_dict()
        app.render(document)
        return result
    if options.dry_run:
        rows = [a.as_row() for a in result.actions]
        if rows:
            app.render(rows, columns=["user", "side", "from", "to", "reason"], title="Plan")
        else:
            app.status("Nothing to do: both sides already agree.")
        return result
    if app.output == "csv":  # one table per stream: one row per write (failures included)
        app.render(
            [a.as_row() for a in result.actions],
            columns=["user", "side", "kind", "from", "to", "outcome", "reason", "error"],
        )
        return result
    summary = result.summary()
    if app.output == "table":
        # Two narrow tables instead of one of 16 columns: each fits 100 columns unwrapped.
        app.render(summary, columns=SUMMARY_COUNTS, title="Sync")
        app.render(summary, columns=SUMMARY_RUN)
    else:
        app.render(summary, title="Sync")
    rows = [a.as_row() for a in result.actions]
    # A clear that found no session of ours changed nothing (adoption's first clears, a session
    # that expired): one line says how many, instead of a row each.
    gone = [r for r in rows if r["kind"] == "clear" and r["outcome"] == "gone"]
    written = [r for r in rows if r not in gone]
    if written:  # who was written, not only how many
        app.render(
            written,
            columns=["user", "side", "kind", "from", "to", "outcome", "reason"],
            title="Writes",
        )
    if result.adopted:
        app.status(
            f"adopted {result.adopted} pair(s) met with no state (a first sync, or a new state "
            "directory): any session of ours was cleared before reading, so an old session is "
            "never taken for the user's own state"
        )
    if gone:
        app.status(
            f"{len(gone)} clear(s) found no session of ours to remove (nothing changed; "
            "`sync -o json` lists them)"
        )
    if result.failures:
        app.render(result.failures, title="Failures")
    return result


SUMMARY_COUNTS = [
    "direction", "matched", "unmatched", "conflicts", "read", "written", "cleared", "skipped",
    "failed",
]  # fmt: skip
SUMMARY_RUN = [
    "cycles", "adopted", "throttled", "throttle_wait_s", "duration_s", "dry_run", "interrupted",
]  # fmt: skip


def _watch(
    app: AppContext,
    profile: Any,
    options: Any,
    max_cycles: int | None,
    duration: float | None,
    probes: Any = None,
) -> Any:
    from presencectl import output
    from presencectl.cli.pipe import ClosedPipeGuard
    from presencectl.cli.signals import run_stoppable
    from presencectl.sync.service import engine_for

    pipe = ClosedPipeGuard()  # the reader of stdout may leave (`| head -1`): stop quietly
    live: Any = None
    if app.json:

        def on_event(event: Any) -> None:
            pipe.write(output.emit_event, event.to_dict())
    elif app.output == "table" and sys.stdout.isatty():
        from presencectl.cli.live import LiveView

        live = LiveView(profile.name, options)
        on_event = live.on_event
    else:

        def write_line(line: str) -> None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        def on_event(event: Any) -> None:
            line = plain_line(event)
            if line:
                pipe.write(write_line, line)

    shown = on_event

    def observed(event: Any) -> None:
        probes.on_event(event)
        shown(event)

    async def go(stop: Any) -> Any:
        pipe.stop = stop
        server = getattr(probes, "server", None)
        if server is not None:
            try:
                await server.start()
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {server.host}:{server.port}: {exc.strerror}",
                    hint="choose another --listen address or port",
                    code="listen_unavailable",
                ) from exc
        try:
            async with engine_for(
                profile, options, on_event=observed if probes is not None else shown
            ) as engine:
                return await engine.watch(stop=stop, max_cycles=max_cycles, duration=duration)
        finally:
            if server is not None:
                await server.close()

    if live is not None:
        with live:
            result = run_stoppable(go, on_first=_stopping_note(app))
    else:
        result = run_stoppable(go, on_first=_stopping_note(app))
    if pipe.closed:
        raise typer.Exit(0)  # like `yes | head`: the reader left, nothing went wrong
    if not app.json:
        app.status(
            f"Stopped after {result.cycles} cycle(s): {result.written} written, "
            f"{result.cleared} cleared, {result.failed} failed."
        )
        if result.failures:  # users whose latest write still fails (healed ones are not)
            app.render(result.failures, title="Still failing")
    return result


_STATUS_SECTIONS = ("status", "health", "notifications", "recent")


def _starting(values: tuple[str, ...], incomplete: str) -> list[str]:
    return [value for value in values if value.startswith(incomplete)]


def status(
    ctx: typer.Context,
    section: str | None = typer.Option(
        None,
        "--section",
        help="Only this table: status | health | notifications | recent (writes). -o csv "
        "prints one table: "
        "status unless --section says otherwise.",
        autocompletion=lambda incomplete: _starting(_STATUS_SECTIONS, incomplete),
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Show what is configured and enabled, the last sync, sessions held and health.

    Health: the last cycle's age, failing users, throttling, the Connect feed, subscriptions and
    the next write that keeps a session alive — from the state, no network.

    Examples: presencectl status -o json · presencectl status -o csv --section health
    """
    from presencectl.sync import health
    from presencectl.sync.service import state_summary

    app = app_context(ctx)
    if section is not None and section not in _STATUS_SECTIONS:
        raise UsageError(
            f"unknown section '{section}'", hint="use one of: " + ", ".join(_STATUS_SECTIONS)
        )
    # status must work whatever the mapping says: a bad override is shown, not fatal.
    profile = app.load_profile(check_mapping=False)
    from presencectl.mapping import override_problem_text

    mapping_error = override_problem_text(profile.mapping)
    summary = state_summary(profile.name)
    report = _health(profile.name)
    data: dict[str, Any] = {
        "profile": profile.name,
        "tenant": profile.tenant_id,
        "app_client_id": profile.client_id,
        "consent": profile.verified.get("admin_consent") or profile.verified.get("app_permissions"),
        "sync_user": profile.sync_username,
        "sync_user_validated": profile.verified.get("sync_user"),
        "enabled_direction": profile.enabled_direction or "disabled",
        **summary,
    }
    if mapping_error:
        data["mapping_error"] = mapping_error
    if report is not None:
        # Honest: the next write that keeps a session alive (an Available refresh comes every
        # 4 minutes), not the expiry an hour away.
        data["next_session_expiry"] = data.get("next_renewal")
        upcoming = report.get("next_session_write")
        data["next_renewal"] = upcoming["at"] if upcoming else None
        data["health"] = report
    if app.json:
        app.render(data if section is None else _json_section(data, section))
        return
    recent = data.pop("recent_writes", [])
    teams_notifications = data.pop("teams_notifications", None)
    from presencectl.sync import pacing

    budget = data.pop("connect_budget", None)
    chosen = data.pop("poll_interval", None)
    if data.get("exists"):
        data["connect_budget"] = pacing.budget_line(budget) or "not recorded yet"
        if chosen:
            data["teams_polled"] = pacing.interval_line(chosen)
    data.pop("health", None)
    last = data.pop("last_run", None)
    if last:
        data["last_sync"] = (
            f"{last['finished'] or last['started']} {last['mode']} {last['outcome'] or 'running'}: "
            f"{last['matched']} matched, {last['written']} written, {last['cleared']} cleared, "
            f"{last['failed']} failed"
        )
    else:
        data["last_sync"] = "never"
    tables: list[tuple[str, list[dict[str, Any]], list[str]]] = [
        (
            "status",
            [{"setting": k, "value": v} for k, v in data.items()],
            ["setting", "value"],
        ),
    ]
    if report is not None:
        tables.append(
            (
                "health",
                [{"check": k, "value": v} for k, v in health.health_lines(report)],
                ["check", "value"],
            )
        )
    if teams_notifications:
        members = teams_notifications.pop("sync_users", None) or []
        rows = [{"setting": k, "value": v} for k, v in teams_notifications.items()]
        rows += [  # one line per member of the pool: who covers how many, who failed and why
            {
                "setting": f"sync user {m['username']}",
                "value": f"{m['state']}, {m['people']:,} people"
                + (f": {m['reason']}" if m.get("reason") else ""),
            }
            for m in members
        ]
        tables.append(("notifications", rows, ["setting", "value"]))
    if recent:
        tables.append(("recent", recent, list(recent[0])))
    if section is None and app.output == "csv":
        section = "status"  # CSV: one table per stream; --section picks another
    titles = {
        "status": "Status",
        "health": "Health",
        "notifications": "Teams notifications",
        "recent": "Recent writes",
    }
    for name, rows, columns in tables:
        if section is None or name == section:
            app.render(rows, columns=columns, title=titles[name])


def _health(profile_name: str) -> dict[str, Any] | None:
    from presencectl.sync import health
    from presencectl.sync.state import StateStore, database_path

    path = database_path(profile_name)
    if not path.exists():
        return None
    with StateStore(path) as store:
        return health.health_report(store)


def _json_section(data: dict[str, Any], section: str) -> Any:
    if section == "health":
        return data.get("health") or {}
    if section == "recent":
        return data.get("recent_writes") or []
    if section == "notifications":
        return data.get("teams_notifications") or {}
    return {
        k: v for k, v in data.items() if k not in ("health", "recent_writes", "teams_notifications")
    }


def users(
    ctx: typer.Context,
    unmatched: bool = typer.Option(False, "--unmatched", help="Only users that are not synced."),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Show how users are matched by email across Teams and Connect.

    Examples: presencectl users · presencectl users --unmatched -o csv
    """
    from presencectl.sync.service import match_report

    app = app_context(ctx)
    profile = app.load_profile()
    import asyncio

    rows = asyncio.run(match_report(profile))
    sync_user = (profile.sync_username or "").lower()
    for row in rows:
        if sync_user and row["email"].lower() == sync_user and row["status"] != "matched":
            # The dedicated sync user is an Azure account by design, not a person to sync.
            row["status"] = "sync_user"
            row["detail"] = "the dedicated sync user (signs in for presence reads; not synced)"
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    if unmatched:
        rows = [r for r in rows if r["status"] not in ("matched", "sync_user")]
    app.render(rows, columns=["email", "status", "azure_id", "connect_id", "detail"])
    app.status(
        f"{len(rows)} shown: "
        + ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in sorted(counts.items()))
    )


def register(app: typer.Typer) -> None:
    for fn, name in (
        (enable, "enable"),
        (disable, "disable"),
        (sync, "sync"),
        (status, "status"),
        (users, "users"),
    ):
        app.command(name)(fn)
