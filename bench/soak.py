"""Fault soak: ``presencectl sync --watch`` against a hostile sandbox, then the books are checked.

    python bench/soak.py --minutes 10 [--users 20] [--seed 1] [--json FILE]

The sandbox runs in-process (``running_sandbox``) with 5 % 5xx, 1 % dropped connections
(seeded), a low throttle limit, access tokens that live ``token_lifetime`` seconds (and a clock
pushed forward so they expire every ~2 sandbox minutes), and a Connect hub that drops every feed
connection now and then. A chaos thread makes random genuine changes on both sides (each
person's own Teams client and own Connect app) while the watch runs in the main thread through
the real CLI (``presencectl -o json sync --watch``). The chaos lasts three quarters of
``seconds``; then the run is quiet until the sync has settled: no write of ours has reached the
sandbox for the echo window plus five polls (the echo window, ``echo_window_s`` in the profile,
default 60 s, is how long the sync may rightly take a side showing the value one of our writes
replaced for that write not landed yet: presencectl/sync/plan.py). The soak then stops the watch
with SIGINT, as an admin would; a sync still writing after ``settle_cap`` seconds of quiet has
not settled, a failure. Then:

- the conditions really happened: faults injected, 429s sent (the throttle, 8 presence requests
  per 3 s by default, is below what the watch sends while changes come), feed connections dropped;
- no unhandled exception: exit 0/5, no traceback, no "unexpected" error;
- ``in_retry_after_window`` is 0: no request was sent after a 429 had been delivered and before
  its Retry-After ended (see presencectl/sandbox/throttle.py);
- both sides show what the mapping of the genuine states says, for every matched user (compared
  by aggregation rank: which of two equal-rank sessions a service shows is its business);
- the audit log accounts for every write, per (side, user): each write the audit calls ok
  reached the sandbox, and each write the sandbox took has its audit row;
- ``disable --yes`` then leaves no session of ours anywhere.

``run_soak`` is also what ``tests/test_soak.py`` runs (a short version in CI, a long one with
``pytest -m soak``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ADMIN = "admin@contoso.example"
SYNC_PASSWORD = "S0ak-Sync-Passw0rd!"
TEAMS_CHOICES = [
    ("Available", "Available"), ("Busy", "Busy"), ("Busy", "InACall"),
    ("Busy", "InAConferenceCall"), ("DoNotDisturb", "Presenting"), ("Away", "Away"),
    ("BeRightBack", "BeRightBack"), ("Offline", "OffWork"),
]  # fmt: skip
CONNECT_CHOICES = [
    "available", "agent_available", "onphone", "agent_onphone", "meeting", "away", "busy",
    "dnd", "on_break", "offline",
]  # fmt: skip


@dataclass
class SoakReport:
    seconds: float
    users: int
    matched: int = 0
    exit_code: int = -1
    genuine_changes: int = 0
    hub_disconnects: int = 0
    clock_jumps_s: float = 0.0
    quiet_s: float = 0.0  # from the last genuine change to the stop (the sync settled), seconds
    settled: bool = False  # no write of ours for the echo window + 5 polls before the stop
    requests: int = 0
    throttled_429: int = 0
    faults_injected: int = 0
    in_retry_after_window: int = 0
    faults_5xx_and_drops: dict[str, float] = field(default_factory=dict)
    sandbox_writes: int = 0
    audit_rows: int = 0
    audit_ok: int = 0
    audit_vs_sandbox: list[str] = field(default_factory=list)  # (side, user) pairs that differ
    cycles: int = 0
    mismatches: list[str] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)  # one side's own state hidden by our session
    sessions_left_after_disable: int = -1
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The hostile conditions happened (5xx/drops, 429s, feed drops, changes), and were
        handled."""
        return (
            self.faults_injected > 0
            and self.throttled_429 > 0
            and self.hub_disconnects > 0
            and self.genuine_changes > 0
            and self.exit_code in (0, 5)
            and not self.errors
            and self.in_retry_after_window == 0
            and not self.mismatches
            and self.audit_ok <= self.sandbox_writes
            and not self.audit_vs_sandbox
            and self.sessions_left_after_disable == 0
            and self.settled
        )


