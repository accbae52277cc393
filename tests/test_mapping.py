"""The status mapping: seed tables as data, the Graph parser, overrides, `mapping show/check`."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from presencectl import mapping as mapping_module
from presencectl.errors import ConfigError
from presencectl.mapping import (
    ACTIVITIES,
    AVAILABILITIES,
    TEAMS_TO_CONNECT_ROWS,
    UNALTERED,
    ConnectStatus,
    Mapping,
    TeamsStatus,
    validate_overrides,
)

# The seed's Teams → Connect table as docs/mapping.md reads it: (label, pair, OOF, Connect).
SEED_T2C = [
    ("Available", "Available/Available", False, "available"),
    ("Busy", "Busy/Busy", False, "busy"),
    ("In a call", "Busy/InACall", False, "onphone"),
    ("In a call (In a video meeting)", "Busy/InAConferenceCall", False, "meeting"),
    ("On call (out of office)", "Busy/InACall", True, "onphone"),
    ("Do not Disturb", "DoNotDisturb/DoNotDisturb", False, "busy"),
    ("Presenting", "DoNotDisturb/Presenting", False, "meeting"),
    ("Do not Disturb (Focusing mode)", "DoNotDisturb/Focusing", False, "busy"),
    ("Be right back", "BeRightBack/BeRightBack", False, "on_break"),
    ("Away", "Away/Away", False, "unaltered"),
    ("Status Unknown", "PresenceUnknown/PresenceUnknown", False, "unaltered"),
    ("Out Of Office", "Away/OutOfOffice", False, "unaltered"),
    ("Out Of Office", "Busy/OutOfOffice", True, "unaltered"),
    ("Appear offline", "Offline/OffWork", False, "unaltered"),
    ("Appear offline", "Offline/Offline", False, "unaltered"),
]
SEED_C2T = [
    ("Available", "available", "Available/Available", ""),
    ("Agent Available", "agent_available", "Available/Available", ""),
    ("On call", "onphone", "Busy/InACall", ""),
    ("In a meeting", "meeting", "Busy/InACall", ""),
    ("Screen sharing", "screen_sharing", "Busy/InACall", ""),
    ("Agent on call", "agent_onphone", "Busy/InACall", ""),
    ("Offline", "offline", "unaltered", ""),
    ("Away", "away", "unaltered", "Away set automatically based on idle time"),
    ("On break", "on_break", "unaltered", "synchronization not supported by MS Teams"),
    ("Busy", "busy", "unaltered", "synchronization not supported by MS Teams"),
    ("Agent busy", "agent_busy", "unaltered", "synchronization not supported by MS Teams"),
    ("Do not disturb", "dnd", "unaltered", "synchronization not supported by MS Teams"),
    ("Out sick", "out_sick", "unaltered", "synchronization not supported by MS Teams"),
    ("On vacation", "on_vacation", "unaltered", "synchronization not supported by MS Teams"),
    ("Off work", "off_work", "unaltered", "synchronization not supported by MS Teams"),
]


def _result(value: object) -> str:
    if value is UNALTERED:
        return "unaltered"
    return value.key if isinstance(value, TeamsStatus) else str(value)


# -- the statuses ------------------------------------------------------------------------------


def test_fifteen_connect_statuses_with_ui_names() -> None:
    assert [(s.label, s.value) for s in ConnectStatus] == [
        (label, wire) for label, wire, _, _ in SEED_C2T
    ]
    assert ConnectStatus.parse("Agent on call") is ConnectStatus.AGENT_ONPHONE
    assert ConnectStatus.parse("ON_BREAK") is ConnectStatus.ON_BREAK
    assert ConnectStatus.parse("lunch") is None


@pytest.mark.parametrize(
    ("availability", "activity", "expected"),
    [
        ("Available", "Available", ("Available", "Available")),
        ("available", "available", ("Available", "Available")),  # camelCase as Graph documents
        ("BUSY", "inACall", ("Busy", "InACall")),
        ("doNotDisturb", "presenting", ("DoNotDisturb", "Presenting")),
        (" beRightBack ", None, ("BeRightBack", "BeRightBack")),  # activity missing: the pair
        ("Busy", "somethingNew", ("Busy", "somethingNew")),  # unknown kept as given
    ],
)
def test_teams_status_normalises_casing(availability, activity, expected) -> None:
    assert TeamsStatus.of(availability, activity).pair == expected


def test_teams_status_from_graph_resource_with_out_of_office() -> None:
    status = TeamsStatus.from_graph(
        {"id": "x", "availability": "busy", "activity": "inACall",
         "outOfOfficeSettings": {"isOutOfOffice": True, "message": "away"}}
    )  # fmt: skip
    assert (status.key, status.out_of_office, str(status)) == (
        "Busy/InACall",
        True,
        "Busy/InACall (out of office)",
    )
    assert TeamsStatus.from_graph({}).pair == ("PresenceUnknown", "PresenceUnknown")


# -- both tables, row by row -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "pair", "oof", "connect"), SEED_T2C, ids=[r[0] + ":" + r[1] for r in SEED_T2C]
)
def test_teams_to_connect_seed_rows(label, pair, oof, connect) -> None:
    m = Mapping()
    assert _result(m.teams_to_connect(TeamsStatus.parse(pair, out_of_office=oof))) == connect
    # The out-of-office flag never changes the result.
    assert m.teams_to_connect(TeamsStatus.parse(pair, out_of_office=not oof)) == m.teams_to_connect(
        TeamsStatus.parse(pair, out_of_office=oof)
    )
    # Any casing.
    assert m.teams_to_connect(TeamsStatus.parse(pair.lower())) == m.teams_to_connect(
        TeamsStatus.parse(pair)
    )


@pytest.mark.parametrize(("label", "wire", "teams", "note"), SEED_C2T, ids=[r[1] for r in SEED_C2T])
def test_connect_to_teams_seed_rows(label, wire, teams, note) -> None:
    assert _result(Mapping().connect_to_teams(wire)) == teams


@pytest.mark.parametrize(
    ("pair", "connect"),
    [
        ("Busy/InAMeeting", "meeting"),
        ("BusyIdle/BusyIdle", "busy"),
        ("BusyIdle/Away", "busy"),
        ("DoNotDisturb/UrgentInterruptionsOnly", "busy"),
        ("AvailableIdle/AvailableIdle", "unaltered"),
        ("Available/Inactive", "unaltered"),
        ("Available/AvailableInactive", "unaltered"),
        ("Busy/Busy", "busy"),
        ("Available/Away", "available"),  # unlisted activity: availability alone decides
        ("DoNotDisturb/InACall", "busy"),
        ("BeRightBack/Away", "on_break"),
    ],
)
def test_extensions_and_fallbacks(pair, connect) -> None:
    assert _result(Mapping().teams_to_connect(TeamsStatus.parse(pair))) == connect


def test_unknown_values_are_unaltered_with_one_warning_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mapping_module._warned.clear()
    caplog.set_level(logging.WARNING, logger="presencectl.mapping")
    for _ in range(3):
        assert Mapping().teams_to_connect(TeamsStatus.parse("Lunching/Lunching")) is UNALTERED
        assert Mapping().connect_to_teams("on_lunch") is UNALTERED
        assert Mapping().teams_to_connect(TeamsStatus.parse("Busy/Juggling")) == "busy"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert any("'Lunching'" in m and "unaltered" in m for m in messages)
    assert any("'on_lunch'" in m for m in messages)
    assert any("'Juggling'" in m and "Busy/*" in m for m in messages)


@given(
    st.sampled_from((*AVAILABILITIES, "Weird")),
    st.sampled_from((*ACTIVITIES, "odd")),
    st.booleans(),
)
def test_every_pair_maps_to_a_connect_value_or_unaltered(availability, activity, oof) -> None:
    status = TeamsStatus.of(availability.swapcase(), activity.upper(), oof)
    result = Mapping().teams_to_connect(status)
    assert result is UNALTERED or ConnectStatus.parse(str(result)) is not None


def test_connect_to_teams_targets_are_only_setpresence_pairs() -> None:
    allowed = {"Available/Available", "Busy/InACall", "Busy/InAConferenceCall", "Away/Away",
               "DoNotDisturb/Presenting", "unaltered"}  # fmt: skip
    assert {_result(Mapping().connect_to_teams(s.value)) for s in ConnectStatus} <= allowed


# -- overrides ---------------------------------------------------------------------------------


def test_overrides_change_single_rows_case_insensitively() -> None:
    m = Mapping(
        {
            "teams_to_connect": {
                "busy/inameeting": "onphone",
                "Away/*": "away",
                "*/OutOfOffice": "away",
            },
            "connect_to_teams": {"on_break": "away/away", "onphone": "Busy/InAConferenceCall",
                                 "available": "unaltered"},
        }
    )  # fmt: skip
    assert m.teams_to_connect(TeamsStatus.parse("Busy/InAMeeting")) == "onphone"
    assert m.teams_to_connect(TeamsStatus.parse("Away/Away")) == "away"
    assert m.teams_to_connect(TeamsStatus.parse("Busy/OutOfOffice")) == "away"
    assert m.teams_to_connect(TeamsStatus.parse("Busy/InACall")) == "onphone"  # untouched
    assert _result(m.connect_to_teams("on_break")) == "Away/Away"
    assert _result(m.connect_to_teams("onphone")) == "Busy/InAConferenceCall"
    assert m.connect_to_teams("available") is UNALTERED
    origins = {(r.source, r.origin) for r in m.rows()}
    assert ("Busy/InAMeeting", "override") in origins and ("on_break", "override") in origins
    assert ("agent_onphone", "seed") in origins


@pytest.mark.parametrize(
    ("overrides", "key_named", "lists"),
    [
        ({"teams_to_connect": {"Busy/InACall": "ringing"}}, "'Busy/InACall'", "screen_sharing"),
        ({"teams_to_connect": {"Busy": "busy"}}, "'Busy'", "Availability/Activity"),
        ({"teams_to_connect": {"Bussy/InACall": "busy"}}, "'Bussy/InACall'", "DoNotDisturb"),
        ({"teams_to_connect": {"Busy/Calling": "busy"}}, "'Busy/Calling'", "InAConferenceCall"),
        ({"teams_to_connect": {"*/*": "busy"}}, "'*/*'", "Availability/Activity"),
        ({"teams_to_connect": {"Busy/Busy": 3}}, "'Busy/Busy'", "available"),
        ({"connect_to_teams": {"on_break": "Busy/Busy"}}, "'on_break'", "Busy/InAConferenceCall"),
        ({"connect_to_teams": {"on_break": "BeRightBack/BeRightBack"}}, "'on_break'", "Away/Away"),
        ({"connect_to_teams": {"lunch": "Away/Away"}}, "'lunch'", "agent_available"),
        ({"connect_to_team": {}}, "'connect_to_team'", "connect_to_teams"),
        ({"connect_to_teams": "Away/Away"}, "connect_to_teams", "table"),
    ],
)
def test_invalid_overrides_name_the_key_and_list_valid_values(overrides, key_named, lists) -> None:
    with pytest.raises(ConfigError) as info:
        validate_overrides(overrides, where="config.toml: [profiles.x].mapping")
    err = info.value
    assert err.exit_code == 3
    assert key_named in err.message
    assert "config.toml: [profiles.x].mapping" in err.message
    assert lists in err.message + err.hint


REFUSED = ["agent_available", "agent_onphone", "agent_busy", "dnd", "out_sick", "on_vacation",
           "off_work"]  # fmt: skip


@pytest.mark.parametrize("value", [*REFUSED, "Do not disturb", "Agent on call", "OUT_SICK"])
def test_overrides_that_would_write_agent_or_dnd_states_are_refused(value) -> None:
    with pytest.raises(ConfigError) as info:
        validate_overrides({"teams_to_connect": {"Busy/InAMeeting": value}}, where="f: [mapping]")
    err = info.value
    assert (err.exit_code, err.code) == (3, "mapping_refused")
    assert "'Busy/InAMeeting'" in err.message and "refuses" in err.message
    reason = "contact center" if "agent" in value.lower() else "KB 44189"
    assert reason in err.message
    valid = err.hint.removeprefix("valid values: ").split(", ")
    assert not set(valid) & set(REFUSED)
    assert {"available", "busy", "onphone", "meeting", "on_break", "unaltered"} <= set(valid)


def test_connect_to_teams_overrides_may_still_read_agent_and_dnd_states() -> None:
    # Reading those states from Connect changes nothing there: only writes to Connect are refused.
    m = Mapping({"connect_to_teams": {"dnd": "DoNotDisturb/Presenting", "agent_busy": "Away/Away"}})
    assert _result(m.connect_to_teams("dnd")) == "DoNotDisturb/Presenting"
    assert _result(m.connect_to_teams("agent_busy")) == "Away/Away"


def test_no_default_row_writes_a_refused_value() -> None:
    assert not {r.target for r in TEAMS_TO_CONNECT_ROWS} & set(REFUSED)


# -- the CLI -----------------------------------------------------------------------------------


def test_mapping_show_json_every_seed_row(cli) -> None:
    result = cli("-o", "json", "mapping", "show")
    assert result.exit_code == 0, result.stderr
    rows = result.json()
    keys = {"direction", "source", "source_label", "target", "target_label", "origin", "note"}
    assert all(set(r) == keys for r in rows)
    t2c = {
        (r["source_label"], r["source"]): r for r in rows if r["direction"] == "teams-to-connect"
    }
    for label, pair, oof, connect in SEED_T2C:
        source = "Busy/InACall + isOutOfOffice" if oof and label.startswith("On call") else pair
        if label == "Out Of Office":
            source = "*/OutOfOffice"
        row = t2c[(label, source)]
        assert (row["target"], row["origin"]) == (connect, "seed")
        if connect == "unaltered":
            assert row["note"] == "Will not impact the presence"
    c2t = {r["source"]: r for r in rows if r["direction"] == "connect-to-teams"}
    assert len(c2t) == 15
    for label, wire, teams, note in SEED_C2T:
        assert (c2t[wire]["source_label"], c2t[wire]["target"], c2t[wire]["note"]) == (
            label,
            teams,
            note,
        )
    assert {r["origin"] for r in rows} == {"seed", "extension"}
    assert sum(r["origin"] == "seed" for r in rows) == 14 + 15


def test_mapping_show_direction_and_table(cli) -> None:
    only = cli("-o", "json", "mapping", "show", "--direction", "connect-to-teams").json()
    assert {r["direction"] for r in only} == {"connect-to-teams"}
    table = cli("mapping", "show")
    assert table.exit_code == 0
    assert "Unaltered (synchronization not supported by MS Teams)" in table.stdout
    assert "Agent on call" in table.stdout and "Busy/InACall" in table.stdout
    bad = cli("mapping", "show", "--direction", "sideways")
    assert bad.exit_code == 2 and "sideways" in bad.stderr


def test_mapping_show_uses_the_profile_overrides(cli, tmp_path: Path) -> None:
    from presencectl.config import Profile, save_profile

    save_profile(Profile(name="default", mapping={"connect_to_teams": {"on_break": "Away/Away"}}))
    rows = cli("-o", "json", "mapping", "show", "--direction", "connect-to-teams").json()
    row = next(r for r in rows if r["source"] == "on_break")
    assert (row["target"], row["target_label"], row["origin"]) == ("Away/Away", "Away", "override")


def test_mapping_check_ok_and_errors(cli, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[mapping.connect_to_teams]\non_break = "Away/Away"\n'
                    '[mapping.teams_to_connect]\n"Busy/InAMeeting" = "onphone"\n')  # fmt: skip
    result = cli("-o", "json", "mapping", "check", str(good))
    assert result.exit_code == 0, result.stderr
    assert result.json()["status"] == "ok" and result.json()["overrides"] == 2
    top = tmp_path / "top.toml"
    top.write_text('[teams_to_connect]\n"BusyIdle/*" = "unaltered"\n')
    assert cli("mapping", "check", str(top)).exit_code == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[mapping.teams_to_connect]\n"Busy/InACall" = "ringing"\n')
    result = cli("-o", "json", "mapping", "check", str(bad))
    assert result.exit_code == 3
    error = result.json()["error"]
    assert "'Busy/InACall'" in error["message"] and "screen_sharing" in error["hint"]
    assert cli("mapping", "check", str(tmp_path / "missing.toml")).exit_code == 2  # usage
    refused = tmp_path / "refused.toml"
    refused.write_text('[mapping.teams_to_connect]\n"DoNotDisturb/DoNotDisturb" = "dnd"\n')
    result = cli("-o", "json", "mapping", "check", str(refused))
    assert result.exit_code == 3
    error = result.json()["error"]
    assert error["code"] == "mapping_refused" and "all of the user's devices" in error["message"]
    broken = tmp_path / "broken.toml"
    broken.write_text("[mapping\n")
    assert cli("mapping", "check", str(broken)).exit_code == 3
