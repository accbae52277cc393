"""The sync engine end to end against the sandbox: seed rows, the echo rule, expiry, restarts,
one-way modes, disable, throttling and matching — mostly through the CLI."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sandbox_helpers import our_sessions

from presencectl.mapping import TeamsStatus

pytestmark = pytest.mark.timeout(120)

ADMIN = "admin@contoso.example"
NEW_PASSWORD = "N3w-Sync-Passw0rd!"


class Org:
    """A sandbox with a complete, enabled profile (setup-azure, sync user, consent)."""

    def __init__(self, sb: Any, cli: Any) -> None:
        self.sb = sb
        self.cli = cli
        from presencectl.connect.client import ensure_resource_id

        info = sb.profile_info()
        self.resource = ensure_resource_id(sb.write_profile("sandbox"))  # our Connect session
        run = cli("--profile", "sandbox", "setup-azure", "--no-input")
        assert run.exit_code == 0, run.stderr
        from presencectl.config import load_profile

        self.session_id = load_profile("sandbox").client_id  # our Teams sessionId
        sb.control.post(
            f"/_sandbox/users/{info['sync_user']}/password", json={"password": NEW_PASSWORD}
        ).raise_for_status()
        run = cli(
            "--profile", "sandbox", "sync-user", "set", "--username", info["sync_user"],
            "--password-stdin", input=NEW_PASSWORD + "\n",
        )  # fmt: skip
        assert run.exit_code == 0, run.stderr
        run = cli("--profile", "sandbox", "sync-user", "validate")
        assert run.exit_code == 0, run.stderr
        report = cli("--profile", "sandbox", "-o", "json", "users")
        assert report.exit_code == 0, report.stderr
        matched = {r["email"] for r in report.json() if r["status"] == "matched"}
        self.people = [
            p
            for p in sb.world.people
            if p.email in matched and p.email not in (ADMIN, info["sync_user"])
        ]

    def run(self, *args: str) -> Any:
        return self.cli("--profile", "sandbox", *args)

    def sync(self, *args: str) -> Any:
        result = self.run("-o", "json", "sync", *args)
        assert result.exit_code in (0, 5), result.stdout + result.stderr
        return result

    def step(self) -> Any:
        """One step of a scenario: a sync (test_engine_connect_unknowns makes it two and a wait)."""
        return self.sync()

    def teams(self, email: str, availability: str, activity: str, ooo: bool = False) -> None:
        self.sb.control.post(
            "/_sandbox/teams/presence",
            json={
                "user": email, "availability": availability, "activity": activity,
                "out_of_office": ooo,
            },
        ).raise_for_status()  # fmt: skip

    def connect(self, email: str, status: str) -> None:
        self.sb.control.post(
            "/_sandbox/connect/presence", json={"user": email, "status": status}
        ).raise_for_status()

    def teams_shows(self, email: str) -> dict[str, Any]:
        response = self.sb.control.get("/_sandbox/teams/presence", params={"user": email})
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def teams_pair(self, email: str) -> str:
        data = self.teams_shows(email)
        return f"{data['availability']}/{data['activity']}"

    def connect_shows(self, email: str) -> dict[str, Any]:
        response = self.sb.control.get("/_sandbox/connect/presence", params={"user": email})
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def our_sessions(self) -> int:
        """Sessions of ours anywhere in the sandbox (Teams app sessions, Connect resource)."""
        count: int = our_sessions(self.sb.control, self.session_id, self.resource)["count"]
        return count


@pytest.fixture
def org(cli: Any) -> Iterator[Org]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=30, seed=3, auto_approve=ADMIN) as sb:
        yield Org(sb, cli)


# -- enable / prerequisites ------------------------------------------------------------------------


def test_enable_checks_prerequisites_and_records_direction(org: Org) -> None:
    result = org.run("-o", "json", "enable", "--direction", "connect-to-teams")
    assert result.exit_code == 0, result.stderr
    assert result.json()["enabled_direction"] == "connect-to-teams"
    assert "Engage" in result.stderr
    status = org.run("-o", "json", "status").json()
    assert status["enabled_direction"] == "connect-to-teams"


def test_enable_without_sync_user_names_the_remedy(cli: Any) -> None:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=3, auto_approve=ADMIN) as sb:
        sb.write_profile("sandbox")
        assert cli("--profile", "sandbox", "setup-azure", "--no-input").exit_code == 0
        result = cli("--profile", "sandbox", "-o", "json", "enable")
        assert result.exit_code == 3
        assert result.json()["error"]["code"] == "sync_user_missing"
        ok = cli("--profile", "sandbox", "enable", "--direction", "connect-to-teams")
        assert ok.exit_code == 0


def test_sync_before_enable_is_a_config_error(org: Org) -> None:
    result = org.run("-o", "json", "sync")
    assert result.exit_code == 3
    assert result.json()["error"]["code"] == "sync_not_enabled"


# -- seed rows, both directions -----------------------------------------------------------------

TEAMS_TO_CONNECT = [
    ("Available", "Available", False, "available"),
    ("Busy", "Busy", False, "busy"),
    ("Busy", "InACall", False, "onphone"),
    ("Busy", "InAConferenceCall", False, "meeting"),
    ("Busy", "InACall", True, "onphone"),
    ("DoNotDisturb", "DoNotDisturb", False, "busy"),
    ("DoNotDisturb", "Presenting", False, "meeting"),
    ("DoNotDisturb", "Focusing", False, "busy"),
    ("BeRightBack", "BeRightBack", False, "on_break"),
    ("Away", "Away", False, None),
    ("PresenceUnknown", "PresenceUnknown", False, None),
    ("Offline", "OutOfOffice", False, None),
    ("Offline", "OffWork", False, None),
    ("Offline", "Offline", False, None),
]


def test_every_teams_row_reaches_connect(org: Org) -> None:
    assert org.run("enable", "--direction", "teams-to-connect").exit_code == 0
    people = org.people[: len(TEAMS_TO_CONNECT)]
    assert len(people) == len(TEAMS_TO_CONNECT)
    for person in people:
        org.connect(person.email, "offline")  # the user's own Connect app: the lowest state
    for person, (availability, activity, ooo, _) in zip(people, TEAMS_TO_CONNECT, strict=True):
        org.teams(person.email, availability, activity, ooo)
    result = org.sync()
    assert result.exit_code == 0, result.stdout
    for person, (availability, activity, _, expected) in zip(people, TEAMS_TO_CONNECT, strict=True):
        shown = org.connect_shows(person.email)
        ours = [r["status"] for r in shown["resources"] if r["resource"] == org.resource]
        if expected is None:  # unaltered: no session of ours, Connect shows the user's own
            assert ours == [], (availability, activity, shown)
            assert shown["status"] == "offline"
        else:
            assert ours == [expected], (availability, activity, shown)
            assert shown["status"] == expected
        # one-way: Teams untouched
        assert org.teams_shows(person.email)["sessions"] == []


CONNECT_TO_TEAMS = [
    ("available", "Available/Available"),
    ("agent_available", "Available/Available"),
    ("onphone", "Busy/InACall"),
    ("meeting", "Busy/InACall"),
    ("screen_sharing", "Busy/InACall"),
    ("agent_onphone", "Busy/InACall"),
    ("offline", None),
    ("away", None),
    ("on_break", None),
    ("busy", None),
    ("agent_busy", None),
    ("dnd", None),
    ("out_sick", None),
    ("on_vacation", None),
    ("off_work", None),
]


def _rows_in_chunks(rows: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def test_every_connect_row_reaches_teams(org: Org) -> None:
    assert org.run("enable", "--direction", "connect-to-teams").exit_code == 0
    for chunk in _rows_in_chunks(CONNECT_TO_TEAMS, len(org.people)):
        people = org.people[: len(chunk)]
        for person in people:
            org.teams(person.email, "Away", "Away")
        for person, (status, _) in zip(people, chunk, strict=True):
            org.connect(person.email, status)
        assert org.sync().exit_code == 0
        for person, (status, expected) in zip(people, chunk, strict=True):
            shown = org.teams_shows(person.email)
            if expected is None:
                assert shown["sessions"] == [], (status, shown)
                assert org.teams_pair(person.email) == "Away/Away"
            else:
                sessions = [f"{s['availability']}/{s['activity']}" for s in shown["sessions"]]
                assert sessions == [expected], (status, shown)
                assert org.teams_pair(person.email) == expected
            # one-way: Connect untouched
            resources = org.connect_shows(person.email)["resources"]
            assert all(r["resource"] != org.resource for r in resources)


# -- the echo rule ---------------------------------------------------------------------------------


def agent_call_echo_does_not_overwrite_connect(org: Org) -> None:
    """Shared with test_engine_connect_unknowns (under each plausible Connect behaviour)."""
    assert org.run("enable").exit_code == 0
    alice = org.people[0].email
    org.teams(alice, "Available", "Available")
    org.connect(alice, "agent_available")
    org.step()
    org.connect(alice, "agent_onphone")
    org.step()
    assert org.teams_pair(alice) == "Busy/InACall"
    for _ in range(3):  # Teams showing our InACall must not write onphone over agent_onphone
        org.step()
        assert org.connect_shows(alice)["status"] == "agent_onphone"
        resources = org.connect_shows(alice)["resources"]
        assert all(r["status"] != "onphone" for r in resources)
    org.connect(alice, "agent_available")  # the agent call ends: Teams follows
    org.step()
    org.step()
    assert org.teams_pair(alice) == "Available/Available"
    assert org.connect_shows(alice)["status"] in ("agent_available", "available")


def teams_call_reaches_connect_and_ends(org: Org) -> None:
    """Shared with test_engine_connect_unknowns (under each plausible Connect behaviour)."""
    assert org.run("enable").exit_code == 0
    bob = org.people[1].email
    org.teams(bob, "Available", "Available")
    org.connect(bob, "available")
    org.step()
    org.teams(bob, "Busy", "InACall")
    org.step()
    assert org.connect_shows(bob)["status"] == "onphone"
    org.step()
    assert org.teams_pair(bob) == "Busy/InACall"  # no echo back as a Teams session on top
    org.teams(bob, "Available", "Available")  # the call ends: Connect follows
    org.step()
    org.step()
    assert org.connect_shows(bob)["status"] == "available"
    assert org.teams_pair(bob) == "Available/Available"


def test_agent_call_echo_does_not_overwrite_connect(org: Org) -> None:
    agent_call_echo_does_not_overwrite_connect(org)


def test_teams_call_reaches_connect_and_ends(org: Org) -> None:
    teams_call_reaches_connect_and_ends(org)


def test_dry_run_plans_and_writes_nothing(org: Org) -> None:
    assert org.run("enable").exit_code == 0
    carol = org.people[2].email
    org.teams(carol, "Available", "Available")
    org.connect(carol, "onphone")
    result = org.run("-o", "json", "sync", "--dry-run")
    assert result.exit_code == 0, result.stderr
    planned = [a for a in result.json()["actions"] if a["user"] == carol]
    assert planned and planned[0]["to"] == "Busy/InACall" and planned[0]["outcome"] == "planned"
    assert org.teams_shows(carol)["sessions"] == []
    table = org.run("sync", "--dry-run")
    assert carol in table.stdout and "Busy/InACall" in table.stdout


# -- expiry, restart, disable ----------------------------------------------------------------------


def test_long_call_stays_in_a_call_across_session_expiry(org: Org) -> None:
    assert org.run("enable", "--direction", "connect-to-teams").exit_code == 0
    dave = org.people[3].email
    org.teams(dave, "Available", "Available")
    org.connect(dave, "onphone")
    org.sync()
    assert org.teams_pair(dave) == "Busy/InACall"
    org.sb.control.post("/_sandbox/clock/advance", json={"seconds": 2 * 3600}).raise_for_status()
    assert org.teams_pair(dave) != "Busy/InACall"  # Teams dropped the expired session
    result = _engine_once(org)  # two hours later, by the sandbox's clock
    assert any(a.user == dave and a.to_value == "Busy/InACall" for a in result.actions)
    assert org.teams_pair(dave) == "Busy/InACall"


def test_restart_neither_loses_nor_repeats_writes(org: Org) -> None:
    assert org.run("enable").exit_code == 0
    erin = org.people[4].email
    org.teams(erin, "Available", "Available")
    org.connect(erin, "meeting")
    first = org.sync().json()
    assert [a["to"] for a in first["actions"] if a["user"] == erin] == ["Busy/InACall"]
    writes_before = org.sb.world.stats.writes
    second = org.sync().json()  # a new process: state from the database
    assert [a for a in second["actions"] if a["user"] == erin] == []
    assert org.sb.world.stats.writes == writes_before
    assert org.connect_shows(erin)["status"] == "meeting"


def test_disable_leaves_no_session_anywhere(org: Org) -> None:
    assert org.run("enable").exit_code == 0
    for i, person in enumerate(org.people[:6]):
        org.connect(person.email, "onphone" if i % 2 else "available")
        org.teams(person.email, "Busy" if i % 3 else "Away", "InACall" if i % 3 else "Away")
    org.sync()
    assert org.our_sessions() > 0
    refused = org.run("disable")  # no TTY, no --yes: refuses to prompt
    assert refused.exit_code == 2
    result = org.run("-o", "json", "disable", "--yes")
    assert result.exit_code == 0, result.stderr
    assert result.json()["teams_cleared"] + result.json()["connect_cleared"] > 0
    assert org.our_sessions() == 0
    assert org.run("-o", "json", "status").json()["enabled_direction"] == "disabled"


def test_disable_without_state_sweeps_every_matched_user(org: Org, tmp_path: Any) -> None:
    import shutil

    from presencectl.config import state_dir

    assert org.run("enable").exit_code == 0
    frank = org.people[5].email
    org.connect(frank, "onphone")
    org.teams(frank, "Available", "Available")
    org.sync()
    shutil.rmtree(state_dir())
    assert org.our_sessions() > 0
    result = org.run("-o", "json", "disable", "--yes")
    assert result.exit_code == 0, result.stderr
    assert result.json()["source"] == "directory"
    assert org.our_sessions() == 0


# -- watch -----------------------------------------------------------------------------------------


def test_watch_emits_ndjson_and_stops_after_max_cycles(org: Org) -> None:
    assert org.run("enable").exit_code == 0
    gina = org.people[6].email
    org.teams(gina, "Available", "Available")
    org.connect(gina, "onphone")
    result = org.run("-o", "json", "sync", "--watch", "--interval", "0.5", "--max-cycles", "3")
    assert result.exit_code == 0, result.stderr
    events = [__import__("json").loads(line) for line in result.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "stop" and kinds.count("cycle") == 3
    assert any(e["event"] == "write" and e["user"] == gina for e in events)
    plain = org.run("sync", "--watch", "--interval", "0.5", "--max-cycles", "1")
    assert plain.exit_code == 0 and "watching" in plain.stdout


def _engine_once(org: Org) -> Any:
    return _engine_run(org, once=True)


def _engine_watch(org: Org, **kwargs: Any) -> Any:
    return _engine_run(org, once=False, **kwargs)


def _engine_run(org: Org, *, once: bool, **kwargs: Any) -> Any:
    """The engine in-process with the sandbox's clock (the CLI cannot take a clock)."""
    from presencectl.config import load_profile
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.model import Direction
    from presencectl.sync.service import engine_for

    profile = load_profile("sandbox")
    clock = org.sb.world.clock

    def now() -> datetime:
        return datetime.fromtimestamp(clock.now(), UTC)

    direction = Direction(profile.enabled_direction or "both")
    options = EngineOptions(direction=direction, interval=kwargs.pop("interval", 0.01))

    async def go() -> Any:
        async with engine_for(profile, options, clock=now) as engine:
            if once:
                return await engine.run_once()
            return await engine.watch(**kwargs)

    return asyncio.run(go())


