"""The smaller admin-journey fixes of issue 15 item 5, each proven: one error prefix, one CSV
table per stream, doctor's CSV code, watch refusing csv/md, completion, status health, disable
without a valid mapping, who a one-shot sync wrote, honest event wording, quiet libraries, the
users count line and the sync user, setup-azure's steps once on a terminal."""

from __future__ import annotations

import csv
import io
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from test_engine_sandbox import ADMIN, Org

from presencectl.config import Profile, config_path, load_profile, save_profile

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def org(cli: Any) -> Iterator[Org]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=12, seed=3, auto_approve=ADMIN) as sb:
        yield Org(sb, cli)


def _tables(text: str) -> list[list[str]]:
    """The header rows of a CSV stream (a row whose width differs starts another table)."""
    rows = list(csv.reader(io.StringIO(text)))
    return [rows[0]] + [r for prev, r in itertools.pairwise(rows) if len(r) != len(prev)]


# -- without a service ---------------------------------------------------------------------------


def test_doctor_csv_keeps_the_code(cli: Any) -> None:
    save_profile(Profile(name="default", tenant_id="contoso.example"))
    result = cli("-o", "csv", "doctor")
    header = next(csv.reader(io.StringIO(result.stdout)))
    assert header == ["name", "status", "detail", "remedy", "code"]
    assert len(_tables(result.stdout)) == 1


def test_watch_refuses_csv_and_md_clearly(cli: Any) -> None:
    save_profile(Profile(name="default", tenant_id="contoso.example"))
    for fmt in ("csv", "md"):
        result = cli("-o", fmt, "sync", "--watch", "--direction", "both")
        assert result.exit_code == 2
        assert f"-o {fmt}" in result.stderr and "-o json" in result.stderr