def _cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    from presencectl.cli.app import run

    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(["--profile", "sandbox", *args])
    finally:
        sys.stdin = old
    return code, out.getvalue(), err.getvalue()


def _must(code_out_err: tuple[int, str, str], what: str) -> None:
    code, out, err = code_out_err
    if code != 0:
        raise RuntimeError(f"{what}: exit {code}\n{out}\n{err[-3000:]}")


def prepare(sb: Any) -> list[Any]:
    """An enabled two-way profile; the people the soak changes (matched, one email each)."""
    info = sb.profile_info()
    sb.write_profile("sandbox")
    _must(_cli("setup-azure", "--no-input"), "setup-azure")
    sb.control.post(
        f"/_sandbox/users/{info['sync_user']}/password", json={"password": SYNC_PASSWORD}
    ).raise_for_status()
    _must(_cli("sync-user", "set", "--username", info["sync_user"], "--password-stdin",
               stdin=SYNC_PASSWORD + "\n"), "sync-user set")  # fmt: skip
    _must(_cli("sync-user", "validate"), "sync-user validate")
    _must(_cli("enable"), "enable")
    code, out, err = _cli("-o", "json", "users")
    _must((code, out, err), "users")
    matched = {row["connect_id"] for row in json.loads(out) if row["status"] == "matched"}
    return [
        p for p in sb.world.people
        if p.connect_id in matched and p.email not in (ADMIN, info["sync_user"])
    ]  # fmt: skip


class Chaos(threading.Thread):
    """Random genuine changes, hub drops and clock jumps until ``quiet_at`` (monotonic); then
    the stop of the watch once the sync has settled."""

    def __init__(self, sb: Any, people: list[Any], quiet_at: float, report: SoakReport,
                 rng: random.Random, settle_s: float, watch_ends_at: float) -> None:  # fmt: skip
        super().__init__(name="soak-chaos", daemon=True)
        self.sb, self.people, self.quiet_at, self.report, self.rng = (
            sb,
            people,
            quiet_at,
            report,
            rng,
        )
        self.settle_s, self.watch_ends_at = settle_s, watch_ends_at
        self.stop = threading.Event()

    def _stop_when_settled(self) -> None:
        """After the chaos: SIGINT the watch once no write of ours has reached the sandbox for
        ``settle_s`` — never within 5 s of the watch's own end (``--duration``), so the signal
        cannot outlive the watch's handlers."""
        quiet_from = time.monotonic()
        writes, since = self.sb.world.stats.writes, quiet_from
        while not self.stop.is_set():
            now = time.monotonic()
            if self.sb.world.stats.writes != writes:
                writes, since = self.sb.world.stats.writes, now
            elif now - since >= self.settle_s:
                if now < self.watch_ends_at - 5:
                    self.report.settled = True
                    self.report.quiet_s = round(now - quiet_from, 1)
                    os.kill(os.getpid(), signal.SIGINT)
                return
            self.stop.wait(0.2)

    def _disconnect_hub(self) -> None:
        hub = self.sb.world.extra.get("hub")
        loop = getattr(self.sb._server, "_loop", None)
        if hub is None or loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(hub.disconnect(), loop)
        with contextlib.suppress(Exception):
            future.result(5)
            self.report.hub_disconnects += 1

    def run(self) -> None:
        import ssl

        import httpx

        verify = ssl.create_default_context(cafile=self.sb.ca_bundle)
        control = httpx.Client(base_url=self.sb.base_url, verify=verify, timeout=30)
        next_drop = time.monotonic() + 7
        next_jump = time.monotonic() + 5
        try:
            while not self.stop.is_set() and time.monotonic() < self.quiet_at:
                person = self.rng.choice(self.people)
                if self.rng.random() < 0.5:
                    availability, activity = self.rng.choice(TEAMS_CHOICES)
                    control.post("/_sandbox/teams/presence", json={
                        "user": person.email, "availability": availability,
                        "activity": activity, "out_of_office": self.rng.random() < 0.1,
                    }).raise_for_status()  # fmt: skip
                else:
                    control.post("/_sandbox/connect/presence", json={
                        "user": person.connect_email, "status": self.rng.choice(CONNECT_CHOICES),
                    }).raise_for_status()  # fmt: skip
                self.report.genuine_changes += 1
                now = time.monotonic()
                if now >= next_drop:
                    self._disconnect_hub()
                    next_drop = now + self.rng.uniform(5, 12)
                if now >= next_jump:
                    # 40 sandbox seconds every ~4 s: tokens (lifetime 120 s) expire every ~12 s
                    # of real time, Teams sessions need their renewals and Available its refresh.
                    control.post("/_sandbox/clock/advance", json={"seconds": 40})
                    self.report.clock_jumps_s += 40
                    next_jump = now + 4
                self.stop.wait(self.rng.uniform(0.05, 0.4))
            self._stop_when_settled()
        except Exception as exc:  # a chaos failure is a soak failure, reported
            self.report.errors.append(f"chaos: {type(exc).__name__}: {exc}")
        finally:
            control.close()


