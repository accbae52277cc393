"""Sandbox presence aggregation: sessions, preferred presence, fade, expiry, sequence."""

from __future__ import annotations

import pytest

from presencectl.sandbox.connect_presence import ConnectPresenceState
from presencectl.sandbox.teams_presence import (
    TeamsPresenceState,
    parse_duration,
)

APP = "11111111-2222-3333-4444-555555555555"
OTHER = "99999999-2222-3333-4444-555555555555"
T0 = 1_700_000_000.0


def pair(state: TeamsPresenceState, now: float) -> tuple[str, str]:
    p = state.presence(now)
    return (p.availability, p.activity)


def test_nothing_at_all_is_offline() -> None:
    state = TeamsPresenceState(now=T0)
    assert pair(state, T0) == ("Offline", "Offline")


def test_highest_session_wins_dnd_busy_available_away() -> None:
    state = TeamsPresenceState("Away", "Away", now=T0)
    assert pair(state, T0) == ("Away", "Away")
    state.set_session(APP, "Available", "Available", 3600, T0 + 1)
    assert pair(state, T0 + 1) == ("Available", "Available")
    state.set_session(OTHER, "Busy", "InACall", 3600, T0 + 2)
    assert pair(state, T0 + 2) == ("Busy", "InACall")
    state.set_client("DoNotDisturb", "Presenting", None, T0 + 3)
    assert pair(state, T0 + 3) == ("DoNotDisturb", "Presenting")
    state.set_client("Away", "Away", None, T0 + 4)
    assert pair(state, T0 + 4) == ("Busy", "InACall")


def test_preferred_beats_sessions_but_needs_one() -> None:
    state = TeamsPresenceState(now=T0)
    state.set_preferred("DoNotDisturb", "DoNotDisturb", None, T0)
    assert pair(state, T0) == ("Offline", "Offline")  # no session: preferred does not apply
    state.set_session(APP, "Busy", "InACall", 600, T0)
    assert pair(state, T0) == ("DoNotDisturb", "DoNotDisturb")
    state.clear_preferred(T0 + 1)
    assert pair(state, T0 + 1) == ("Busy", "InACall")


def test_preferred_expires() -> None:
    state = TeamsPresenceState("Available", "Available", now=T0)
    state.set_preferred("Away", "Away", 300, T0)
    assert pair(state, T0 + 299) == ("Away", "Away")
    assert pair(state, T0 + 300) == ("Available", "Available")


def test_available_session_fades_then_refresh_restores() -> None:
    state = TeamsPresenceState(now=T0)
    state.set_session(APP, "Available", "Available", 4 * 3600, T0)
    assert pair(state, T0 + 299) == ("Available", "Available")
    assert pair(state, T0 + 300) == ("Available", "AvailableInactive")
    assert pair(state, T0 + 600) == ("Away", "Away")
    state.set_session(APP, "Available", "Available", 4 * 3600, T0 + 700)
    assert pair(state, T0 + 700) == ("Available", "Available")


def test_busy_session_does_not_fade_but_expires() -> None:
    state = TeamsPresenceState(now=T0)
    state.set_session(APP, "Busy", "InACall", 3600, T0)
    assert pair(state, T0 + 3599) == ("Busy", "InACall")
    assert pair(state, T0 + 3600) == ("Offline", "Offline")
    assert APP not in state.live_sessions(T0 + 3600)


def test_clear_session_unknown_is_none_and_last_session_goes_offline() -> None:
    state = TeamsPresenceState(now=T0)
    assert state.clear_session(APP, T0) is None
    state.set_session(APP, "Busy", "InACall", 600, T0)
    assert state.clear_session(APP, T0 + 1) is True
    assert pair(state, T0 + 1) == ("Offline", "Offline")
    # An expired session is no session either.
    state.set_session(APP, "Busy", "InACall", 300, T0)
    assert state.clear_session(APP, T0 + 301) is None


