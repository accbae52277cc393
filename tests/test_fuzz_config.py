"""Bad configuration, fuzzed: any TOML, wrong types, unknown keys and wrong mapping overrides.

Whatever the operator writes in config.toml (or in a mapping file), presencectl answers with exit
3 and a message that names the offending key — never exit 1 ("unexpected") and never a
traceback. The oracle below is written independently of ``presencectl.config`` and
``presencectl.mapping`` from docs/mapping.md and the config layout: it decides which keys are
wrong, and the command must name one of them.
"""

from __future__ import annotations

import datetime as dt
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomli_w
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from presencectl.config import config_path

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

STRING_KEYS = (
    "tenant_id", "authority_url", "graph_url", "ca_bundle", "proxy", "client_id",
    "bootstrap_client_id", "admin_email", "sync_username", "connect_login_url",
    "connect_api_url", "connect_client_id", "connect_account_email", "enabled_direction",
)  # fmt: skip
TABLE_KEYS = ("verified", "mapping")
URL_KEYS = ("authority_url", "graph_url", "connect_login_url", "connect_api_url")
DIRECTIONS = ("both", "connect-to-teams", "teams-to-connect")

CONNECT = (
    "available", "agent_available", "onphone", "meeting", "screen_sharing", "agent_onphone",
    "offline", "away", "on_break", "busy", "agent_busy", "dnd", "out_sick", "on_vacation",
    "off_work",
)  # fmt: skip
CONNECT_LABELS = (
    "Available", "Agent Available", "On call", "In a meeting", "Screen sharing", "Agent on call",
    "Offline", "Away", "On break", "Busy", "Agent busy", "Do not disturb", "Out sick",
    "On vacation", "Off work",
)  # fmt: skip
# Connect statuses are accepted by wire value or UI name, in any casing, "-" for "_".
CONNECT_NAMES = frozenset(
    [*CONNECT, *(x.lower() for x in CONNECT_LABELS),
     *(x.lower().replace(" ", "_") for x in CONNECT_LABELS)]
)  # fmt: skip
SET_PRESENCE = (
    "Available/Available", "Busy/InACall", "Busy/InAConferenceCall", "Away/Away",
    "DoNotDisturb/Presenting",
)  # fmt: skip
AVAILABILITIES = (
    "Available", "AvailableIdle", "Away", "BeRightBack", "Busy", "BusyIdle", "DoNotDisturb",
    "Offline", "PresenceUnknown",
)  # fmt: skip
ACTIVITIES = (
    "Available", "AvailableInactive", "Away", "BeRightBack", "Busy", "DoNotDisturb", "Focusing",
    "InACall", "InAConferenceCall", "Inactive", "InAMeeting", "Offline", "OffWork", "OutOfOffice",
    "PresenceUnknown", "Presenting", "UrgentInterruptionsOnly",
)  # fmt: skip

# -- strategies ------------------------------------------------------------------------------

key_text = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
scalar = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1)),
    st.dates(),
)
toml_value = st.recursive(
    scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(key_text, inner, max_size=3)
    ),
    max_leaves=6,
)
good_url = st.sampled_from(
    [
        "https://login.microsoftonline.com",
        "https://127.0.0.1:8443/x",
        "http://localhost:1",
        "http://graph.example.com/v1.0",
    ]
)
good_string_value = {
    **{k: st.text(alphabet=string.ascii_letters + "-.@", min_size=1, max_size=20)
       for k in STRING_KEYS},
    **{k: good_url for k in URL_KEYS},
    "enabled_direction": st.sampled_from(DIRECTIONS),
    "proxy": st.sampled_from(["http://proxy:3128", "socks5://p:1080"]),
}  # fmt: skip


@st.composite
def profile_tables(draw: st.DrawFn) -> dict[str, Any]:
    """A profile table: mostly right, with some keys unknown or of the wrong type."""
    table: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(STRING_KEYS), max_size=5, unique=True)):
        table[key] = draw(st.one_of(good_string_value[key], toml_value))
    for key in draw(st.lists(key_text, max_size=2, unique=True)):
        table.setdefault(key, draw(toml_value))
    if draw(st.booleans()):
        table["verified"] = draw(st.one_of(st.dictionaries(key_text, scalar, max_size=2), scalar))
    return table


