"""Safe to leave running, end to end against the sandbox with real subprocesses: one instance per
profile, signals, a closed pipe, state problems, bad intervals.

The sandbox runs in this process (its world is at hand); presencectl runs as
``sys.executable -m presencectl`` children sharing this test's config and state dirs (file
secrets backend, so that they see what the in-process setup stored). No wall-clock assertion:
every wait is for a condition, with a generous timeout.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_engine_sandbox import ADMIN, Org

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def org(cli: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Org]:
    from presencectl.sandbox import running_sandbox

    monkeypatch.setenv("PRESENCECTL_SECRETS_BACKEND", "file")
    with running_sandbox(users=30, seed=3, auto_approve=ADMIN) as sb:
        o = Org(sb, cli)
        assert o.run("enable").exit_code == 0
        yield o
    # The in-process CLI leaves msal's HTTP sessions to the collector; collect them here, not
    # inside a later test that turns warnings into errors (tests/test_sandbox_serve.py).
    gc.collect()


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "presencectl", "--profile", "sandbox", "--no-input", *args]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


class Child:
    """A presencectl child whose stdout and stderr go to files (a pipe nobody reads fills up)."""

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.out_path, self.err_path = tmp / f"{name}.out", tmp / f"{name}.err"
        self._out, self._err = self.out_path.open("w"), self.err_path.open("w")
        self.proc = subprocess.Popen(
            command(*args), stdout=self._out, stderr=self._err, text=True, env=os.environ.copy()
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout().splitlines() if line.strip()]

    def wait(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout)
        self._out.close()
        self._err.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    started: list[Child] = []

    def start(name: str, *args: str) -> Child:
        child = Child(tmp_path, name, *args)
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def cycles(child: Child) -> int:
    return sum(1 for e in child.events() if e.get("event") == "cycle")


# -- one instance per profile --------------------------------------------------------------------


def test_a_second_instance_is_refused_and_a_killed_one_never_blocks(
    org: Org, children: Callable[..., Child]
) -> None:
    from presencectl.sync.lock import lock_path, read_holder

    watch = children("watch", "-o", "json", "sync", "--watch", "--interval", "0.5")
    wait_for(lambda: read_holder(lock_path("sandbox")).pid == watch.pid, "the watch's lock")
    wait_for(lambda: cycles(watch) >= 1, "the first cycle")

    second = run("-o", "json", "sync")
    assert second.returncode == 3, second.stdout + second.stderr
    error = json.loads(second.stdout)["error"]
    assert error["code"] == "already_running"
    assert f"PID {watch.pid}" in error["message"] and "sync --watch" in error["message"]
    another_watch = run("sync", "--watch", "--max-cycles", "1")
    assert another_watch.returncode == 3
    assert f"already in use by PID {watch.pid}" in another_watch.stderr
    disable = run("-o", "json", "disable", "--yes")
    assert disable.returncode == 3 and json.loads(disable.stdout)["error"]["code"] == (
        "already_running"
    )
    dry = run("-o", "json", "sync", "--dry-run")  # writes nothing: needs no lock
    assert dry.returncode == 0, dry.stderr

    watch.proc.send_signal(signal.SIGKILL)  # dies holding the lock
    watch.wait()
    after = run("-o", "json", "sync")
    assert after.returncode == 0, after.stdout + after.stderr
    assert read_holder(lock_path("sandbox")).pid not in (None, watch.pid)  # the new holder's


# -- bad intervals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--watch", "--interval", "0.1"],
        ["--watch", "--interval", "0"],
        ["--watch", "--interval", "-1"],
        ["--watch", "--max-cycles", "0"],
        ["--watch", "--max-cycles", "-3"],
    ],
)
def test_intervals_below_the_floor_are_usage_errors(cli: Any, args: list[str]) -> None:
    result = cli("-o", "json", "sync", *args)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.json()["error"]["code"] == "usage"


# -- signals ---------------------------------------------------------------------------------------


def _sandbox_writes(org: Org) -> int:
    return int(org.sb.world.stats.writes)


def _audit_ok_since(after_id: int) -> int:
    import sqlite3

    from presencectl.sync.state import database_path

    with sqlite3.connect(database_path("sandbox")) as db:
        row = db.execute(
            "SELECT count(*) FROM audit WHERE id > ? AND outcome = 'ok'", (after_id,)
        ).fetchone()
    return int(row[0])


def _last_audit_id() -> int:
    import sqlite3

    from presencectl.sync.state import database_path

    with sqlite3.connect(database_path("sandbox")) as db:
        return int(db.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()[0])


def _pending_teams_writes(value: str) -> set[str]:
    """The Azure ids with a pending (sent or about to be, not yet seen) Teams write of ``value``."""
    import sqlite3

    from presencectl.sync.state import database_path

    with sqlite3.connect(database_path("sandbox")) as db:
        rows = db.execute(
            "SELECT key FROM pending_writes WHERE side = 'teams' AND value = ?", (value,)
        ).fetchall()
    return {str(key).partition(":")[0] for (key,) in rows}


def _integrity() -> str:
    import sqlite3

    from presencectl.sync.state import database_path

    with sqlite3.connect(database_path("sandbox")) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def _calls_everywhere(org: Org) -> None:
    """Six Connect calls (→ Teams writes, one $batch) and six Teams calls (→ Connect writes)."""
    for person in org.people[:6]:
        org.connect(person.email, "onphone")
        org.teams(person.email, "Available", "Available")
    for person in org.people[6:12]:
        org.teams(person.email, "Busy", "InACall")
        org.connect(person.email, "available")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_batch_finishes_it_records_it_and_exits_130(
    org: Org, children: Callable[..., Child], sig: signal.Signals
) -> None:
    assert run("sync").returncode == 0  # adopt every pair first: the next run has state
    _calls_everywhere(org)
    org.sb.control.post("/_sandbox/faults", json={"latency_ms": 800}).raise_for_status()
    baseline, audit_before = _sandbox_writes(org), _last_audit_id()

    once = children("once", "-o", "json", "sync")
    wait_for(lambda: _sandbox_writes(org) > baseline, "the first write to land")
    once.proc.send_signal(sig)  # the Teams $batch (six members, 0.8 s each) is still in flight
    assert once.wait() == 130, once.stderr()
    org.sb.control.post("/_sandbox/faults", json={"latency_ms": 0}).raise_for_status()

    document = json.loads(once.stdout())  # one JSON document
    assert document["interrupted"] is True
    assert document["error"]["code"] == "interrupted"
    landed = _sandbox_writes(org) - baseline
    assert landed >= 12  # the batch in flight was finished, not dropped
    assert document["written"] + document["cleared"] == landed
    assert _audit_ok_since(audit_before) == landed  # every write that landed has its audit row
    last = json.loads(run("-o", "json", "status").stdout)["last_run"]
    assert last["outcome"] == "interrupted" and last["written"] == document["written"]
    assert "Traceback" not in once.stderr()

    again = json.loads(run("-o", "json", "sync").stdout)  # nothing lost, nothing repeated
    assert again["written"] == 0 and again["failed"] == 0


@pytest.mark.slow  # subprocesses under 1.5 s of sandbox latency, and one echo window (2 s)
def test_a_second_signal_aborts_at_once_and_the_database_stays_consistent(
    org: Org, children: Callable[..., Child]
) -> None:
    assert run("config", "set", "echo_window_s", "2").returncode == 0  # the shortest allowed
    assert run("sync").returncode == 0
    _calls_everywhere(org)
    org.sb.control.post("/_sandbox/faults", json={"latency_ms": 1500}).raise_for_status()
    baseline = _sandbox_writes(org)

    once = children("once", "sync")
    wait_for(lambda: _sandbox_writes(org) > baseline, "the first write to land")
    once.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "again to abort" in once.stderr(), "the first signal's note")
    once.proc.send_signal(signal.SIGINT)
    assert once.wait() == 130
    assert "Traceback" not in once.stderr()
    org.sb.control.post("/_sandbox/faults", json={"latency_ms": 0}).raise_for_status()
    assert _integrity() == "ok"

    # The intent saved before sending: each Teams write the abort may have cut off (the sandbox
    # does not show it) is a pending write in the state, so no later run can forget it.
    unlanded = {p.azure_id for p in org.people[:6] if org.teams_pair(p.email) != "Busy/InACall"}
    assert unlanded <= _pending_teams_writes("Busy/InACall"), unlanded
    resumed = run("-o", "json", "sync")  # and it is honoured
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    # A pending write may have landed unseen: it counts as in flight for the echo window (2 s
    # here), then the write is made again. Synced until it shows, within a liveness deadline.
    def all_shown() -> bool:
        assert run("sync").returncode == 0
        return all(org.teams_pair(p.email) == "Busy/InACall" for p in org.people[:6])

    wait_for(all_shown, "the intended Teams writes to show", timeout=30)
    assert not _pending_teams_writes("Busy/InACall") & unlanded  # landed, no longer pending
    settled = json.loads(run("-o", "json", "sync").stdout)
    assert settled["written"] == 0 and settled["cleared"] == 0
    for person in org.people[:6]:
        assert org.teams_pair(person.email) == "Busy/InACall"
    for person in org.people[6:12]:
        assert org.connect_shows(person.email)["status"] == "onphone"
    assert run("disable", "--yes").returncode == 0
    assert org.our_sessions() == 0  # the state knew every session, the aborted batch's too


# -- exit codes of a long run ----------------------------------------------------------------------


class _RefusingConnect:
    """A person's Connect presence that refuses every write (the rest is the real one)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def aggregate_with(self, *args: Any, **kwargs: Any) -> Any:  # the view writes go through
        return _RefusingConnect(self._real.aggregate_with(*args, **kwargs))

    def set(self, *args: Any, **kwargs: Any) -> Any:
        from presencectl.sandbox.connect_api import ConnectError

        raise ConnectError(400, "invalid_request", "refused by the test")


