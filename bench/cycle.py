"""Cost of a sync cycle as the organisation grows: one-shot runs and steady watch cycles.

Per size (each in its own process, so peak RSS is that size's): a sandbox process with that many
people; the profile prepared as an administrator does (setup-azure, sync user, enable both); a
first one-shot run converges both sides (throttle lifted for it: it is set-up, not the figure);
then, under the documented throttle (1,500 per 30 s):
- ``steady``: a one-shot run with nothing changed (it must read every Connect user one by one);
- ``10% changed``: 10 % of users changed their status on Connect and another 10 % on Teams, then
  a one-shot run;
- ``watch``: steady-state watch cycles (Teams poll + plan + writes; Connect by its feed).
Reported: wall time, planning CPU (``presencectl.sync.plan.plan`` alone), Graph/Connect requests
per endpoint (from the sandbox's own counters), peak RSS of the presencectl process.

    python bench/cycle.py --users 1000,10000,50000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import engine_driver
from _harness import (
    Report,
    SandboxProcess,
    graph_requests,
    isolated_env,
    matched_pairs,
    median,
    parse_sizes,
    peak_rss_mb,
    progress,
)

THROTTLE = (1500, 30.0)
TEAMS_CHANGES = [
    ("Busy", "InACall"),
    ("DoNotDisturb", "Presenting"),
    ("Available", "Available"),
    ("BeRightBack", "BeRightBack"),
    ("Busy", "InAConferenceCall"),
]
CONNECT_CHANGES = ["onphone", "available", "meeting", "dnd", "agent_onphone", "busy"]


def endpoint_counts(stats: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in stats["requests"].items() if v}


def change_ten_percent(sb: SandboxProcess, pairs: list[Any], rng: random.Random) -> int:
    k = max(1, len(pairs) // 10)
    chosen = rng.sample(pairs, min(len(pairs), 2 * k))
    for p in chosen[:k]:
        sb.set_connect(p.email, rng.choice(CONNECT_CHANGES))
    for p in chosen[k:]:
        sb.set_teams(p.email, *rng.choice(TEAMS_CHANGES))
    return len(chosen)


def measure_one(users: int, seed: int, watch_cycles: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with isolated_env(), SandboxProcess(users=users, seed=seed, throttle=10**7) as sb:
        progress(f"{users} users: sandbox up in {sb.start_s:.1f} s; preparing the profile")
        profile = engine_driver.prepare(sb)
        pairs = asyncio.run(matched_pairs(profile))
        progress(f"{len(pairs)} matched; first one-shot run (converge)")
        first = engine_driver.one_shot(profile, limit=10**7, window=30.0)
        sb.faults(throttle_per_30s=THROTTLE[0], throttle_window=THROTTLE[1])

        def record(name: str, result: dict[str, Any], stats: dict[str, Any]) -> None:
            rows.append(
                {
                    "users": users,
                    "run": name,
                    "matched": result.get("matched"),
                    "wall_s": result["elapsed"],
                    "plan_cpu_ms": result["plan_cpu_s"] * 1000,
                    "written": result.get("ok"),
                    "graph_requests": graph_requests(stats),
                    "connect_requests": sum(
                        v for k, v in stats["requests"].items() if k.startswith("connect.")
                    ),
                    "presence_reads": stats["requests"].get("graph.getPresencesByUserId", 0),
                    "throttled": stats["throttled"],
                    "endpoints": endpoint_counts(stats),
                }
            )

        record("first run (converge, unthrottled)", first, {"requests": {}, "throttled": 0})
        rows[-1].update(graph_requests=None, connect_requests=None, presence_reads=None)

        def empty_window() -> None:  # each timed run starts with the throttle window empty
            sb.control.post(
                "/_sandbox/clock/advance", json={"seconds": THROTTLE[1] + 1}
            ).raise_for_status()

        empty_window()  # the first run's writes would otherwise throttle the steady run
        sb.reset_stats()
        progress("one-shot, steady")
        steady = engine_driver.one_shot(profile, limit=THROTTLE[0], window=THROTTLE[1])
        record("one-shot, steady", steady, sb.stats())
        progress("changing 10% + 10%")
        changed = change_ten_percent(sb, pairs, random.Random(seed))
        empty_window()
        sb.reset_stats()
        progress("one-shot after the changes")
        after = engine_driver.one_shot(profile, limit=THROTTLE[0], window=THROTTLE[1])
        record(f"one-shot, {changed} changed (10%+10%)", after, sb.stats())
        # The same two runs as `presencectl sync` processes: the CPU time of presencectl alone
        # (user + system of that process; the sandbox runs in its own), wall time beside it.
        for name, change_seed in (("steady", None), ("changed", seed + 1)):
            if change_seed is not None:
                change_ten_percent(sb, pairs, random.Random(change_seed))
            empty_window()
            sb.reset_stats()
            progress(f"presencectl sync process, {name}")
            proc = engine_driver.cli_one_shot()
            stats = sb.stats()
            rows.append(
                {
                    "users": users,
                    "run": f"presencectl sync process, {name}",
                    "wall_s": proc["elapsed"],
                    "cpu_s": proc["cpu_s"],
                    "cpu_user_s": proc["cpu_user_s"],
                    "cpu_sys_s": proc["cpu_sys_s"],
                    "written": proc["written"],
                    "graph_requests": graph_requests(stats),
                    "connect_requests": sum(
                        v for k, v in stats["requests"].items() if k.startswith("connect.")
                    ),
                    "presence_reads": stats["requests"].get("graph.getPresencesByUserId", 0),
                    "throttled": stats["throttled"],
                    "endpoints": endpoint_counts(stats),
                }
            )
        server_cpu = sb.server_cpu_s()
        sb.reset_stats()
        progress("watch cycles")
        watch = engine_driver.watch_cycles(
            profile, limit=THROTTLE[0], window=THROTTLE[1], cycles=watch_cycles
        )
        stats = sb.stats()
        rows.append(
            {
                "users": users,
                "run": f"watch, steady (median of {len(watch['cycle_s'])})",
                "matched": watch["summary"]["matched"],
                "wall_s": median(watch["cycle_s"]),
                "plan_cpu_ms": median(watch["plan_cpu_s"]) * 1000,
                "written": watch["summary"]["written"],
                "graph_requests": graph_requests(stats),
                "connect_requests": sum(
                    v for k, v in stats["requests"].items() if k.startswith("connect.")
                ),
                "presence_reads": stats["requests"].get("graph.getPresencesByUserId", 0),
                "throttled": stats["throttled"],
                "endpoints": endpoint_counts(stats),
                "first_cycle_s": watch["first_cycle_s"],
                "cycles": len(watch["cycle_s"]) + 1,
            }
        )
        server_rss = sb.server_rss_mb()
        latency = sb.probe_latency_ms()
    for row in rows:
        row["peak_rss_mb"] = peak_rss_mb()
    return {
        "rows": rows,
        "server_rss_mb": server_rss,
        "sandbox_latency": latency,
        "sandbox_cpu_s_total": server_cpu,
    }


def run(sizes: list[int], seed: int, watch_cycles: int) -> Report:
    report = Report(
        "cycle",
        [
            "users",
            "run",
            "matched",
            "wall_s",
            "cpu_s",
            "plan_cpu_ms",
            "written",
            "graph_requests",
            "presence_reads",
            "connect_requests",
            "throttled",
            "peak_rss_mb",
        ],
    )
    report.notes.append(
        "requests are counted by the sandbox (graph_requests counts each $batch member, as "
        "Graph's throttle does, not the envelope); the watch "
        "row's request counts cover all its cycles including the first (directory + full "
        "Connect read); peak_rss_mb is the presencectl process (sandbox runs apart)"
    )
    report.notes.append("bytes on the wire: not measured (the sandbox does not count them)")
    per_size = {}
    for n in sizes:
        # One process per size: ru_maxrss is a high-water mark for the whole process.
        out = subprocess.run(
            [
                sys.executable,
                str(Path(__file__)),
                "--one",
                str(n),
                "--seed",
                str(seed),
                "--watch-cycles",
                str(watch_cycles),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            report.notes.append(f"{n} users failed: {out.stderr[-800:]}")
            continue
        data = json.loads(out.stdout.strip().splitlines()[-1])
        per_size[n] = data
        for row in data["rows"]:
            report.add(**row)
    report.extra["per_size"] = per_size
    report.extra["figures"] = figures(per_size)
    return report


def figures(per_size: dict[int, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, data in per_size.items():
        steady = next(r for r in data["rows"] if r["run"] == "one-shot, steady")
        watch = next(r for r in data["rows"] if r["run"].startswith("watch"))
        changed = next(
            r for r in data["rows"] if r["run"].startswith("one-shot,") and "changed" in r["run"]
        )
        proc = {
            r["run"].rsplit(", ", 1)[1]: r
            for r in data["rows"]
            if r["run"].startswith("presencectl sync process")
        }
        out[str(n)] = {
            "process_cpu_s_steady": proc.get("steady", {}).get("cpu_s"),
            "process_cpu_s_changed": proc.get("changed", {}).get("cpu_s"),
            "process_wall_s_steady": proc.get("steady", {}).get("wall_s"),
            "process_wall_s_changed": proc.get("changed", {}).get("wall_s"),
            "sandbox_cpu_s_total": data.get("sandbox_cpu_s_total"),
            "one_shot_steady_s": steady["wall_s"],
            "one_shot_changed_s": changed["wall_s"],
            "watch_cycle_s": watch["wall_s"],
            "presence_reads_per_watch_cycle": watch["presence_reads"] / max(1, watch["cycles"]),
            "graph_requests_changed": changed["graph_requests"],
            "plan_cpu_ms_changed": changed["plan_cpu_ms"],
            "plan_cpu_ms_steady": steady["plan_cpu_ms"],
            "peak_rss_mb": steady["peak_rss_mb"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="1000,10000,50000")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--watch-cycles", type=int, default=4)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.seed, args.watch_cycles), default=str))
        return 0
    run(parse_sizes(args.users), args.seed, args.watch_cycles).emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