teams_key = st.one_of(
    st.builds(lambda a, b: f"{a}/{b}", st.sampled_from([*AVAILABILITIES, "*"]),
              st.sampled_from([*ACTIVITIES, "*"])),
    st.builds(lambda a, b: f"{a.lower()}/{b.upper()}", st.sampled_from(AVAILABILITIES),
              st.sampled_from(ACTIVITIES)),
    key_text,
    st.builds(lambda a, b: f"{a}/{b}", key_text, key_text),
)  # fmt: skip
connect_key = st.one_of(
    st.sampled_from(CONNECT), st.sampled_from(CONNECT_LABELS).map(str.upper), key_text
)
connect_target = st.one_of(
    st.sampled_from([*CONNECT, *CONNECT_LABELS, "unaltered", "Unaltered"]), key_text, toml_value
)
teams_target = st.one_of(
    st.sampled_from([*SET_PRESENCE, "unaltered", "busy/inacall"]),
    st.sampled_from(["Busy/Busy", "Busy/InAMeeting", "Offline/OffWork"]),  # real, not settable
    key_text,
    toml_value,
)
mapping_tables = st.fixed_dictionaries(
    {},
    optional={
        "teams_to_connect": st.one_of(
            st.dictionaries(teams_key, connect_target, max_size=3), scalar
        ),
        "connect_to_teams": st.one_of(
            st.dictionaries(connect_key, teams_target, max_size=3), scalar
        ),
    },
).flatmap(
    lambda d: st.one_of(
        st.just(d), st.dictionaries(key_text, toml_value, max_size=1).map(lambda x: {**d, **x})
    )
)

# -- the independent oracle --------------------------------------------------------------------


def _is_url(value: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.hostname)


def _teams_key_ok(key: str) -> bool:
    a, sep, b = key.strip().partition("/")
    a, b = a.strip(), b.strip()
    if not sep or not a or not b or (a == "*" and b == "*"):
        return False
    return (a == "*" or a.lower() in {x.lower() for x in AVAILABILITIES}) and (
        b == "*" or b.lower() in {x.lower() for x in ACTIVITIES}
    )


def _connect_name_ok(value: str) -> bool:
    return value.strip().lower().replace("-", "_") in CONNECT_NAMES


# Never written to Connect (agent states; the DND group, which silences every device: KB 44189).
REFUSED_TARGETS = frozenset(
    ["agent_available", "agent_onphone", "agent_busy", "dnd", "out_sick", "on_vacation",
     "off_work", "agent available", "agent on call", "agent busy", "do not disturb",
     "agent_on_call", "do_not_disturb", "out sick", "on vacation", "off work"]
)  # fmt: skip


def _connect_target_ok(value: Any) -> bool:
    return isinstance(value, str) and (
        value.strip().lower() == "unaltered"
        or (
            _connect_name_ok(value)
            and value.strip().lower().replace("-", "_") not in REFUSED_TARGETS
            and value.strip().lower() not in REFUSED_TARGETS
        )
    )