@pytest.mark.slow
def test_no_loop_in_fifty_watch_cycles_of_random_changes(org: Org) -> None:
    from presencectl.mapping import Mapping

    assert org.run("enable").exit_code == 0
    rng = random.Random(7)
    people = org.people[:6]
    teams_choices = [
        ("Available", "Available"), ("Busy", "InACall"), ("Busy", "InAConferenceCall"),
        ("Away", "Away"), ("DoNotDisturb", "Presenting"), ("BeRightBack", "BeRightBack"),
    ]  # fmt: skip
    connect_choices = ["available", "onphone", "agent_onphone", "away", "meeting", "dnd"]

    def after(cycle: int) -> None:
        if cycle < 40 and cycle % 2 == 0:
            person = rng.choice(people)
            if rng.random() < 0.5:
                org.teams(person.email, *rng.choice(teams_choices))
            else:
                org.connect(person.email, rng.choice(connect_choices))
        org.sb.control.post("/_sandbox/clock/advance", json={"seconds": 30})

    start_writes = org.sb.world.stats.writes
    _engine_watch(org, max_cycles=50, after_cycle=after)
    # Quiet now: the last cycles wrote nothing (no loop), and both sides show the mapping of
    # the genuine states.
    settled = org.sb.world.stats.writes
    _engine_watch(org, max_cycles=3)
    assert org.sb.world.stats.writes == settled
    assert settled > start_writes
    mapping = Mapping()
    for person in people:
        teams_own = org.sb.world.person_by_email(person.email).teams
        connect_shown = org.connect_shows(person.email)
        connect_own = [r for r in connect_shown["resources"] if r["resource"] != org.resource]
        teams_sessions = org.teams_shows(person.email)["sessions"]
        if teams_sessions:
            target = mapping.connect_to_teams(connect_own[0]["status"])
            assert isinstance(target, TeamsStatus)
            assert f"{teams_sessions[0]['availability']}/{teams_sessions[0]['activity']}" == (
                target.key
            )
        del teams_own


