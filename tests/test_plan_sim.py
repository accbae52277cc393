"""The planner against a simulated world: both sides aggregate the user's own state with ours.

Scenarios of the echo rule (sync/plan.py), every seed row both ways end to end, upkeep,
one-way directions, and hypothesis properties: no loop, convergence, no phantom session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presencectl.mapping import (
    CONNECT_TO_TEAMS_ROWS,
    TEAMS_TO_CONNECT_ROWS,
    UNALTERED,
    ConnectStatus,
    Mapping,
    TeamsStatus,
    connect_rank,
    teams_rank,
)
from presencectl.sync.model import (
    Action,
    ActionKind,
    ActionPurpose,
    Direction,
    Observation,
    PairState,
    Side,
)
from presencectl.sync.plan import plan

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
KEY = "aad-1:cn-1"
T = TeamsStatus.parse


@dataclass
class World:
    """One person on both sides. Teams: a preferred presence beats sessions, otherwise the higher
    availability wins (ties: most recent). Connect: mapping.py's tiers (ties: most recent)."""

    teams_user: TeamsStatus = field(default_factory=lambda: T("Available/Available"))
    teams_preferred: bool = False
    connect_user: str = "available"
    direction: Direction = Direction.BOTH
    mapping: Mapping = field(default_factory=Mapping)
    lag: bool = False  # writes land only after the next read
    now: datetime = T0
    teams_user_at: datetime = T0
    connect_user_at: datetime = T0
    teams_session: tuple[TeamsStatus, datetime, datetime] | None = None  # value, set_at, expires
    connect_session: tuple[str, datetime] | None = None
    state: PairState = field(default_factory=lambda: PairState(KEY))
    in_flight: list[Action] = field(default_factory=list)
    fast_path: bool = True  # the planner's steady-state fast path
    log: list[list[Action]] = field(default_factory=list)

    def set_teams(self, text: str, *, preferred: bool = False, oof: bool = False) -> None:
        self.teams_user, self.teams_preferred = T(text, oof), preferred
        self.teams_user_at = self.now

    def set_connect(self, value: str) -> None:
        self.connect_user, self.connect_user_at = value, self.now

    def teams_shows(self) -> TeamsStatus:
        session = self.teams_session
        if session is not None and session[2] <= self.now:
            session = self.teams_session = None
        if session is None or self.teams_preferred:
            return self.teams_user
        ours, ours_at, _ = session
        mine, theirs = teams_rank(ours), teams_rank(self.teams_user)
        if mine > theirs or (mine == theirs and ours_at >= self.teams_user_at):
            return TeamsStatus(ours.availability, ours.activity, self.teams_user.out_of_office)
        return self.teams_user

    def connect_shows(self) -> str:
        if self.connect_session is None:
            return self.connect_user
        ours, ours_at = self.connect_session
        mine, theirs = connect_rank(ours), connect_rank(self.connect_user)
        if mine > theirs or (mine == theirs and ours_at >= self.connect_user_at):
            return ours
        return self.connect_user

    def _land(self, actions: list[Action]) -> None:
        for a in actions:
            if a.side is Side.TEAMS:
                if a.kind is ActionKind.CLEAR:
                    self.teams_session = None
                else:
                    assert isinstance(a.value, TeamsStatus) and a.expiration is not None
                    assert a.value in _SET_PRESENCE, f"setPresence rejects {a.value}"
                    self.teams_session = (a.value, self.now, self.now + a.expiration)
            elif a.kind is ActionKind.CLEAR:
                self.connect_session = None
            else:
                assert isinstance(a.value, str)
                self.connect_session = (a.value, self.now)

    def cycle(self, step: timedelta = timedelta(seconds=5)) -> list[Action]:
        obs = [
            Observation(Side.TEAMS, self.teams_shows(), self.now),
            Observation(Side.CONNECT, self.connect_shows(), self.now),
        ]
        if self.lag:
            self._land(self.in_flight)
        result = plan(
            {KEY: self.state}, {KEY: obs}, self.mapping, self.direction, self.now,
            teams_session_ttl=timedelta(hours=1), renew_margin=timedelta(minutes=5),
            fast_path=self.fast_path,
        )  # fmt: skip
        self.state = result.new_states[KEY]
        if self.lag:
            self.in_flight = list(result.actions)
        else:
            self._land(result.actions)
        self.log.append(result.actions)
        self.now += step
        return result.actions

    def run(self, cycles: int, step: timedelta = timedelta(seconds=5)) -> list[Action]:
        out: list[Action] = []
        for _ in range(cycles):
            out.extend(self.cycle(step))
        return out