def _refuse_connect_writes(org: Org, email: str) -> Callable[[], None]:
    """Connect refuses (400) every write to one person until the returned undo is called."""
    person = org.sb.world.person_by_email(email)
    real = person.connect
    person._connect = _RefusingConnect(real)

    def undo() -> None:
        person._connect = real

    return undo


def _writes_for(child: Child, email: str, outcome: str) -> int:
    return sum(
        1
        for e in child.events()
        if e.get("event") == "write" and e.get("user") == email and e.get("outcome") == outcome
    )


def test_a_stopped_watch_exits_0_once_its_failures_healed_and_5_while_one_still_fails(
    org: Org, children: Callable[..., Child]
) -> None:
    assert run("sync").returncode == 0
    healed, stuck = org.people[0].email, org.people[1].email

    undo = _refuse_connect_writes(org, healed)
    watch = children("healed", "-o", "json", "sync", "--watch", "--interval", "0.5")
    wait_for(lambda: cycles(watch) >= 1, "the first cycle")
    org.teams(healed, "Busy", "InACall")
    wait_for(lambda: _writes_for(watch, healed, "failed") >= 1, "a failed write")
    undo()
    wait_for(lambda: _writes_for(watch, healed, "ok") >= 1, "the retried write")
    watch.proc.send_signal(signal.SIGTERM)
    assert watch.wait() == 0, watch.stderr()  # an hour-old failure since healed is no failure
    stop = watch.events()[-1]
    assert stop["event"] == "stop" and stop["failed"] == 0 and stop["interrupted"] is True
    assert org.connect_shows(healed)["status"] == "onphone"

    _refuse_connect_writes(org, stuck)
    watch = children("stuck", "-o", "json", "sync", "--watch", "--interval", "0.5")
    wait_for(lambda: cycles(watch) >= 1, "the first cycle")
    org.teams(stuck, "Busy", "InACall")
    wait_for(lambda: _writes_for(watch, stuck, "failed") >= 2, "the write failing, retried")
    watch.proc.send_signal(signal.SIGINT)
    assert watch.wait() == 5, watch.stderr()
    lines = watch.events()
    stop = next(e for e in lines if e.get("event") == "stop")
    assert stop["failed"] == 1 and [f["user"] for f in stop["failures"]] == [stuck]
    assert lines[-1]["error"]["code"] == "partial_sync" and stuck in lines[-1]["error"]["message"]


