"""The planner's pure API: plan/apply_action/release, settings, and the model helpers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from presencectl.errors import ConfigError
from presencectl.mapping import ConnectStatus, Mapping, TeamsStatus
from presencectl.sync.model import (
    ActionKind,
    ActionPurpose,
    Direction,
    Observation,
    PairState,
    SessionRecord,
    Side,
    decode_value,
    encode_value,
)
from presencectl.sync.plan import PlanSettings, apply_action, plan, release

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
T = TeamsStatus.parse
KEY = "a1:c1"


def _obs(teams: str | None, connect: str | None, at: datetime) -> list[Observation]:
    out = []
    if teams is not None:
        out.append(Observation(Side.TEAMS, T(teams), at))
    if connect is not None:
        out.append(Observation(Side.CONNECT, connect, at))
    return out


def test_literal_echo_example_pure() -> None:
    """Connect agent_onphone → Teams Busy/InACall; Teams' InACall is consumed, not written back."""
    m = Mapping()
    r1 = plan({}, {KEY: _obs("Available/Available", "agent_onphone", T0)}, m, "both", T0)
    assert [(a.side, a.kind, a.value, a.purpose) for a in r1.actions] == [
        (Side.TEAMS, ActionKind.SET, T("Busy/InACall"), ActionPurpose.MIRROR)
    ]
    assert r1.actions[0].expiration == timedelta(hours=1)
    assert r1.actions[0].shown == T("Available/Available")
    state = r1.new_states[KEY]
    assert state.our_teams_session is not None and state.pending_teams
    t1 = T0 + timedelta(seconds=5)
    r2 = plan({KEY: state}, {KEY: _obs("Busy/InACall", "agent_onphone", t1)}, m, "both", t1)
    assert r2.actions == []
    after = r2.new_states[KEY]
    assert after.pending_teams == ()  # the echo was consumed
    assert after.genuine_teams is None  # Teams shows our session: nothing of its own to mirror
    assert after.genuine_connect == "agent_onphone"


def test_observed_states_and_apply_action_when_a_write_fails() -> None:
    m = Mapping()
    r = plan({}, {KEY: _obs("Busy/InACall", "available", T0)}, m, "both", T0)
    (action,) = r.actions
    observed = r.observed_states[KEY]
    assert observed.our_connect_session is None  # before the write
    assert apply_action(observed, action, T0) == r.new_states[KEY]
    # The write failed: the engine keeps `observed`, and the next cycle asks again.
    t1 = T0 + timedelta(seconds=5)
    again = plan({KEY: observed}, {KEY: _obs("Busy/InACall", "available", t1)}, m, "both", t1)
    assert [(a.side, a.value) for a in again.actions] == [(Side.CONNECT, "onphone")]


def test_out_of_order_observation_is_ignored_and_pairs_without_reads_are_planned() -> None:
    m = Mapping()
    r = plan({}, {KEY: _obs("Available/Available", "offline", T0)}, m, "both", T0)
    state = r.new_states[KEY]
    stale = plan(
        {KEY: state}, {KEY: _obs("Busy/InACall", None, T0 - timedelta(seconds=1))}, m, "both", T0
    )
    assert stale.actions == [] and stale.new_states[KEY] == state
    # No new observation at all: still planned (level-triggered on what is known).
    r2 = plan({KEY: state}, {}, m, "both", T0 + timedelta(seconds=5))
    assert KEY in r2.new_states and r2.actions == []


def test_several_observations_per_side_in_one_cycle_any_order() -> None:
    m = Mapping()
    burst = [
        Observation(Side.CONNECT, "available", T0 + timedelta(seconds=2)),
        Observation(Side.CONNECT, "onphone", T0 + timedelta(seconds=1)),  # older: skipped
        Observation(Side.TEAMS, T("Away/Away"), T0),
    ]
    r = plan({}, {KEY: burst}, m, "both", T0 + timedelta(seconds=3))
    assert r.new_states[KEY].genuine_connect == "available"
    assert [(a.side, a.value) for a in r.actions] == [(Side.TEAMS, T("Available/Available"))]