def audit_vs_sandbox(
    audit: dict[tuple[str, str], tuple[int, int]], sandbox: dict[tuple[str, str], int]
) -> list[str]:
    """Per (side, user id): every write the audit calls ok reached the sandbox (ok <= sandbox),
    and every write the sandbox took has its audit row (sandbox <= rows, ok or not: a write
    whose answer was lost is audited as failed). Totals could balance one user's missing write
    with another's extra one; pairs cannot."""
    problems = []
    for pair in sorted(set(audit) | set(sandbox)):
        rows, ok = audit.get(pair, (0, 0))
        took = sandbox.get(pair, 0)
        if not ok <= took <= rows:
            side, user = pair
            problems.append(f"{side} {user}: audit ok {ok}, sandbox {took}, audit rows {rows}")
    return problems


def _our_teams_session(data: dict[str, Any], session_id: str) -> dict[str, Any] | None:
    return next((s for s in data["sessions"] if s["session_id"] == session_id), None)


def check_convergence(
    sb: Any, people: list[Any], session_id: str, masked_out: list[str] | None = None
) -> list[str]:
    """For each person: what each side shows equals the aggregate of the person's own state and
    the mapping of the other side's genuine state, by aggregation rank.

    Ranks, not our sessions, because some genuine changes are invisible to any client: when a
    person's own state equals (or ranks below) our session on that side, the side shows the
    same thing either way. What the person's colleagues see is what must be right."""
    from presencectl.mapping import UNALTERED, Mapping, TeamsStatus, connect_rank, teams_rank

    mapping = Mapping()
    resource = _our_connect_resource()
    problems: list[str] = []
    masked: list[str] = []
    for person in people:
        teams = sb.control.get("/_sandbox/teams/presence", params={"user": person.email}).json()
        connect = sb.control.get(
            "/_sandbox/connect/presence", params={"user": person.connect_email}
        ).json()
        own_client = person.teams.client
        teams_genuine = TeamsStatus.of(own_client[0], own_client[1], person.teams.out_of_office)
        connect_own = [r["status"] for r in connect["resources"] if r["resource"] != resource]
        connect_genuine = max(connect_own, key=connect_rank) if connect_own else "offline"

        want_teams = mapping.connect_to_teams(connect_genuine)
        want_connect = mapping.teams_to_connect(teams_genuine)
        # Masking: Graph and Connect show only the aggregate, so a person's own state that ranks
        # at or below our session on that side is invisible to any client; the other side's
        # check is then skipped (and counted), since nobody can know that state.
        teams_masked = want_teams is not UNALTERED and teams_rank(want_teams) >= teams_rank(
            teams_genuine
        )
        connect_masked = want_connect is not UNALTERED and connect_rank(
            str(want_connect)
        ) >= connect_rank(connect_genuine)
        if not connect_masked:
            shown_t = TeamsStatus.of(teams["availability"], teams["activity"])
            expected_rank = teams_rank(teams_genuine)
            if want_teams is not UNALTERED:
                expected_rank = max(expected_rank, teams_rank(want_teams))
            if teams_rank(shown_t) != expected_rank:
                problems.append(
                    f"{person.email}: Teams shows {shown_t.key}, expected rank {expected_rank} "
                    f"(own {teams_genuine.key}, Connect {connect_genuine} → {want_teams}, "
                    f"our session {_our_teams_session(teams, session_id)})"
                )
        if not teams_masked:
            expected_c = connect_rank(connect_genuine)
            if want_connect is not UNALTERED:
                expected_c = max(expected_c, connect_rank(str(want_connect)))
            if connect_rank(connect["status"]) != expected_c:
                problems.append(
                    f"{person.email}: Connect shows {connect['status']}, expected rank "
                    f"{expected_c} (own {connect_genuine}, Teams {teams_genuine.key} → "
                    f"{want_connect})"
                )
        if teams_masked or connect_masked:
            masked.append(person.email)
    if masked_out is not None:
        masked_out.extend(masked)
    return problems