_SET_PRESENCE = {T(p) for p in ("Available/Available", "Busy/InACall", "Busy/InAConferenceCall",
                                "Away/Away", "DoNotDisturb/Presenting")}  # fmt: skip


def _non_renewal(actions: list[Action]) -> list[Action]:
    return [a for a in actions if a.purpose is not ActionPurpose.RENEW]


def _writes(actions: list[Action], side: Side) -> list[Action]:
    return [a for a in actions if a.side is side]


# --------------------------------------------------------------------------------------------
# The two scenarios the echo rule (docs/architecture.md) and issue 5 name
# --------------------------------------------------------------------------------------------


def test_agent_call_goes_to_teams_and_never_comes_back_as_onphone() -> None:
    w = World()
    w.run(2)
    w.set_connect("agent_onphone")
    first = w.cycle()
    assert [(a.side, a.kind, a.value) for a in first] == [
        (Side.TEAMS, ActionKind.SET, T("Busy/InACall"))
    ]
    assert first[0].reason == "Connect agent_onphone → Busy/InACall"
    assert w.teams_shows() == T("Busy/InACall")
    later = w.run(20)
    assert _writes(later, Side.CONNECT) == []  # Teams' InACall is our echo: no onphone written back
    assert w.connect_shows() == "agent_onphone"
    # The agent call ends into available: Teams follows.
    w.set_connect("agent_available")
    w.run(3)
    assert w.teams_shows() == T("Available/Available")
    assert w.connect_shows() == "agent_available"


def test_agent_call_ending_in_wrap_up_clears_our_teams_session() -> None:
    w = World()
    w.set_teams("Away/Away")
    w.set_connect("agent_onphone")
    w.run(3)
    assert w.teams_shows() == T("Busy/InACall")
    w.set_connect("agent_busy")  # contact-center "Not Ready": unaltered on Teams
    actions = w.cycle()
    assert [(a.side, a.kind) for a in actions] == [(Side.TEAMS, ActionKind.CLEAR)]
    assert actions[0].reason.startswith("unaltered: clear our session")
    assert w.teams_session is None
    assert w.teams_shows() == T("Away/Away")  # the user's own state again
    assert _non_renewal(w.run(20)) == []


def test_teams_call_goes_to_connect_and_connect_follows_when_it_ends() -> None:
    w = World()
    w.run(2)
    w.set_teams("Busy/InACall")
    actions = w.cycle()
    assert [(a.side, a.kind, a.value) for a in actions] == [
        (Side.CONNECT, ActionKind.SET, "onphone")
    ]
    assert actions[0].reason == "Teams Busy/InACall → onphone"
    assert _non_renewal(w.run(10)) == []
    assert w.connect_shows() == "onphone"
    w.set_teams("Available/Available")
    w.run(3)
    assert w.connect_shows() == "available"
    w.set_teams("Away/Away")  # idle after the call: unaltered → our Connect session goes
    w.run(3)
    assert w.connect_session is None
    assert w.connect_shows() == "available"  # the Connect user's own state
    # ...which, once the echo window of our clear has passed (the user's own state equals our old
    # session's value, so it cannot be told apart sooner), mirrors to Teams like any genuine state.
    w.run(13)
    assert w.teams_shows() == T("Available/Available")
    assert _non_renewal(w.run(20)) == []


def test_dnd_over_our_session_then_agent_call_ends_leaves_no_phantom() -> None:
    """The case that breaks a consume-once echo rule: a stronger user state hides our session,
    then uncovers it; both calls end and nothing of ours may stay behind."""
    w = World()
    w.set_connect("agent_onphone")
    w.run(3)
    w.set_teams("DoNotDisturb/DoNotDisturb")
    w.run(3)
    w.set_teams("Available/Available")  # DND ends: Teams shows our InACall again
    w.run(3)
    assert w.connect_shows() == "agent_onphone"
    w.set_connect("offline")
    w.set_teams("Away/Away")
    w.run(10)
    assert w.teams_session is None and w.connect_session is None
    assert (w.teams_shows(), w.connect_shows()) == (T("Away/Away"), "offline")