def test_fading_available_session_is_ours_and_refreshed() -> None:
    m = Mapping()
    session = SessionRecord(Side.TEAMS, T("Available/Available"), T0, T0 + timedelta(hours=1))
    state = PairState(
        KEY,
        genuine_connect="available",
        genuine_connect_at=T0,
        our_teams_session=session,
        last_connect=Observation(Side.CONNECT, "available", T0),
    )
    t1 = T0 + timedelta(minutes=2)
    r = plan({KEY: state}, {KEY: _obs("Available/AvailableInactive", None, t1)}, m, "both", t1)
    assert r.new_states[KEY].genuine_teams is None  # our session, fading: not the user's state
    assert [(a.purpose, a.reason) for a in r.actions] == [
        (ActionPurpose.RENEW, "Teams is fading our Available session: refresh")
    ]


def test_expired_session_is_written_again() -> None:
    m = Mapping()
    session = SessionRecord(Side.TEAMS, T("Busy/InACall"), T0, T0 + timedelta(hours=1))
    state = PairState(
        KEY, genuine_connect="onphone", genuine_connect_at=T0, our_teams_session=session
    )
    t1 = T0 + timedelta(hours=2)
    (action,) = plan({KEY: state}, {}, m, "both", t1).actions
    assert (action.purpose, action.reason) == (ActionPurpose.RENEW, "session expired: write again")
    renewed = apply_action(state, action, t1).our_teams_session
    assert renewed is not None and renewed.expires_at == t1 + timedelta(hours=1)


def test_release_clears_every_session_held() -> None:
    states = [
        PairState("a:1", our_teams_session=SessionRecord(Side.TEAMS, T("Busy/InACall"), T0)),
        PairState("b:2", our_connect_session=SessionRecord(Side.CONNECT, "onphone", T0),
                  our_teams_session=SessionRecord(Side.TEAMS, T("Available/Available"), T0)),
        PairState("c:3"),
    ]  # fmt: skip
    actions = release(states, "disable: clear our session")
    assert sorted((a.key, a.side.value, a.kind.value) for a in actions) == [
        ("a:1", "teams", "clear"), ("b:2", "connect", "clear"), ("b:2", "teams", "clear"),
    ]  # fmt: skip
    cleared = apply_action(states[0], actions[0], T0)
    assert cleared.our_teams_session is None and cleared.pending_teams[-1].value is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"teams_session_ttl": timedelta(minutes=4)},
        {"teams_session_ttl": timedelta(hours=5)},
        {"teams_session_ttl": timedelta(minutes=10), "renew_margin": timedelta(minutes=10)},
    ],
)
def test_settings_outside_what_setpresence_accepts_are_config_errors(kwargs) -> None:
    with pytest.raises(ConfigError):
        PlanSettings(**kwargs)
    with pytest.raises(ConfigError):
        plan({}, {}, Mapping(), "both", T0, **kwargs)


def test_model_helpers() -> None:
    assert Direction("teams-to-connect").writes(Side.CONNECT)
    assert not Direction.TEAMS_TO_CONNECT.writes(Side.TEAMS)
    assert Direction.CONNECT_TO_TEAMS.writes(Side.TEAMS) and Direction.BOTH.writes(Side.TEAMS)
    assert Side.TEAMS.other is Side.CONNECT
    for side, value in [(Side.TEAMS, T("Busy/InACall", True)), (Side.TEAMS, T("Away/Away")),
                        (Side.CONNECT, "agent_onphone")]:  # fmt: skip
        assert decode_value(side, encode_value(value)) == value
    assert encode_value(None) is None and decode_value(Side.TEAMS, None) is None
    described = plan({}, {KEY: _obs("Busy/InACall", "offline", T0)}, Mapping(), "both", T0).actions[
        0
    ]
    assert described.describe() == {
        "key": KEY, "side": "connect", "kind": "set", "from": "offline", "to": "onphone",
        "reason": "Teams Busy/InACall → onphone", "purpose": "mirror", "expiration_s": None,
    }  # fmt: skip