def _our_connect_resource() -> str | None:
    """The profile's Connect session resource (made by the first run that used Connect)."""
    from presencectl.config import load_profile

    return load_profile("sandbox").connect_resource_id


def our_sessions(sb: Any, session_id: str) -> int:
    """Sessions of ours left anywhere in the sandbox (``GET /_sandbox/sessions``, the count the
    tests use too)."""
    params = {"session_id": session_id}
    resource = _our_connect_resource()
    if resource:
        params["resource"] = resource
    response = sb.control.get("/_sandbox/sessions", params=params)
    response.raise_for_status()
    return int(response.json()["count"])


def run_soak(
    seconds: float, *, users: int = 20, seed: int = 1, throttle: int = 8,
    throttle_window: float = 3.0, error_rate: float = 0.05, drop_rate: float = 0.01,
    interval: float = 1.0, echo_window_s: int | None = None, settle_cap: float | None = None,
) -> SoakReport:  # fmt: skip
    """Run the soak: ``seconds`` × 3/4 of chaos, then quiet until the sync settles (the module
    docstring), and check the books. ``echo_window_s`` sets the profile's echo window (None: its
    default, 60 s); ``settle_cap``: the longest quiet end (default: three echo windows, five
    polls and 30 s).

    The throttle window is short on purpose: the chaos pushes the sandbox clock 40 s forward
    every 4 s, which empties any window of 30 s; ``throttle`` per ``throttle_window`` (default
    8 per 3 s) is below what the watch sends while changes come, so 429s really happen.
    """
    from presencectl.config import load_profile
    from presencectl.sandbox import running_sandbox
    from presencectl.sandbox.throttle import seed_faults
    from presencectl.sync.state import StateStore

    report = SoakReport(seconds=seconds, users=users)
    rng = random.Random(seed)
    seed_faults(seed)
    with running_sandbox(users=users, seed=seed, throttle=throttle,
                         throttle_window=throttle_window, token_lifetime=120,
                         auto_approve=ADMIN) as sb:  # fmt: skip
        people = prepare(sb)
        if echo_window_s is not None:
            _must(_cli("config", "set", "echo_window_s", str(echo_window_s)), "config set")
        echo = load_profile("sandbox").echo_window_s
        chaos_s = seconds * 0.75
        settle_s = echo + 5 * interval
        # A write made as the chaos ends may be taken for an echo until its window ends, and the
        # write that then follows needs a window of its own: three windows bound it generously.
        settle_cap = settle_cap if settle_cap is not None else 3 * echo + 5 * interval + 30
        report.matched = len(people)
        session_id = load_profile("sandbox").client_id or ""
        faults = {"error_rate": error_rate, "drop_rate": drop_rate}
        sb.control.post("/_sandbox/faults", json=faults).raise_for_status()
        report.faults_5xx_and_drops = faults
        start = time.monotonic()
        duration = chaos_s + settle_cap
        chaos = Chaos(sb, people, start + chaos_s, report, rng, settle_s, start + duration)
        chaos.start()
        try:
            code, out, err = _cli("-o", "json", "sync", "--watch", "--interval", str(interval),
                                  "--duration", str(duration))  # fmt: skip
        except KeyboardInterrupt:  # the settle signal came after the watch had ended by itself
            code, out, err = -1, "", "the watch ended before the soak stopped it"
            report.errors.append(err)
        chaos.stop.set()
        chaos.join(10)
        if not report.settled:
            report.errors.append(
                f"the sync did not settle: writes still came {settle_cap:.0f} s after the chaos"
            )
        report.exit_code = code
        if "Traceback" in err or '"unexpected"' in out or "error: unexpected" in err:
            report.errors.append("unhandled exception: " + err[-2000:])
        report.cycles = sum(1 for line in out.splitlines() if '"cycle"' in line)
        if os.environ.get("SOAK_DEBUG"):
            for line in out.splitlines():
                if '"write"' not in line and '"change"' not in line:
                    print("EVENT", line[:400], file=sys.stderr)
        sb.control.post("/_sandbox/faults", json={"error_rate": 0, "drop_rate": 0})
        report.mismatches = check_convergence(sb, people, session_id, report.masked)
        if report.mismatches and os.environ.get("SOAK_DEBUG"):
            for m in report.mismatches:
                print("MISMATCH", m, file=sys.stderr)
            with StateStore.for_profile("sandbox") as store:
                for e in store.audit_tail(60):
                    print("AUDIT", e, file=sys.stderr)
                wrong = {m.split(":")[0] for m in report.mismatches}
                by_email = {p.email: p for p in people}
                for key, st in store.load_states().items():
                    if any(by_email[w].azure_id in key for w in wrong if w in by_email):
                        print("STATE", st, file=sys.stderr)
            print(err[-6000:], file=sys.stderr)
            code2, out2, _err2 = _cli("-o", "json", "sync")
            print(
                "AFTER ONE-SHOT",
                code2,
                check_convergence(sb, people, session_id),
                out2[-3000:],
                file=sys.stderr,
            )
        stats = sb.world.stats
        report.requests = sum(stats.requests.values())
        report.faults_injected = stats.faults_injected
        report.throttled_429 = stats.throttled
        report.in_retry_after_window = stats.in_retry_after_window
        report.sandbox_writes = stats.writes
        with StateStore.for_profile("sandbox") as store:
            report.audit_rows = store.audit_count()
            report.audit_ok = store._db.execute(
                "SELECT count(*) FROM audit WHERE outcome = 'ok'"
            ).fetchone()[0]
            rows = store._db.execute(
                "SELECT side, user_id, count(*), sum(outcome = 'ok') FROM audit"
                " GROUP BY side, user_id"
            ).fetchall()
        report.audit_vs_sandbox = audit_vs_sandbox(
            {(str(s), str(u)): (int(n), int(ok)) for s, u, n, ok in rows}, dict(stats.writes_by)
        )
        code, out, err = _cli("disable", "--yes")
        if code != 0:
            report.errors.append(f"disable: exit {code}: {err[-1000:]}")
        report.sessions_left_after_disable = our_sessions(sb, session_id)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--echo-window",
        type=int,
        default=None,
        help="the profile's echo_window_s (default: the profile's, 60 s)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="presencectl-soak-"))
    os.environ["PRESENCECTL_CONFIG_DIR"] = str(home / "config")
    os.environ["PRESENCECTL_STATE_DIR"] = str(home / "state")
    os.environ["PRESENCECTL_SECRETS_BACKEND"] = "file"
    report = run_soak(
        args.minutes * 60, users=args.users, seed=args.seed, echo_window_s=args.echo_window
    )
    data = {**asdict(report), "ok": report.ok}
    text = json.dumps(data, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
