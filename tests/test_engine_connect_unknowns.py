"""The engine end to end against each plausible Connect: the echo rule, disable and watch hold
whether Connect ranks sessions (``rank``) or shows the last writer (``last_writer``), and when a
write shows only seconds later (``connect_write_delay_s``); plus the legacy resource on disable,
an unreadable feed, and a run that keeps within a Connect rate limit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_engine_sandbox import (
    ADMIN,
    Org,
    _engine_watch,
    agent_call_echo_does_not_overwrite_connect,
    teams_call_reaches_connect_and_ends,
)

pytestmark = pytest.mark.timeout(180)

CONNECTS = [
    pytest.param({"connect_aggregation": "rank"}, id="rank"),
    pytest.param({"connect_aggregation": "last_writer"}, id="last_writer"),
    pytest.param({"connect_write_delay_s": 2.0}, id="rank-write-delay-2s"),
    # issue 22: each unknown at its other plausible value
    pytest.param({"feed_user_field": "user.id", "feed_event_id": True}, id="event-own-id"),
    pytest.param({"feed_event_scope": "session"}, id="session-events"),
    pytest.param({"connect_subscription_max_ttl_s": 120}, id="ttl-capped-2min"),
    pytest.param({"connect_fields_param": "reject"}, id="fields-rejected"),
    pytest.param({"connect_contact_types": "person"}, id="people-typed-person"),
    pytest.param({"hub_affinity_cookie": False}, id="hub-without-affinity"),
]


class UnknownOrg(Org):
    """An Org whose Connect answers each unknown as the fault keys say (aggregation, a write
    shown ``delay`` seconds late, the feed's and the directory's shapes)."""

    delay = 0.0

    def configure(self, faults: dict[str, Any]) -> None:
        self.delay = float(faults.get("connect_write_delay_s", 0.0))
        answer = self.sb.control.post("/_sandbox/faults", json=faults)
        answer.raise_for_status()

    def settle(self) -> None:
        """Wait until Connect shows every write made so far (the delay, and a little)."""
        if self.delay:
            time.sleep(self.delay + 0.5)

    def sync_twice(self) -> list[Any]:
        """A sync, another before its writes can show, then the wait: no churn, no loop."""
        first = self.sync().json()
        second = self.sync().json()
        self.settle()
        return [first, second]

    def step(self) -> Any:
        return self.sync_twice()


@pytest.fixture(params=CONNECTS)
def org(request: pytest.FixtureRequest, cli: Any) -> Iterator[UnknownOrg]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=30, seed=3, auto_approve=ADMIN) as sb:
        built = UnknownOrg(sb, cli)
        built.configure(request.param)
        yield built


def test_agent_call_echo_does_not_overwrite_connect(org: UnknownOrg) -> None:
    agent_call_echo_does_not_overwrite_connect(org)


def test_teams_call_reaches_connect_and_ends(org: UnknownOrg) -> None:
    teams_call_reaches_connect_and_ends(org)
    # quiet now: nothing more to write on either side
    writes = org.sb.world.stats.writes
    org.sync_twice()
    assert org.sb.world.stats.writes == writes


def test_disable_leaves_no_session_anywhere(org: UnknownOrg) -> None:
    assert org.run("enable").exit_code == 0
    for i, person in enumerate(org.people[:6]):
        org.connect(person.email, "onphone" if i % 2 else "available")
        org.teams(person.email, "Busy" if i % 3 else "Away", "InACall" if i % 3 else "Away")
    org.sync_twice()
    assert org.our_sessions() > 0
    result = org.run("-o", "json", "disable", "--yes")
    assert result.exit_code == 0, result.stderr
    org.settle()
    assert org.our_sessions() == 0


def test_watch_follows_connect_changes_through_the_feed(org: UnknownOrg) -> None:
    assert org.run("enable", "--direction", "connect-to-teams").exit_code == 0
    gina, hank = org.people[6].email, org.people[7].email
    for person in (gina, hank):
        org.teams(person, "Available", "Available")
    org.connect(gina, "onphone")
    seen: list[str] = []

    def after(cycle: int) -> None:
        if cycle == 2:
            org.connect(hank, "meeting")
        if cycle == 4:
            org.connect(gina, "available")
        seen.append(f"{org.teams_pair(gina)} {org.teams_pair(hank)}")
        time.sleep(0.05)

    _engine_watch(org, max_cycles=7, interval=0.2, after_cycle=after)
    assert seen[0].startswith("Busy/InACall")
    assert seen[-1] == "Available/Available Busy/InACall", seen


def test_watch_both_ways_a_late_connect_echo_changes_nothing(org: UnknownOrg) -> None:
    """Teams → Connect in watch mode; Connect shows (and the feed reports) our write only after
    the write delay: that late event is our echo, never a reason to write Teams back."""
    assert org.run("enable").exit_code == 0
    ivy = org.people[8].email
    org.teams(ivy, "Available", "Available")
    org.connect(ivy, "available")
    seen: list[tuple[str, str]] = []

    def after(cycle: int) -> None:
        if cycle == 1:
            org.teams(ivy, "Busy", "InACall")  # a Teams call: Connect should show onphone
        seen.append((org.teams_pair(ivy), org.connect_shows(ivy)["status"]))
        time.sleep(0.05)

    cycles = 8 + int(org.delay / 0.3) * 2  # long enough for the late write to show
    _engine_watch(org, max_cycles=cycles, interval=0.3, after_cycle=after)
    org.settle()
    if org.delay:  # the write was late indeed: Teams in a call while Connect still showed before
        assert ("Busy/InACall", "available") in seen[1:], seen
    assert org.connect_shows(ivy)["status"] == "onphone"
    assert org.teams_pair(ivy) == "Busy/InACall"
    assert org.teams_shows(ivy)["sessions"] == []  # no session of ours echoed back onto Teams
    writes = org.sb.world.stats.writes
    _engine_watch(org, max_cycles=3, interval=0.2)
    assert org.sb.world.stats.writes == writes  # settled: nothing more to write


def test_disable_clears_the_session_held_under_the_old_name(cli: Any) -> None:
    """Versions before the GUID wrote as resource ``presencectl``. This sandbox refuses names
    that are not GUIDs (so it never holds one): disable's extra DELETE must not fail the run."""
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=12, seed=3, auto_approve=ADMIN) as sb:
        org = Org(sb, cli)
        assert org.run("enable").exit_code == 0
        org.connect(org.people[0].email, "available")
        org.teams(org.people[0].email, "Busy", "InACall")  # we hold a Connect session: onphone
        org.sync()
        assert org.our_sessions() == 1
        before = sb.world.stats.requests.get("connect.presence.delete", 0)
        result = org.run("-o", "json", "disable", "--yes")
        assert result.exit_code == 0, result.stderr
        assert result.json()["failed"] == 0
        assert org.our_sessions() == 0
        deletes = sb.world.stats.requests.get("connect.presence.delete", 0) - before
        assert deletes == 2  # ours, and the legacy name (refused: this Connect never held it)