def test_a_steady_cycle_over_ten_thousand_pairs_plans_nothing() -> None:
    """Ten thousand pairs read again unchanged: every pair kept, no write (the time it takes is
    bench/cycle.py's figure, not a test's: shared CI machines vary)."""
    rng = random.Random(7)
    m = Mapping()
    teams_values = [
        T(v)
        for v in ("Available/Available", "Busy/InACall", "Away/Away", "DoNotDisturb/DoNotDisturb")
    ]
    connect_values = [s.value for s in ConnectStatus]
    keys = [f"a{i}:c{i}" for i in range(10_000)]
    first = {
        k: [
            Observation(Side.TEAMS, rng.choice(teams_values), T0),
            Observation(Side.CONNECT, rng.choice(connect_values), T0),
        ]
        for k in keys
    }
    result = plan({}, first, m, "both", T0)
    t1 = T0 + timedelta(seconds=5)
    steady = {
        k: [
            Observation(Side.TEAMS, s.last_teams.value, t1),
            Observation(Side.CONNECT, s.last_connect.value, t1),
        ]
        for k, s in result.new_states.items()
        if s.last_teams is not None and s.last_connect is not None
    }
    again = plan(result.new_states, steady, m, "both", t1)
    assert len(again.new_states) == 10_000
    assert again.actions == []


def test_user_change_after_we_cleared_a_masked_session_is_genuine() -> None:
    """Found by the demo against the sandbox: we hold Connect `available`; the user's agent call
    masks it and we clear it. The user then going back to `available` is their own change: a stale
    read of our cleared session would have shown `agent_onphone` (what the side showed when we
    cleared), never `available`. Teams must follow at once, not after the echo window."""
    m = Mapping()
    session = SessionRecord(Side.CONNECT, "available", T0, None)
    state = PairState(
        KEY,
        last_teams=Observation(Side.TEAMS, T("Available/Available"), T0),
        last_connect=Observation(Side.CONNECT, "available", T0),
        genuine_teams=T("Available/Available"),
        genuine_connect=None,
        our_connect_session=session,
    )
    t1 = T0 + timedelta(seconds=5)
    r1 = plan({KEY: state}, {KEY: _obs("Available/Available", "agent_onphone", t1)}, m, "both", t1)
    kinds = {(a.side, a.kind) for a in r1.actions}
    assert kinds == {(Side.TEAMS, ActionKind.SET), (Side.CONNECT, ActionKind.CLEAR)}
    t2 = t1 + timedelta(seconds=5)
    r2 = plan(
        {KEY: r1.new_states[KEY]}, {KEY: _obs("Busy/InACall", "available", t2)}, m, "both", t2
    )
    assert r2.new_states[KEY].genuine_connect == "available"
    # Connect `available` → Teams Available/Available: our InACall session is replaced.
    assert [(a.side, a.kind, a.value) for a in r2.actions] == [
        (Side.TEAMS, ActionKind.SET, T("Available/Available"))
    ]


def test_a_reading_taken_for_an_echo_is_read_again_when_the_window_ends() -> None:
    """Found by the soak: our Connect session `meeting` replaced by `available`, then the user's
    own `meeting`. Inside the echo window that reading is our write not landed yet; once the
    window ends, the same reading (no new one: the feed is quiet) is the user's own."""
    m = Mapping()
    r1 = plan({}, {KEY: _obs("DoNotDisturb/Presenting", "offline", T0)}, m, "both", T0)
    assert [(a.side, a.value) for a in r1.actions] == [(Side.CONNECT, "meeting")]
    t1 = T0 + timedelta(seconds=2)
    r2 = plan({KEY: r1.new_states[KEY]}, {KEY: _obs("Available/Available", "meeting", t1)}, m,
              "both", t1)  # fmt: skip
    assert [(a.side, a.value) for a in r2.actions] == [(Side.CONNECT, "available")]
    t2 = t1 + timedelta(seconds=1)  # the user's own `meeting`, while `available` is pending
    r3 = plan({KEY: r2.new_states[KEY]}, {KEY: _obs(None, "meeting", t2)}, m, "both", t2,
              echo_window=timedelta(seconds=5))  # fmt: skip
    assert r3.actions == [] and r3.new_states[KEY].genuine_connect is None  # unknown
    t3 = t1 + timedelta(seconds=6)  # the window has passed; nothing new was read
    r4 = plan({KEY: r3.new_states[KEY]}, {}, m, "both", t3, echo_window=timedelta(seconds=5))
    assert r4.new_states[KEY].genuine_connect == "meeting"
    # Mirrored to Teams; our Connect `available` goes (Teams will show our own session).
    assert [(a.side, a.kind, a.value) for a in r4.actions] == [
        (Side.TEAMS, ActionKind.SET, T("Busy/InACall")),
        (Side.CONNECT, ActionKind.CLEAR, None),
    ]