def test_a_state_of_theirs_uncovered_by_our_write_is_mirrored_once_then_settles() -> None:
    """The crash runs' two-writes case (docs/reliability.md), which a watch never killed meets
    too. Our Connect ``onphone`` (they were in a Teams call) hides their own Connect ``meeting``.
    The call ends: we lower our session to ``available`` and their ``meeting`` shows. It is their
    real state on Connect and nothing we may write can lower it (ours outranks nothing there), so
    mirroring it to Teams is the one outcome where both sides agree: not a bug. It is taken once:
    two Connect writes (lowered, then cleared), one Teams write, then nothing."""
    w = World()
    w.set_teams("Busy/InACall")
    w.run(3)
    w.set_connect("meeting")
    w.run(3)
    assert w.connect_shows() == "onphone"  # hidden under ours
    w.set_teams("Available/Available")
    writes = _non_renewal(w.run(20))
    assert [(a.side, a.value) for a in writes] == [
        (Side.CONNECT, "available"), (Side.TEAMS, T("Busy/InACall")), (Side.CONNECT, None)
    ]  # fmt: skip
    assert (w.connect_shows(), w.teams_shows()) == ("meeting", T("Busy/InACall"))
    assert _non_renewal(w.run(20)) == []


def test_echo_with_lagging_writes_does_not_loop() -> None:
    w = World(lag=True)
    w.set_connect("agent_onphone")
    w.run(4)
    assert w.teams_shows() == T("Busy/InACall")
    assert _writes(w.run(20), Side.CONNECT) == []
    w.set_connect("away")
    w.run(4)
    assert w.teams_session is None
    assert _non_renewal(w.run(20)) == []


# --------------------------------------------------------------------------------------------
# Every seed row, both ways, end to end
# --------------------------------------------------------------------------------------------

T2C_SEED = [r for r in TEAMS_TO_CONNECT_ROWS if r.origin == "seed"]


@pytest.mark.parametrize("row", T2C_SEED, ids=lambda r: f"{r.source_label}:{r.source}")
def test_teams_to_connect_seed_row(row) -> None:
    w = World(direction=Direction.TEAMS_TO_CONNECT)
    w.set_connect("offline")
    w.set_teams("Busy/InACall")  # start with a session of ours on Connect
    w.run(2)
    assert w.connect_shows() == "onphone"
    source = row.source.replace("*/", "Available/").replace(" + isOutOfOffice", "")
    w.set_teams(source, oof="isOutOfOffice" in row.source)
    w.run(3)
    if row.target == "unaltered":
        assert w.connect_session is None  # unaltered: our session is cleared, never left stale
        assert w.connect_shows() == "offline"
    else:
        assert w.connect_shows() == row.target
    assert _non_renewal(w.run(10)) == []


C2T_SEED = list(CONNECT_TO_TEAMS_ROWS)


@pytest.mark.parametrize("row", C2T_SEED, ids=lambda r: r.source)
def test_connect_to_teams_seed_row(row) -> None:
    w = World(direction=Direction.CONNECT_TO_TEAMS)
    w.set_teams("Away/Away")
    w.set_connect("onphone")
    w.run(2)
    assert w.teams_shows() == T("Busy/InACall")
    w.set_connect(row.source)
    w.run(3)
    if row.target == "unaltered":
        assert w.teams_session is None
        assert w.teams_shows() == T("Away/Away")
    else:
        assert w.teams_shows() == T(row.target)
    assert _non_renewal(w.run(10)) == []


# --------------------------------------------------------------------------------------------
# Upkeep: renewals, fade, re-assert
# --------------------------------------------------------------------------------------------


def test_long_call_stays_in_a_call_through_renewals() -> None:
    w = World()
    w.set_teams("Away/Away")
    w.set_connect("onphone")
    minute = timedelta(minutes=1)
    actions = w.run(180, minute)  # three hours, one-hour sessions
    assert w.teams_shows() == T("Busy/InACall")
    renewals = [a for a in actions if a.purpose is ActionPurpose.RENEW]
    assert 3 <= len(renewals) <= 4
    assert all(a.reason == "renew before expiry" for a in renewals)
    assert len(_non_renewal(actions)) == 1


def test_available_session_is_resent_every_four_minutes() -> None:
    w = World()
    w.set_teams("Away/Away")
    w.set_connect("available")
    actions = w.run(60, timedelta(seconds=30))  # 30 minutes
    refreshes = [a for a in actions if a.purpose is ActionPurpose.RENEW]
    assert 6 <= len(refreshes) <= 8
    assert all(a.reason == "refresh Available before Teams fades it" for a in refreshes)
    assert w.teams_shows() == T("Available/Available")