def test_watch_renews_teams_session_before_expiry(org: Org) -> None:
    assert org.run("enable", "--direction", "connect-to-teams").exit_code == 0
    hank = org.people[7].email
    org.teams(hank, "Available", "Available")
    org.connect(hank, "onphone")
    seen: list[str] = []

    def after(cycle: int) -> None:
        seen.append(org.teams_pair(hank))
        org.sb.control.post("/_sandbox/clock/advance", json={"seconds": 20 * 60})

    _engine_watch(org, max_cycles=10, after_cycle=after)  # 200 sandbox minutes
    assert seen and all(v == "Busy/InACall" for v in seen), seen


# -- matching ---------------------------------------------------------------------------------


def test_case_proxy_unmatched_and_conflicting_emails(org: Org) -> None:
    world = org.sb.world
    case_only = next(p for p in world.people if p.connect_email and p.connect_email != p.email
                     and p.connect_email.lower() == p.email)  # fmt: skip
    proxy_only = next(p for p in world.people if p.connect_email and p.azure_id
                      and p.connect_email.lower() != p.email)  # fmt: skip
    rows = {r["email"]: r for r in org.run("-o", "json", "users").json()}
    assert rows[case_only.email]["status"] == "matched"
    assert rows[proxy_only.connect_email.lower()]["status"] == "matched"
    conflicts = [r for r in rows.values() if r["status"] == "conflict"]
    assert len(conflicts) == 1
    unmatched = org.run("-o", "json", "users", "--unmatched").json()
    assert unmatched and all(r["status"] != "matched" for r in unmatched)
    assert {r["status"] for r in unmatched} == {"unmatched", "conflict"}
    csv = org.run("-o", "csv", "users", "--unmatched")
    assert csv.stdout.splitlines()[0] == "email,status,azure_id,connect_id,detail"

    # Case-differing and proxy-only users sync; the conflicting email never does.
    assert org.run("enable", "--direction", "connect-to-teams").exit_code == 0
    conflicted = world.person_by_email(conflicts[0]["email"])
    for person in (case_only, proxy_only, conflicted):
        org.teams(person.email, "Available", "Available")
        org.connect(person.connect_email or person.email, "onphone")
    org.sync()
    assert org.teams_pair(case_only.email) == "Busy/InACall"
    assert org.teams_pair(proxy_only.email) == "Busy/InACall"
    for azure_id in conflicts[0]["azure_id"].split(", "):
        owner = world.person_by_azure_id(azure_id)
        assert org.teams_shows(owner.email)["sessions"] == []