# -- a closed pipe ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_a_watch_whose_reader_leaves_stops_quietly_with_exit_0(
    org: Org, tmp_path: Path, fmt: str
) -> None:
    """``presencectl sync --watch -o json | head -1``."""
    err_path = tmp_path / "watch.err"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            command("-o", fmt, "sync", "--watch", "--interval", "0.5"),
            stdout=subprocess.PIPE, stderr=err, text=True, env=os.environ.copy(),
        )  # fmt: skip
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip()  # `head -1` got its line…
        proc.stdout.close()  # …and left
        code = proc.wait(120)
    stderr = err_path.read_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    from presencectl.sync.lock import lock_path, read_holder

    assert read_holder(lock_path("sandbox")).pid == proc.pid  # it ran under the lock…
    assert run("sync").returncode == 0  # …and released it on its way out


# -- the watch survives the world ------------------------------------------------------------------


def _faults(org: Org, **values: Any) -> None:
    org.sb.control.post("/_sandbox/faults", json=values).raise_for_status()


def _events_of(child: Child, kind: str) -> list[dict[str, Any]]:
    return [e for e in child.events() if e.get("event") == kind]


def test_the_sandbox_outage_drops_every_connection_but_the_control_api(org: Org) -> None:
    import ssl

    import httpx

    tls = ssl.create_default_context(cafile=org.sb.ca_bundle)
    _faults(org, outage_s=3600)
    with httpx.Client(verify=tls, timeout=10) as client:
        with pytest.raises(httpx.TransportError):
            client.get(
                f"{org.sb.base_url}/{org.sb.world.tenant_id}/v2.0/.well-known/openid-configuration"
            )
        with pytest.raises(httpx.TransportError):
            client.get(f"{org.sb.base_url}/v1.0/users")
    assert org.sb.control.get("/_sandbox/health").json() == {"status": "ok"}
    _faults(org, outage_s=0)  # ends it at once
    with httpx.Client(verify=tls, timeout=10) as client:
        metadata = (
            f"{org.sb.base_url}/{org.sb.world.tenant_id}/v2.0/.well-known/openid-configuration"
        )
        assert client.get(metadata).status_code == 200


