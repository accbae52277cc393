"""Day-two figures (issue 14): what a stateless run costs, and how a watch rides out an outage.

A sandbox process, the ``bench`` profile enabled for both directions (as an administrator leaves
it), presencectl as child processes — as cron, CI and systemd run it.

1. **Adoption**: one-shot ``sync`` runs with a fresh ``PRESENCECTL_STATE_DIR`` each (a container
   without its volume), then one with its state kept. Per run: pairs adopted (our session cleared
   on both sides before reading), sessions of ours that were really there, sandbox requests, wall
   time. Two people are on calls, so the first run writes sessions of ours that the second
   (stateless again) must clear before it reads.
2. **Outage**: ``sync --watch`` runs; the sandbox drops every connection for ``--outage`` seconds
   (fault ``outage_s``) while a Teams call and a Connect call start. Timed from the moment the
   outage is set: when the watch reports it (``outage`` event), when it reports ``recovered``, and
   when both calls have reached the other side; then SIGTERM and the exit code (0 expected: the
   outage's failures have healed). Run once with every service down (``outage_target`` all) and
   once with Connect alone down (``connect``: the watch must back off from Connect too).

    python bench/day_two.py [--users 1000] [--outage 30] [--interval 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import engine_driver
from _harness import PROFILE, Report, SandboxProcess, isolated_env, progress

TIMEOUT_S = 600.0


def _sync_once() -> dict[str, Any]:
    out = engine_driver.cli("-o", "json", "sync")
    return dict(json.loads(out))


def _wait(check: Callable[[], Any], what: str) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < TIMEOUT_S:
        if check():
            return time.perf_counter()
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def adoption(sb: SandboxProcess, people: list[str], report: Report, base: Path) -> None:
    caller, agent = people[0], people[1]
    for run, fresh in enumerate([True, True, False]):
        if fresh:
            os.environ["PRESENCECTL_STATE_DIR"] = str(base / f"state-{run}")
        if run == 0:
            sb.set_teams(caller, "Busy", "InACall")
            sb.set_connect(agent, "onphone")
        before = sb.stats()["total_requests"]
        started = time.perf_counter()
        summary = _sync_once()
        report.add(
            run="stateless" if fresh else "state kept",
            matched=summary["matched"],
            adopted=summary["adopted"],
            cleared=summary["cleared"],
            written=summary["written"],
            failed=summary["failed"],
            requests=sb.stats()["total_requests"] - before,
            wall_s=time.perf_counter() - started,
        )
        progress(f"adoption run {run}: {summary['adopted']} adopted")


def outage(
    sb: SandboxProcess,
    people: list[str],
    seconds: float,
    interval: float,
    report: Report,
    target: str = "all",
) -> None:
    caller, agent = people[2], people[3]
    for email in (caller, agent):
        sb.set_teams(email, "Available", "Available")
        sb.set_connect(email, "available")
    _sync_once()
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "presencectl", "--profile", PROFILE, "--no-input", "-o",
             "json", "sync", "--watch", "--interval", str(interval)],
            stdout=out, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy(),
        )  # fmt: skip

        def events(kind: str) -> list[dict[str, Any]]:
            out.seek(0)
            lines = [json.loads(line) for line in out.read().splitlines() if line.strip()]
            out.seek(0, 2)
            return [e for e in lines if e.get("event") == kind]

        _wait(lambda: events("cycle"), "the first cycle")
        t0 = time.perf_counter()
        sb.faults(outage_s=seconds, outage_target=target)
        sb.set_teams(caller, "Busy", "InACall")
        sb.set_connect(agent, "onphone")
        detected = _wait(lambda: events("outage"), "the outage to be noticed") - t0
        recovered = _wait(lambda: events("recovered"), "recovery") - t0
        converged = (
            _wait(
                lambda: (
                    sb.connect(caller)["status"] == "onphone"
                    and sb.teams(agent)["activity"] == "InACall"
                ),
                "both calls on the other side",
            )
            - t0
        )
        retries = len(events("outage"))
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    sb.faults(outage_target="all")
    report.add(
        target=target,
        outage_s=seconds,
        interval_s=interval,
        noticed_s=detected,
        recovered_after_return_s=recovered - seconds,
        converged_after_return_s=converged - seconds,
        outage_reports=retries,
        exit_code=code,
    )
    back = recovered - seconds
    progress(f"outage {seconds:g} s ({target}): recovered {back:.1f} s after the return")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    adopted = Report(
        "day_two_adoption",
        ["run", "matched", "adopted", "cleared", "written", "failed", "requests", "wall_s"],
    )
    survived = Report(
        "day_two_outage",
        ["target", "outage_s", "interval_s", "noticed_s", "recovered_after_return_s",
         "converged_after_return_s", "outage_reports", "exit_code"],
    )  # fmt: skip
    with isolated_env() as base, SandboxProcess(users=args.users, seed=args.seed) as sb:
        engine_driver.prepare(sb)
        rows = json.loads(engine_driver.cli("-o", "json", "users"))
        skip = {"admin@contoso.example", sb.profile_info()["sync_user"]}
        people = [r["email"] for r in rows if r["status"] == "matched" and r["email"] not in skip]
        adoption(sb, people, adopted, base)
        outage(sb, people, args.outage, args.interval, survived)
        outage(sb, people, args.outage, args.interval, survived, target="connect")
    adopted.notes.append(
        "stateless: every matched pair's session cleared on both sides before reading "
        "(404 = none); cleared counts the sessions of ours that were really there"
    )
    adopted.emit()
    survived.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