def test_status_counts_unreadable_feed_events_and_says_why_connect_is_polled(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presencectl.connect import feed as feed_module
    from presencectl.connect import wire
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=12, seed=3, auto_approve=ADMIN) as sb:
        org = Org(sb, cli)
        assert org.run("enable", "--direction", "connect-to-teams").exit_code == 0
        person = org.people[0].email
        org.teams(person, "Available", "Available")
        org.connect(person, "available")
        sb.control.post("/_sandbox/faults", json={"feed_user_field": "user.id"})

        def call_starts(cycle: int) -> None:
            if cycle == 1:
                org.connect(person, "onphone")  # an event in a shape we read (user.id)
            time.sleep(0.05)

        _engine_watch(org, max_cycles=4, interval=0.3, after_cycle=call_starts)
        assert org.teams_pair(person) == "Busy/InACall"
        status = org.run("-o", "json", "status").json()
        assert status["connect_feed_unparsed"] == 0 and status["connect_feed_note"] is None

        # Events whose user-id field this client does not know: each one unreadable. Only
        # polling Connect again can carry the change (the first poll read the old state).
        monkeypatch.setattr(wire, "EVENT_USER_ID_FIELDS", ("unifiedUserId",))
        monkeypatch.setattr(feed_module, "DEAF_AFTER_S", 0.0)

        def call_ends(cycle: int) -> None:
            if cycle == 1:
                org.connect(person, "available")
            time.sleep(0.1)

        _engine_watch(org, max_cycles=4, interval=0.3, after_cycle=call_ends)
        assert org.teams_pair(person) == "Available/Available"
        status = org.run("-o", "json", "status").json()
        assert status["connect_feed_unparsed"] >= 1
        assert "polling Connect" in status["connect_feed_note"]


