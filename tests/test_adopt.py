"""Adoption end to end: runs without their state database never take our own sessions for the
users' states (issue: two stateless `sync` runs left people "In a call" for good)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_engine_sandbox import ADMIN, Org

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def org(cli: Any) -> Iterator[Org]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=30, seed=3, auto_approve=ADMIN) as sb:
        yield Org(sb, cli)
    gc.collect()  # msal's HTTP sessions of the in-process CLI: collected here, not later


def _fresh_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, n: int) -> None:
    monkeypatch.setenv("PRESENCECTL_STATE_DIR", str(tmp_path / f"state-{n}"))


def test_stateless_runs_leave_nobody_stuck_in_a_call(
    org: Org, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert org.run("enable").exit_code == 0
    agent, caller = org.people[0].email, org.people[1].email
    org.connect(agent, "onphone")  # on a Connect call
    org.teams(agent, "Available", "Available")
    org.teams(caller, "Busy", "InACall")  # on a Teams call
    org.connect(caller, "available")

    _fresh_state(monkeypatch, tmp_path, 1)
    first = org.sync().json()
    assert org.teams_pair(agent) == "Busy/InACall"  # our Teams session
    assert org.connect_shows(caller)["status"] == "onphone"  # our Connect session
    assert first["adopted"] == first["matched"]  # nothing known yet: every pair adopted

    _fresh_state(monkeypatch, tmp_path, 2)  # the state is lost (a container without a volume)
    second = org.sync().json()
    assert second["adopted"] == second["matched"]
    # Our sessions were cleared before reading, then written again from the users' own states.
    assert second["cleared"] >= 2 and second["written"] >= 2
    assert org.teams_pair(agent) == "Busy/InACall"
    assert org.connect_shows(caller)["status"] == "onphone"

    org.connect(agent, "available")  # both calls end
    org.teams(caller, "Available", "Available")
    _fresh_state(monkeypatch, tmp_path, 3)
    org.sync()
    _fresh_state(monkeypatch, tmp_path, 4)
    org.sync()
    assert org.teams_pair(agent) != "Busy/InACall"
    assert org.connect_shows(agent)["status"] == "available"
    assert org.connect_shows(caller)["status"] != "onphone"
    assert org.teams_pair(caller) == "Available/Available"


def test_a_stateful_run_adopts_nothing_and_writes_nothing_more(
    org: Org, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert org.run("enable").exit_code == 0
    first = org.sync().json()
    assert first["adopted"] == first["matched"]
    writes = org.sb.world.stats.writes
    second = org.sync().json()  # the state database is kept: nothing to adopt, no clears sent
    assert second["adopted"] == 0
    assert org.sb.world.stats.writes == writes


def test_dry_run_adopts_nothing(org: Org) -> None:
    assert org.run("enable").exit_code == 0
    result = org.run("-o", "json", "sync", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.json()["adopted"] == 0
    assert org.sb.world.stats.writes == 0


def test_a_stop_during_adoption_leaves_the_rest_for_the_next_run(
    org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from presencectl.config import load_profile
    from presencectl.sync import engine as engine_module
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.service import engine_for

    assert org.run("enable").exit_code == 0
    monkeypatch.setattr(engine_module, "WRITE_CHUNK_PAIRS", 5)

    async def once(stop_after_first_send: bool) -> Any:
        stop = asyncio.Event()
        async with engine_for(load_profile("sandbox"), EngineOptions()) as engine:
            send = engine._send

            async def sending(actions: Any) -> Any:
                outcomes = await send(actions)
                if stop_after_first_send:
                    stop.set()
                return outcomes

            engine._send = sending  # type: ignore[method-assign]
            return await engine.run_once(stop=stop)

    first = asyncio.run(once(True))
    assert first.interrupted and first.adopted == 5 and first.failed == 0
    # Stopped before reading, the five have no state yet: adopted again (their clears are
    # idempotent: 404 = none), with the rest.
    second = asyncio.run(once(False))
    assert second.adopted == second.matched and second.failed == 0
    third = asyncio.run(once(False))
    assert third.adopted == 0