def test_completion_offers_profiles_and_directions(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_profile(Profile(name="contoso", tenant_id="contoso.example"))
    save_profile(Profile(name="fabrikam", tenant_id="fabrikam.example"))
    monkeypatch.setenv("_PRESENCECTL_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "presencectl --profile con")
    monkeypatch.setenv("COMP_CWORD", "2")
    assert cli().stdout.split() == ["contoso"]
    monkeypatch.setenv("COMP_WORDS", "presencectl sync --direction t")
    monkeypatch.setenv("COMP_CWORD", "3")
    assert cli().stdout.split() == ["teams-to-connect"]
    monkeypatch.setenv("COMP_WORDS", "presencectl status --section h")
    assert cli().stdout.split() == ["health"]


def test_write_events_say_it_is_our_session(cli: Any) -> None:
    from datetime import UTC, datetime

    from presencectl.cli.events import event_text
    from presencectl.sync.engine import SyncEvent

    event = SyncEvent(
        "write",
        datetime.now(UTC),
        {
            "user": "hugo@contoso.example", "side": "connect", "kind": "set", "from": "dnd",
            "to": "available", "reason": "Teams Available/Available", "outcome": "ok",
        },
    )  # fmt: skip
    text = event_text(event)
    assert text is not None
    assert "our session -> available" in text and "connect showed dnd" in text
    assert "dnd -> available" not in text


def test_library_logs_only_from_vvv_and_pysignalr_quiet_by_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from presencectl import output

    def emit() -> str:
        logging.getLogger("pysignalr.client").warning("connection lost, retrying")
        logging.getLogger("msal.application").debug("msal detail")
        logging.getLogger("presencectl.sync.engine").debug("our detail")
        return capsys.readouterr().err

    output.setup_logging(0)
    assert emit() == ""
    output.setup_logging(1)
    assert "connection lost" in emit()
    output.setup_logging(2)
    text = emit()
    assert "our detail" in text and "msal detail" not in text
    output.setup_logging(3)
    assert "msal detail" in emit()
    output.setup_logging(0)


def test_setup_azure_steps_once_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from presencectl.cli.context import AppContext
    from presencectl.cli.identity import _render_steps
    from presencectl.identity.setup import SetupReport, Step

    report = SetupReport("t", "c", "app", "admin", "", True, [Step("App registration", "created")])
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    _render_steps(AppContext(), report)  # the progress lines on stderr already showed each step
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    _render_steps(AppContext(), report)  # piped: the table is the record
    assert "App registration" in capsys.readouterr().out


def test_unknown_activity_follows_the_availability_row_as_the_docs_say() -> None:
    from pathlib import Path

    from presencectl.mapping import Mapping as StatusMapping
    from presencectl.mapping import TeamsStatus

    mapping = StatusMapping.from_profile(Profile())
    target = mapping.teams_to_connect(TeamsStatus.parse("Busy/InAFunnyThing"))
    assert str(getattr(target, "value", target)) == "busy"
    docs = (Path(__file__).resolve().parent.parent / "docs" / "mapping.md").read_text()
    assert "`Busy/InAFunnyThing` maps through `Busy/*`" in docs


# -- against the sandbox -------------------------------------------------------------------------


def test_one_shot_sync_shows_who_was_written_and_status_shows_health(org: Org) -> None:
    person = org.people[0].email
    org.connect(person, "onphone")
    assert org.run("enable").exit_code == 0
    table = org.run("sync")
    assert table.exit_code == 0, table.stderr
    assert "Writes" in table.stdout and person in table.stdout

    status = org.run("-o", "json", "status")
    assert status.exit_code == 0, status.stderr
    health = status.json()["health"]
    assert health["last_cycle_age_s"] is not None and health["failing_users"] == []
    assert health["next_session_write"]["user"]  # the next write that keeps a session alive
    assert status.json()["next_renewal"] == health["next_session_write"]["at"]

    plain = org.run("status")
    assert "Health" in plain.stdout and "last cycle" in plain.stdout
    one = org.run("-o", "csv", "status")
    assert len(_tables(one.stdout)) == 1 and one.stdout.startswith("setting,value")
    section = org.run("-o", "csv", "status", "--section", "health")
    assert section.stdout.startswith("check,value") and "failing users" in section.stdout
    writes = org.run("-o", "csv", "status", "--section", "recent")
    assert person in writes.stdout and len(_tables(writes.stdout)) == 1


def test_users_counts_and_the_sync_user_is_not_unmatched(org: Org) -> None:
    sync_user = load_profile("sandbox").sync_username
    assert sync_user
    unmatched = org.run("-o", "json", "users", "--unmatched")
    assert sync_user not in {r["email"] for r in unmatched.json()}
    every = org.run("-o", "json", "users").json()
    assert [r["status"] for r in every if r["email"] == sync_user] == ["sync_user"]
    plain = org.run("users")
    assert "matched" in plain.stderr.splitlines()[-1] and "shown" in plain.stderr


def test_disable_works_with_an_invalid_mapping_override(org: Org) -> None:
    person = org.people[1].email
    org.connect(person, "onphone")
    assert org.run("enable").exit_code == 0
    assert org.sync().exit_code == 0
    assert org.our_sessions() > 0
    text = config_path().read_text() + '[profiles.sandbox.mapping.connect_to_teams]\nnope = "x"\n'
    config_path().write_text(text)
    assert org.run("sync").exit_code == 3  # the sync itself refuses the bad mapping
    result = org.run("-o", "json", "disable", "--yes")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert org.our_sessions() == 0
    profile = load_profile("sandbox", check_mapping=False)
    assert profile.enabled_direction is None
    assert profile.mapping == {"connect_to_teams": {"nope": "x"}}  # kept for the admin to fix


def test_disable_failures_name_people_and_the_hint_fits_the_format(org: Org) -> None:
    person = org.people[0].email
    org.teams(person, "Busy", "InACall")  # a Connect session of ours for this person
    assert org.run("enable").exit_code == 0
    assert org.sync().exit_code == 0
    org.sb.control.post("/_sandbox/faults", json={"drop_rate": 1.0}).raise_for_status()
    as_json = org.run("-o", "json", "disable", "--yes")
    assert as_json.exit_code == 5, as_json.stdout + as_json.stderr
    data = as_json.json()
    assert [f["user"] for f in data["failures"]] == [person]  # an email, not a GUID
    assert "listed above" not in data["error"]["hint"] and '"failures"' in data["error"]["hint"]
    plain = org.run("disable", "--yes")
    assert plain.exit_code == 5
    assert "Could not be cleared" in plain.stdout and person in plain.stdout
    assert "listed above" in plain.stderr


def test_health_shows_facts_other_parts_record(tmp_path: Any) -> None:
    from presencectl.sync import health
    from presencectl.sync.state import StateStore

    with StateStore(tmp_path / "s.db") as store:
        assert health.health_report(store)["last_cycle_at"] is None
        health.record(store, {"notifications": "2 subscriptions, last notification 3 s ago"})
        report = health.health_report(store)
        assert report["notifications"] == "2 subscriptions, last notification 3 s ago"
        assert ("notifications", "2 subscriptions, last notification 3 s ago") in (
            health.health_lines(report)
        )