def test_a_watch_waits_out_an_outage_and_reconciles_in_full(
    org: Org, children: Callable[..., Child]
) -> None:
    assert run("sync").returncode == 0
    caller, agent = org.people[0].email, org.people[1].email
    watch = children("watch", "-o", "json", "sync", "--watch", "--interval", "0.5")
    wait_for(lambda: cycles(watch) >= 1, "the first cycle")

    _faults(org, outage_s=3600)  # every connection to Entra, Graph and Connect dropped
    org.teams(caller, "Busy", "InACall")  # changes nobody can see during the outage
    org.connect(agent, "onphone")
    outage = wait_for(lambda: _events_of(watch, "outage"), "the watch to notice", timeout=180)[0]
    assert "unreachable since" in outage["message"] and "retrying in" in outage["message"]
    status = json.loads(run("-o", "json", "status").stdout)
    assert "unreachable since" in (status["outage"] or "")
    wait_for(lambda: len(_events_of(watch, "outage")) >= 2, "a second try", timeout=180)
    assert watch.proc.poll() is None  # still running

    _faults(org, outage_s=0)  # the network returns
    recovered = wait_for(lambda: _events_of(watch, "recovered"), "recovery", timeout=180)[0]
    assert recovered["down_s"] > 0
    wait_for(lambda: org.connect_shows(caller)["status"] == "onphone", "Teams → Connect")
    wait_for(lambda: org.teams_pair(agent) == "Busy/InACall", "Connect → Teams")
    assert watch.proc.poll() is None
    assert json.loads(run("-o", "json", "status").stdout)["outage"] is None

    watch.proc.send_signal(signal.SIGTERM)
    assert watch.wait() == 0, watch.stderr()  # the failures of the outage have healed
    assert "Traceback" not in watch.stderr()