def test_session_dropped_early_is_reasserted_once() -> None:
    w = World()
    w.set_teams("Away/Away")
    w.set_connect("onphone")
    w.run(20)  # pending writes are long consumed
    w.teams_session = None  # Graph dropped it early
    actions = w.cycle()
    assert [(a.purpose, a.value) for a in actions] == [(ActionPurpose.REASSERT, T("Busy/InACall"))]
    assert "re-assert: Teams shows Away/Away" in actions[0].reason
    assert w.teams_shows() == T("Busy/InACall")


def test_preferred_presence_masking_our_session_costs_one_reassert_not_one_per_cycle() -> None:
    w = World()
    w.set_connect("onphone")
    w.run(20)
    w.set_teams("Away/Away", preferred=True)  # beats every session
    actions = w.run(40)
    assert [a.purpose for a in actions] == [ActionPurpose.REASSERT]
    assert w.connect_session is None  # the user's Away is genuine: unaltered on Connect


# --------------------------------------------------------------------------------------------
# Directions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "written"),
    [(Direction.TEAMS_TO_CONNECT, Side.CONNECT), (Direction.CONNECT_TO_TEAMS, Side.TEAMS)],
)
def test_one_way_writes_only_its_side(direction: Direction, written: Side) -> None:
    w = World(direction=direction)
    actions: list[Action] = []
    steps = [
        ("Busy/InACall", "available"),
        ("Available/Available", "onphone"),
        ("BeRightBack/BeRightBack", "agent_onphone"),
        ("Away/Away", "away"),
    ]
    for teams, connect in steps:
        w.set_teams(teams)
        w.set_connect(connect)
        actions += w.run(3)
    assert actions, "something must have been written"
    assert {a.side for a in actions} == {written}


def test_switching_to_one_way_clears_our_leftover_session_on_the_other_side() -> None:
    w = World()
    w.set_teams("Busy/InACall")
    w.set_connect("offline")
    w.run(2)
    assert w.connect_session is not None
    w.direction = Direction.CONNECT_TO_TEAMS
    actions = w.cycle()
    assert [(a.side, a.kind) for a in actions] == [(Side.CONNECT, ActionKind.CLEAR)]
    assert "leftover" in actions[0].reason


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

TEAMS_VALUES = [
    "Available/Available", "Busy/Busy", "Busy/InACall", "Busy/InAConferenceCall",
    "DoNotDisturb/DoNotDisturb", "DoNotDisturb/Presenting", "BeRightBack/BeRightBack",
    "Away/Away", "Offline/OffWork", "Busy/InAMeeting", "AvailableIdle/Available",
]  # fmt: skip
CONNECT_VALUES = [s.value for s in ConnectStatus]

change = st.one_of(
    st.tuples(st.just("teams"), st.sampled_from(TEAMS_VALUES), st.booleans(), st.booleans()),
    st.tuples(st.just("connect"), st.sampled_from(CONNECT_VALUES), st.just(False), st.just(False)),
    st.tuples(st.just("tick"), st.just(""), st.just(False), st.just(False)),
)