# -- status, throttling ----------------------------------------------------------------------


def test_status_shows_last_sync_sessions_and_recent_writes(org: Org) -> None:
    before = org.run("-o", "json", "status").json()
    assert before["enabled_direction"] == "disabled" and before["exists"] is False
    assert org.run("enable").exit_code == 0
    ivy = org.people[8].email
    org.teams(ivy, "Available", "Available")
    org.connect(ivy, "onphone")
    org.sync()
    status = org.run("-o", "json", "status").json()
    assert status["last_run"]["outcome"] == "ok" and status["last_run"]["written"] >= 1
    assert status["sessions_teams"] >= 1 and status["next_renewal"]
    assert any(w["user"] == ivy and w["to"] == "Busy/InACall" for w in status["recent_writes"])
    table = org.run("status")
    assert table.exit_code == 0 and "last_sync" in table.stdout and ivy in table.stdout


def test_throttled_sync_completes_and_honours_retry_after(cli: Any) -> None:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(
        users=40, seed=5, auto_approve=ADMIN, throttle=8, throttle_window=1.0
    ) as sb:
        org = Org(sb, cli)
        assert org.run("enable", "--direction", "connect-to-teams").exit_code == 0
        people = org.people[:20]
        for person in people:
            org.teams(person.email, "Available", "Available")
            org.connect(person.email, "onphone")
        result = org.sync()
        assert result.exit_code == 0, result.stdout
        summary = result.json()
        assert summary["written"] == len(people) and summary["failed"] == 0
        assert sb.world.stats.throttled > 0  # the sandbox did push back
        assert summary["throttle_wait_s"] > 0  # and the run says how long it waited
        assert sb.world.stats.in_retry_after_window == 0
        for person in people:
            assert org.teams_pair(person.email) == "Busy/InACall"


