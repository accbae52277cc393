"""Safe to leave running, end to end against the sandbox with real subprocesses: one instance per
profile, signals, a closed pipe, state problems, bad intervals.

The sandbox runs in this process (its world is at hand); presencectl runs as
``sys.executable -m presencectl`` children sharing this test's config and state dirs (file
secrets backend, so that they see what the in-process setup stored). No wall-clock assertion:
every wait is for a condition, with a generous timeout.
"""

from __future__ import annotations

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