def _at_least(n: int, events: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    return events if len(events) >= n else None


def _connect_reads(org: Org) -> int:
    stats = org.sb.control.get("/_sandbox/stats").json()
    return int(stats["requests"].get("connect.presence.get", 0))


def test_the_connect_outage_drops_connect_alone(org: Org) -> None:
    import ssl

    import httpx

    tls = ssl.create_default_context(cafile=org.sb.ca_bundle)
    _faults(org, outage_s=3600, outage_target="connect")
    profile = org.sb.control.get("/_sandbox/profile").json()
    with httpx.Client(verify=tls, timeout=10) as client:
        with pytest.raises(httpx.TransportError):
            client.post(f"{profile['connect_login_url']}/user/connect/token", data={})
        metadata = (
            f"{org.sb.base_url}/{org.sb.world.tenant_id}/v2.0/.well-known/openid-configuration"
        )
        assert client.get(metadata).status_code == 200  # Microsoft's side still answers
    _faults(org, outage_target="microsoft")
    with httpx.Client(verify=tls, timeout=10) as client:
        with pytest.raises(httpx.TransportError):
            client.get(metadata)
        answer = client.post(f"{profile['connect_login_url']}/user/connect/token", data={})
        assert answer.status_code == 400  # Connect answers again (a form without a client)
    _faults(org, outage_s=0, outage_target="all")
    bad = org.sb.control.post("/_sandbox/faults", json={"outage_target": "graph"})
    assert bad.status_code == 400 and "all, connect, microsoft" in bad.json()["error"]["message"]


def test_a_watch_backs_off_while_connect_is_down_and_reconciles_when_it_returns(
    org: Org, children: Callable[..., Child]
) -> None:
    """Connect alone unreachable while the watch runs: the watch stops polling it every cycle,
    backs off (the same capped exponential backoff as for Graph), says so in the stream and in
    ``status``, and reconciles in full when Connect returns."""
    assert run("sync").returncode == 0
    caller, agent = org.people[0].email, org.people[1].email
    watch = children("watch", "-o", "json", "sync", "--watch", "--interval", "0.5")
    wait_for(lambda: cycles(watch) >= 1, "the first cycle")

    _faults(org, outage_s=3600, outage_target="connect")  # Graph and Entra stay reachable
    org.teams(caller, "Busy", "InACall")  # a change Connect cannot be told of meanwhile
    org.connect(agent, "onphone")  # a change whose feed event is lost with the connection
    first = wait_for(lambda: _events_of(watch, "outage"), "the watch to notice", timeout=180)[0]
    assert first["service"] == "Connect", first
    assert first["message"].startswith("Connect unreachable since ")
    assert "retrying in" in first["message"] and first["retry_at"]
    polls_when_noticed = cycles(watch)
    status = json.loads(run("-o", "json", "status").stdout)
    assert (status["outage"] or "").startswith("Connect unreachable since"), status["outage"]
    outages = wait_for(lambda: _at_least(3, _events_of(watch, "outage")), "more tries", 180)
    assert [o["attempts"] for o in outages[:3]] == [1, 2, 3]
    assert all(o["service"] == "Connect" for o in outages)
    # Backing off, not polling: no cycle completed while Connect was down (each try is one
    # failed poll), and the waits grow (equal jitter: never under half the doubled step).
    assert cycles(watch) == polls_when_noticed
    assert outages[2]["retry_in_s"] >= 4.0 > outages[0]["retry_in_s"] / 2
    assert watch.proc.poll() is None

    _faults(org, outage_s=0)  # Connect returns
    recovered = wait_for(lambda: _events_of(watch, "recovered"), "recovery", timeout=180)[0]
    assert recovered["service"] == "Connect" and recovered["down_s"] > 0
    wait_for(lambda: org.connect_shows(caller)["status"] == "onphone", "Teams → Connect")
    wait_for(lambda: org.teams_pair(agent) == "Busy/InACall", "Connect → Teams (read in full)")
    assert json.loads(run("-o", "json", "status").stdout)["outage"] is None

    watch.proc.send_signal(signal.SIGTERM)
    assert watch.wait() == 0, watch.stderr()
    assert "Traceback" not in watch.stderr()
    _faults(org, outage_target="all")


def test_a_watch_started_while_connect_is_down_waits_for_it(
    org: Org, children: Callable[..., Child]
) -> None:
    assert run("sync").returncode == 0
    agent = org.people[1].email
    _faults(org, outage_s=3600, outage_target="connect")
    org.connect(agent, "onphone")
    watch = children("watch", "-o", "json", "sync", "--watch", "--interval", "0.5")
    outages = wait_for(lambda: _at_least(2, _events_of(watch, "outage")), "two tries", 180)
    assert all(o["service"] == "Connect" for o in outages), outages
    assert cycles(watch) == 0 and watch.proc.poll() is None
    reads_while_down = _connect_reads(org)

    _faults(org, outage_s=0)
    wait_for(lambda: _events_of(watch, "recovered"), "recovery", timeout=180)
    wait_for(lambda: org.teams_pair(agent) == "Busy/InACall", "Connect → Teams")
    assert _connect_reads(org) > reads_while_down  # read in full once it answered
    watch.proc.send_signal(signal.SIGTERM)
    assert watch.wait() == 0, watch.stderr()
    _faults(org, outage_target="all")


def test_an_interrupted_disable_keeps_what_it_needs_to_finish(org: Org) -> None:
    """The stop comes before the first chunk: nothing is cleared, the state still knows every
    session, the profile stays enabled; run again, and everything is cleared."""
    import asyncio

    from presencectl.config import load_profile
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.service import engine_for

    _calls_everywhere(org)
    assert run("sync").returncode == 0
    held = org.our_sessions()
    assert held > 0

    async def interrupted() -> Any:
        stop = asyncio.Event()
        stop.set()
        async with engine_for(load_profile("sandbox"), EngineOptions()) as engine:
            return await engine.disable(stop=stop)

    result = asyncio.run(interrupted())
    assert result.interrupted and result.teams_cleared + result.connect_cleared == 0
    assert org.our_sessions() == held
    finished = run("-o", "json", "disable", "--yes")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert json.loads(finished.stdout)["interrupted"] is False
    assert org.our_sessions() == 0


def test_a_stop_ends_a_big_write_plan_after_the_chunk_in_flight(
    org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes go out (and are persisted) a chunk of pairs at a time, so a stop waits for one
    chunk, not for the whole plan; the next run writes the rest, nothing twice."""
    import asyncio

    from presencectl.config import load_profile
    from presencectl.sync import engine as engine_module
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.service import engine_for

    assert run("sync").returncode == 0
    _calls_everywhere(org)  # twelve pairs to write
    monkeypatch.setattr(engine_module, "WRITE_CHUNK_PAIRS", 3)

    async def once(stop_on_first_write: bool) -> Any:
        stop = asyncio.Event()

        def on_event(event: Any) -> None:
            if stop_on_first_write and event.type == "write":
                stop.set()

        profile = load_profile("sandbox")
        async with engine_for(profile, EngineOptions(), on_event=on_event) as engine:
            return await engine.run_once(stop=stop)

    first = asyncio.run(once(True))
    assert first.interrupted
    first_users = {a.user for a in first.actions}
    assert len(first_users) == 3  # one chunk
    second = asyncio.run(once(False))
    assert not second.interrupted
    assert {a.user for a in second.actions}.isdisjoint(first_users)  # nothing twice
    assert len(first_users) + len({a.user for a in second.actions}) == 12
    for person in org.people[:6]:
        assert org.teams_pair(person.email) == "Busy/InACall"
    for person in org.people[6:12]:
        assert org.connect_shows(person.email)["status"] == "onphone"