def _teams_target_ok(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() in {
        *(p.lower() for p in SET_PRESENCE),
        "unaltered",
    }


def mapping_bad_keys(mapping: Any) -> set[str]:
    """Every key of a mapping override that is wrong (empty: the overrides are valid)."""
    if not isinstance(mapping, dict):
        return {"mapping"}
    bad: set[str] = set()
    for name, table in mapping.items():
        if name not in ("teams_to_connect", "connect_to_teams") or not isinstance(table, dict):
            bad.add(name)
            continue
        for key, value in table.items():
            if name == "teams_to_connect":
                ok = _teams_key_ok(key) and _connect_target_ok(value)
            else:
                ok = _connect_name_ok(key) and _teams_target_ok(value)
            if not ok:
                bad.add(key)
    return bad


def _string_ok(key: str, value: str) -> bool:
    if key in URL_KEYS:  # plain http only to loopback
        if not _is_url(value, ("https", "http")):
            return False
        host = (urlsplit(value).hostname or "").lower()
        return (
            value.lower().startswith("https")
            or host in ("localhost", "::1")
            or host.startswith("127.")
        )
    if key == "proxy":
        return _is_url(value, ("http", "https", "socks5", "socks5h"))
    if key == "enabled_direction":
        return value in DIRECTIONS
    if key == "tenant_id":
        return _tenant_ok(value)
    return True


def _tenant_ok(value: str) -> bool:
    """A tenant GUID (8-4-4-4-12 hex) or a DNS domain with an alphabetic top-level label."""
    parts = value.split("-")
    if [len(p) for p in parts] == [8, 4, 4, 4, 12] and all(
        c in "0123456789abcdefABCDEF" for c in value.replace("-", "")
    ):
        return True
    labels = value.split(".")
    if len(labels) < 2 or not 4 <= len(value) <= 253:
        return False
    alnum = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    for label in labels:
        if not 1 <= len(label) <= 63 or label[0] == "-" or label[-1] == "-":
            return False
        if not set(label) <= alnum | {"-"}:
            return False
    tld = labels[-1]
    return 2 <= len(tld) <= 63 and tld.isascii() and tld.isalpha()


def profile_bad_keys(table: dict[str, Any]) -> set[str]:
    bad: set[str] = set()
    for key, value in table.items():
        if key in TABLE_KEYS:
            if not isinstance(value, dict):
                bad.add(key)
            elif key == "mapping":
                bad |= mapping_bad_keys(value)
        elif key not in STRING_KEYS or not isinstance(value, str) or not _string_ok(key, value):
            bad.add(key)
    return bad


# -- helpers -----------------------------------------------------------------------------------


def write_doc(doc: dict[str, Any]) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return path


def assert_clean_config_error(result: Any, bad: set[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.exit_code == 3, (result.exit_code, result.stdout, result.stderr)
    error = result.json()["error"]
    assert error["code"] != "unexpected"
    text = error["message"] + " " + (error.get("hint") or "")
    assert any(f"'{key}'" in text or f".{key}" in text for key in bad), (bad, error)


# -- config show -------------------------------------------------------------------------------


@FUZZ
@given(table=profile_tables())
def test_fuzzed_profile_table_is_accepted_or_named(cli: Any, table: dict[str, Any]) -> None:
    write_doc({"profiles": {"fz": table}})
    result = cli("--profile", "fz", "-o", "json", "config", "show")
    bad = profile_bad_keys(table)
    if bad:
        assert_clean_config_error(result, bad)
    else:
        assert result.exit_code == 0, result.stdout + result.stderr
        assert result.json()["profile"] == "fz"


@FUZZ
@given(mapping=mapping_tables)
@example(mapping={"teams_to_connect": {"Busy/InAMeeting": "meeting"}})
@example(mapping={"connect_to_teams": {"on_break": "Busy/Busy"}})  # not a setPresence pair
@example(mapping={"connect_to_teams": {"no_such_status": "unaltered"}})
@example(mapping={"teams_to_connect": {"Busy/InAMeeting": "in_a_room"}})
@example(mapping={"teams_to_connect": {"*/*": "busy"}})
@example(mapping={"teams_to_connect": {"Busy/InAMeeting": "Agent-Busy"}})  # refused: agent state
@example(mapping={"teams_to_connect": {"Busy/Busy": "Do not disturb"}})  # refused: DND group
@example(mapping={"connect_to_teams": {"onphone": 3}})
def test_fuzzed_mapping_overrides_in_config(cli: Any, mapping: dict[str, Any]) -> None:
    write_doc({"profiles": {"fz": {"tenant_id": "t.example", "mapping": mapping}}})
    result = cli("--profile", "fz", "-o", "json", "mapping", "show")
    # config show must work whatever the mapping says (it is how the admin sees what to fix),
    # and names the problem instead (issue 15).
    shown = cli("--profile", "fz", "-o", "json", "config", "show")
    assert shown.exit_code == 0, shown.stdout + shown.stderr
    bad = mapping_bad_keys(mapping)
    if bad:
        assert_clean_config_error(result, bad)
        assert shown.json()["mapping_error"]
    else:
        assert result.exit_code == 0, result.stdout + result.stderr
        assert "mapping_error" not in shown.json()


@FUZZ
@given(doc=st.dictionaries(key_text, toml_value, max_size=3))
@example(doc={"profiles": 3})
@example(doc={"profiles": {"fz": [1, 2]}})
@example(doc={"profiles": {"fz": {}}, "extra": {}})
def test_any_toml_document(cli: Any, doc: dict[str, Any]) -> None:
    write_doc(doc)
    result = cli("--profile", "fz", "-o", "json", "config", "show")
    assert "Traceback" not in result.stderr
    assert result.exit_code in (0, 3), result.stdout + result.stderr
    if result.exit_code == 3:
        assert result.json()["error"]["code"] != "unexpected"


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
@example(raw=b"\xff\xfe[profiles.fz]\n")
@example(raw="[profiles.fz]\ntenant_id = \n")
@example(raw="[profiles.fz]\n[profiles.fz]\n")
def test_arbitrary_bytes_as_config(cli: Any, raw: bytes | str) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8"))
    result = cli("--profile", "fz", "-o", "json", "config", "show")
    assert "Traceback" not in result.stderr
    assert result.exit_code in (0, 3), result.stdout + result.stderr
    if result.exit_code == 3:
        assert result.json()["error"]["code"] != "unexpected"


def test_invalid_toml_names_the_file_and_line(cli: Any) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('[profiles.fz]\ntenant_id = "a"\nclient_id = oops\n', encoding="utf-8")
    result = cli("--profile", "fz", "-o", "json", "config", "show")
    assert result.exit_code == 3
    message = result.json()["error"]["message"]
    assert str(path) in message and "line 3" in message


def test_wrong_type_is_named_with_its_type(cli: Any) -> None:
    write_doc({"profiles": {"fz": {"client_id": 42}}})
    result = cli("--profile", "fz", "-o", "json", "config", "show")
    assert result.exit_code == 3
    assert "'client_id'" in result.json()["error"]["message"]
    assert "integer" in result.json()["error"]["message"]


def test_unknown_key_suggests_the_right_one(cli: Any) -> None:
    write_doc({"profiles": {"fz": {"tenantid": "x"}}})
    result = cli("--profile", "fz", "-o", "json", "config", "show")
    assert result.exit_code == 3
    error = result.json()["error"]
    assert "'tenantid'" in error["message"] and "tenant_id" in error["hint"]


def test_unknown_mapping_status_lists_the_valid_values(cli: Any) -> None:
    write_doc({"profiles": {"fz": {"mapping": {"connect_to_teams": {"lunch": "unaltered"}}}}})
    result = cli("--profile", "fz", "-o", "json", "mapping", "show")
    assert result.exit_code == 3
    error = result.json()["error"]
    assert "'lunch'" in error["message"] and "agent_onphone" in error["hint"]


def test_mapping_show_with_bad_override_is_a_config_error(cli: Any) -> None:
    write_doc({"profiles": {"fz": {"mapping": {"teams_to_connect": {"Busy/Nope": "busy"}}}}})
    result = cli("--profile", "fz", "-o", "json", "mapping", "show")
    assert "Traceback" not in result.stderr
    assert result.exit_code == 3
    error = result.json()["error"]
    assert "Busy/Nope" in error["message"]


# -- mapping check FILE ------------------------------------------------------------------------


def _mapping_check(cli: Any, tmp_path: Path, mapping: Any) -> Any:
    file = tmp_path / "overrides.toml"
    file.write_text(tomli_w.dumps(mapping), encoding="utf-8")
    return cli("-o", "json", "mapping", "check", str(file))


@FUZZ
@given(mapping=mapping_tables)
def test_fuzzed_mapping_check_file(cli: Any, tmp_path: Path, mapping: dict[str, Any]) -> None:
    assume(mapping)
    result = _mapping_check(cli, tmp_path, mapping)
    bad = mapping_bad_keys(mapping)
    if bad:
        assert_clean_config_error(result, bad)
    else:
        assert "Traceback" not in result.stderr
        assert result.exit_code == 0, result.stdout + result.stderr


def test_mapping_check_missing_file_is_named(cli: Any, tmp_path: Path) -> None:
    result = cli("-o", "json", "mapping", "check", str(tmp_path / "absent.toml"))
    assert "Traceback" not in result.stderr
    assert result.exit_code in (2, 3)
    assert "absent.toml" in result.stdout + result.stderr