# PLAN_EXAMPLES=20000 for a deeper hunt (about two minutes).
@settings(
    max_examples=int(os.environ.get("PLAN_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    changes=st.lists(change, max_size=25),
    direction=st.sampled_from(list(Direction)),
    lag=st.booleans(),
)
def test_no_loop_converges_and_no_phantom(changes, direction, lag) -> None:
    w = World(direction=direction, lag=lag)
    for kind, value, preferred, oof in changes:
        if kind == "teams":
            w.set_teams(value, preferred=preferred, oof=oof)
        elif kind == "connect":
            w.set_connect(value)
        w.cycle()
    # Quiet: nobody changes anything. A bounded number of rounds settles it, then only renewals.
    quiet = [w.cycle() for _ in range(60)]
    busy_rounds = [i for i, acts in enumerate(quiet) if _non_renewal(acts)]
    # Settled within two echo windows (60 s = 12 cycles each: a clear whose old value equals the
    # user's own state, then a session masked by a preferred presence, are only judged after it)
    # + 3 rounds, with few writes: a loop would write every round to the end.
    assert not busy_rounds or busy_rounds[-1] < 2 * 12 + 3, [
        [a.reason for a in acts] for acts in quiet[:16]
    ]
    assert sum(len(_non_renewal(acts)) for acts in quiet) <= 6
    assert len(busy_rounds) <= 4, [[a.reason for a in acts] for acts in quiet[:8]]
    # No phantom: every session we hold mirrors the other side's real, own state.
    m = w.mapping
    if w.teams_session is not None:
        assert m.connect_to_teams(w.connect_user) == w.teams_session[0]
    if w.connect_session is not None:
        assert m.teams_to_connect(w.teams_user) == w.connect_session[0]
    # Liveness: a side reflects the other's own state unless that one is hidden under ours.
    if direction.writes(Side.CONNECT) and w.teams_shows().pair == w.teams_user.pair:
        target = m.teams_to_connect(w.teams_user)
        if target is not UNALTERED and w.teams_session is None:
            assert connect_rank(w.connect_shows()) >= connect_rank(str(target))
    if direction.writes(Side.TEAMS) and not w.teams_preferred and w.connect_session is None:
        target_t = m.connect_to_teams(w.connect_user)
        if isinstance(target_t, TeamsStatus):
            assert teams_rank(w.teams_shows()) >= teams_rank(target_t)


@pytest.mark.parametrize("lag", [False, True], ids=["instant", "lagging"])
def test_a_change_after_we_cleared_our_session_is_genuine_not_the_clears_echo(lag: bool) -> None:
    """Found by the demo: after we clear our Connect `available` session (the user's agent call
    masked it), the user going back to `available` is their own change, not a stale read of the
    session we cleared — Teams must follow at once, not after the echo window."""
    w = World(lag=lag)
    w.run(2)
    w.set_connect("dnd")
    w.run(3)
    w.set_connect("available")
    w.run(3)
    w.set_connect("agent_onphone")
    w.run(3)
    assert w.teams_shows() == T("Busy/InACall")
    w.set_connect("available")
    w.run(3)  # 15 s: well inside the 60 s echo window
    assert w.teams_shows() == T("Available/Available")
    assert w.teams_session is None or w.teams_session[0] == T("Available/Available")


@pytest.mark.parametrize("lag", [False, True], ids=["instant", "lagging"])
def test_a_teams_change_after_we_cleared_our_teams_session_is_genuine(lag: bool) -> None:
    w = World(lag=lag)
    w.run(2)
    w.set_teams("DoNotDisturb/DoNotDisturb", preferred=True)
    w.run(3)
    w.set_teams("Available/Available")
    w.run(3)
    w.set_connect("onphone")
    w.run(3)
    w.set_connect("available")
    w.run(3)
    w.set_teams("Busy/Busy", preferred=True)
    w.run(3)
    assert w.connect_shows() == "busy"
    w.set_teams("Available/Available")
    w.run(3)
    assert w.connect_shows() == "available"


@settings(
    max_examples=int(os.environ.get("PLAN_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    changes=st.lists(st.tuples(change, st.sampled_from([5, 5, 5, 30, 240, 3300])), max_size=30),
    direction=st.sampled_from(list(Direction)),
    lag=st.booleans(),
)
def test_the_steady_state_fast_path_changes_no_decision(changes, direction, lag) -> None:
    """Two identical worlds, one planned with the fast path and one without: the same actions
    every cycle, through changes, echoes, lagging writes, renewals and Available refreshes
    (steps of 5 s up to 55 min), and a long quiet tail."""
    fast = World(direction=direction, lag=lag)
    full = World(direction=direction, lag=lag, fast_path=False)
    for (kind, value, preferred, oof), seconds in [*changes, *[(("tick", "", 0, 0), 60)] * 70]:
        for w in (fast, full):
            if kind == "teams":
                w.set_teams(value, preferred=preferred, oof=oof)
            elif kind == "connect":
                w.set_connect(value)
        got = fast.cycle(timedelta(seconds=seconds))
        want = full.cycle(timedelta(seconds=seconds))
        assert [a.describe() for a in got] == [a.describe() for a in want]


def test_the_fast_path_is_taken_in_steady_state() -> None:
    """Most pairs, most cycles: the state object comes back as it was (nothing re-planned)."""
    w = World()
    w.set_connect("agent_onphone")
    w.run(3)
    before = w.state
    assert before.settled is not None
    w.cycle()
    assert w.state is before