def test_a_user_that_fails_is_reported_with_exit_5_and_the_rest_sync(org: Org) -> None:
    """Exit 5 = partial sync. One Connect contact stays in the address book but its presence
    cannot be read (404, like a deactivated user); everyone else syncs, and the run says who
    failed and why."""
    assert org.run("enable", "--direction", "both").exit_code == 0
    broken, other = org.people[0], org.people[1]
    org.connect(other.email, "onphone")
    org.sb.world._by_connect_id.pop(broken.connect_id)  # listed, but its presence is gone
    result = org.sync()
    assert result.exit_code == 5, result.stdout + result.stderr
    data = json.loads(result.stdout)  # one JSON document, the exit-5 error inside it
    assert data["error"]["code"] == "partial_sync"
    assert data["failed"] >= 1
    assert broken.email in json.dumps(data)
    assert org.teams_pair(other.email) == "Busy/InACall"  # the rest synced
    error = result.stderr
    assert "Traceback" not in error


def test_teams_presence_is_read_with_the_app_token(org: Org) -> None:
    """getPresencesByUserId takes application Presence.Read(Write).All: no read needs the sync
    user, so a sync user who cannot sign in right now does not stop teams-to-connect."""
    from presencectl.identity import msal_apps

    assert org.run("enable", "--direction", "teams-to-connect").exit_code == 0
    person = org.people[0]
    org.connect(person.email, "offline")
    org.teams(person.email, "Busy", "InACall")
    sync_user = org.sb.world.sync_user
    sync_user.flags.add("disabled")  # its password sign-in now answers AADSTS50057
    msal_apps.forget_cache("sandbox", msal_apps.SYNC_USER)  # no cached token to fall back on
    result = org.sync()
    assert result.exit_code == 0, result.stdout + result.stderr
    shown = org.connect_shows(person.email)
    assert [r["status"] for r in shown["resources"] if r["resource"] == org.resource] == ["onphone"]