def test_sequence_number_grows_on_every_change_only() -> None:
    state = TeamsPresenceState(now=T0)
    s0 = state.presence(T0).sequence_number
    assert state.set_session(APP, "Busy", "InACall", 600, T0) is True
    s1 = state.presence(T0).sequence_number
    assert s1 > s0
    assert state.set_session(APP, "Busy", "InACall", 600, T0 + 10) is False  # refresh, same state
    assert state.presence(T0 + 10).sequence_number == s1
    s_exp = state.presence(T0 + 700).sequence_number  # expiry is a change too
    assert s_exp > s1
    graph = state.presence(T0 + 700).graph_json("u1")
    assert isinstance(graph["sequenceNumber"], str)


def test_sequence_numbers_sort_as_strings() -> None:
    state = TeamsPresenceState(now=T0)
    seen = []
    for i in range(12):
        state.set_session(APP, "Busy" if i % 2 else "Away", "InACall" if i % 2 else "Away", 600, T0)
        seen.append(state.presence(T0).graph_json("x")["sequenceNumber"])
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)


def test_out_of_office_flag_and_activity() -> None:
    state = TeamsPresenceState("Available", "Available", now=T0)
    state.set_client("Available", "Available", True, T0)
    presence = state.presence(T0)
    assert presence.out_of_office is True
    assert presence.activity == "OutOfOffice"
    state.set_session(APP, "Busy", "InACall", 600, T0)
    presence = state.presence(T0)
    assert (presence.availability, presence.activity, presence.out_of_office) == (
        "Busy",
        "InACall",
        True,
    )
    assert presence.graph_json("u")["outOfOfficeSettings"]["isOutOfOffice"] is True


def test_tie_goes_to_most_recent() -> None:
    state = TeamsPresenceState("Busy", "InAMeeting", now=T0)
    state.set_session(APP, "Busy", "InACall", 600, T0 + 5)
    assert pair(state, T0 + 5) == ("Busy", "InACall")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT5M", 300), ("PT4H", 14400), ("PT1H30M", 5400), ("P1D", 86400), ("PT90S", 90)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5M", "PT", "P", "PTM", "PT5X", "yesterday"])
def test_parse_duration_rejects(text: str) -> None:
    assert parse_duration(text) is None


def test_fifty_thousand_users_keep_their_sessions() -> None:
    # How long this takes is a benchmark row (bench/timings.py), not an assert here.
    states = [TeamsPresenceState("Available", "Available", now=T0) for _ in range(50_000)]
    for i, state in enumerate(states):
        if i % 3 == 0:
            state.set_session(APP, "Busy", "InACall", 600, T0)
    reads = [s.presence(T0 + 1) for s in states]
    assert sum(1 for r in reads if r.availability == "Busy") == 16_667
    assert sum(1 for r in reads if r.activity == "InACall") == 16_667
    # Once the 600 s sessions expire, everyone is back to their own presence.
    later = [s.presence(T0 + 601) for s in states]
    assert {(r.availability, r.activity) for r in later} == {("Available", "Available")}


# ------------------------------------------------------------------ Connect aggregation


def test_connect_no_resource_is_offline() -> None:
    assert ConnectPresenceState().status == "offline"


def test_connect_order_and_ties() -> None:
    state = ConnectPresenceState("available", now=T0)
    assert state.set("presencectl", "busy", T0 + 1) is True
    assert state.status == "busy"
    assert state.set("app", "onphone", T0 + 2) is True
    assert state.status == "onphone"
    # Tie within a tier: the most recent wins.
    assert state.set("presencectl", "agent_onphone", T0 + 3) is True
    assert state.status == "agent_onphone"
    assert state.set("app", "dnd", T0 + 4) is False  # agent_onphone still highest
    assert state.clear("presencectl") is True
    assert state.status == "dnd"
    assert state.clear("presencectl") is None


def test_connect_rejects_unknown_value() -> None:
    with pytest.raises(ValueError):
        ConnectPresenceState().set("app", "Available", T0)