@pytest.mark.slow  # paced to 20 requests a minute: about a minute of real time
def test_a_sync_within_a_connect_rate_limit_is_never_throttled(cli: Any) -> None:
    """Connect limits the client to N requests a minute; a budget of N keeps every request
    inside it (no 429) although the run needs more than N, and the run completes."""
    from presencectl.config import load_profile, save_profile
    from presencectl.sandbox import running_sandbox

    limit = 20
    with running_sandbox(users=30, seed=3, auto_approve=ADMIN) as sb:
        org = Org(sb, cli)
        profile = load_profile("sandbox")
        profile.connect_rate_per_min = limit
        save_profile(profile)
        assert org.run("enable", "--direction", "connect-to-teams").exit_code == 0
        sb.control.post("/_sandbox/faults", json={"connect_throttle_per_min": limit})
        before = sum(n for k, n in sb.world.stats.requests.items() if k.startswith("connect."))
        result = org.sync()
        assert result.exit_code == 0, result.stdout
        made = sum(n for k, n in sb.world.stats.requests.items() if k.startswith("connect."))
        assert made - before > limit  # unpaced, this run would have been throttled
        assert sb.world.stats.throttled == 0
        assert sb.world.stats.in_retry_after_window == 0


def test_session_scoped_events_are_read_as_the_users_aggregate(cli: Any) -> None:
    """Events that carry one session's state (feed_event_scope=session): the user's desk phone
    session is onphone, then their app says away. The aggregate stays onphone, so Teams must
    stay in a call; trusting the event would show Away."""
    from presencectl.sandbox import running_sandbox
    from tests.test_sandbox_connect import PRESENCE, auth

    phone = "7c0e4a52-91d3-4f0b-a6a8-3f6b2d9e1c10"  # another client's session (a GUID)
    with running_sandbox(users=12, seed=3, auto_approve=ADMIN) as sb:
        org = Org(sb, cli)
        sb.control.post("/_sandbox/faults", json={"feed_event_scope": "session"})
        assert org.run("enable", "--direction", "connect-to-teams").exit_code == 0
        person = org.people[2]
        org.teams(person.email, "Available", "Available")
        org.connect(person.email, "available")
        connect_id = person.connect_id
        reads = []

        def after(cycle: int) -> None:
            if cycle == 1:
                answer = sb.control.put(
                    PRESENCE.format(id=connect_id),
                    params={"resource": phone},
                    json={"presence": "onphone"},
                    headers=auth(sb),
                )
                assert answer.status_code == 204
            if cycle == 3:
                reads.append(sb.world.stats.requests.get("connect.presence.get", 0))
                org.connect(person.email, "away")  # the app's session; the phone outranks it
            time.sleep(0.1)

        _engine_watch(org, max_cycles=6, interval=0.3, after_cycle=after)
        assert org.connect_shows(person.email)["status"] == "onphone"
        assert org.teams_pair(person.email) == "Busy/InACall"
        gets = sb.world.stats.requests.get("connect.presence.get", 0)
        assert gets > reads[0]  # the aggregate was read, the event not trusted
