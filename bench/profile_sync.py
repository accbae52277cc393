"""Where the CPU of a one-shot ``presencectl sync`` goes: the process run under cProfile.

A sandbox process with ``--users`` people, the profile prepared as ``cycle.py`` does it, one
converging run (untimed), then ``presencectl sync -o json`` under ``python -m cProfile`` in steady
state (or ``--changed``: after 10 % + 10 % changes). Prints the process's CPU time (user + system,
counted by the kernel) and wall time, then the top functions by own time and by cumulative time;
the raw profile is kept in bench/results/profile_sync.prof (``python -m pstats`` reads it).

cProfile inflates small calls several times over (httpx's URL parsing looks 10x its real cost);
``--py-spy PATH`` samples the process with py-spy instead (``pip install py-spy``; not a
dependency) and prints where the samples fall: own time per function, and the share of samples
under each of presencectl's modules, httpx/httpcore/anyio, ssl, start-up.

    python bench/profile_sync.py --users 2000
    python bench/profile_sync.py --users 10000 --py-spy "$(command -v py-spy)"
    python bench/profile_sync.py --users 10000 --no-profile     # CPU and wall only
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import pstats
import random
import resource
import subprocess
import sys
import time

import engine_driver
from _harness import PROFILE, RESULTS_DIR, SandboxProcess, isolated_env, matched_pairs
from cycle import THROTTLE, change_ten_percent


def run_sync(profile_to: str | None, spy: str | None = None) -> tuple[float, float]:
    """(CPU s, wall s) of one ``presencectl sync`` process."""
    prefix = ["-m", "cProfile", "-o", profile_to] if profile_to and not spy else []
    outer = ([spy, "record", "--format", "raw", "--rate", "250", "--output", str(profile_to),
              "--"] if spy else [])  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        [*outer, sys.executable, *prefix, "-m", "presencectl", "--profile", PROFILE,
         "--no-input", "-o", "json", "sync"],
        capture_output=True, text=True, env=os.environ.copy(), timeout=900, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 5):
        raise RuntimeError(f"presencectl sync: exit {out.returncode}: {out.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


BUCKETS = (
    ("presencectl/connect/", "presencectl connect"),
    ("presencectl/graph/", "presencectl graph"),
    ("presencectl/sync/", "presencectl sync"),
    ("presencectl/transport", "presencectl transport"),
    ("presencectl/", "presencectl other"),
    ("ssl.py", "ssl"),
    ("httpcore/", "httpcore"),
    ("httpx/", "httpx"),
    ("anyio/", "anyio"),
    ("h11/", "h11"),
    ("asyncio/", "asyncio"),
    ("json/", "json"),
    ("logging/", "logging"),
    ("msal/", "msal"),
    ("sqlite3", "sqlite3"),
    ("concurrent/futures", "worker threads"),
)
# Inclusive: samples with this function anywhere on the stack.
PHASES = (
    ("get_presence (presencectl/connect/presence.py", "Connect reads, per user"),
    ("get_presences (presencectl/graph/presence.py", "Graph presence reads"),
    ("list_contacts", "Connect directory"),
    ("list_users", "Graph directory"),
    ("plan (presencectl/sync/plan.py", "planning"),
    ("_find_and_load", "imports"),
    ("send (httpx/_client.py", "httpx send (all)"),
    ("build_request (httpx/_client.py", "httpx build_request"),
    ("_log_request", "our request log hook"),
    ("_log_response", "our response log hook"),
)


def summarise_samples(path: str, top: int) -> None:
    """py-spy's collapsed stacks: own samples per function, and per bucket the samples whose
    innermost frame is in it."""
    own: collections.Counter[str] = collections.Counter()
    bucket: collections.Counter[str] = collections.Counter()
    phase: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as lines:
        for line in lines:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            total += n
            own[frames[-1]] += n
            leaf = frames[-1]
            bucket[next((name for key, name in BUCKETS if key in leaf), "other")] += n
            for key, name in PHASES:
                if any(key in f for f in frames):
                    phase[name] += n
    print(f"{total} samples")
    print("inclusive (the function anywhere on the stack):")
    for name, n in phase.most_common():
        print(f"  {n / total:6.1%}  {name}")
    print("own time by library:")
    for name, n in bucket.most_common():
        print(f"  {n / total:6.1%}  {name}")
    print("top functions by own samples:")
    for frame, n in own.most_common(top):
        print(f"  {n / total:6.1%}  {frame[:150]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--changed", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--runs", type=int, default=1, help="unprofiled runs to time")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--py-spy", help="path of a py-spy binary: sample with it, not cProfile")
    args = parser.parse_args(argv)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    prof = str(RESULTS_DIR / "profile_sync.prof")
    with isolated_env(), SandboxProcess(users=args.users, seed=args.seed, throttle=10**7) as sb:
        profile = engine_driver.prepare(sb)
        pairs = asyncio.run(matched_pairs(profile))
        engine_driver.one_shot(profile, limit=10**7, window=30.0)
        sb.faults(throttle_per_30s=THROTTLE[0], throttle_window=THROTTLE[1])
        rng = random.Random(args.seed)
        for n in range(args.runs if args.no_profile else 1):
            if args.changed:
                change_ten_percent(sb, pairs, rng)
            sb.control.post(
                "/_sandbox/clock/advance", json={"seconds": THROTTLE[1] + 1}
            ).raise_for_status()
            target = str(RESULTS_DIR / "profile_sync.spy") if args.py_spy else prof
            cpu, wall = run_sync(None if args.no_profile else target, args.py_spy)
            print(
                f"run {n + 1}: {len(pairs)} matched, presencectl sync CPU {cpu:.2f} s, "
                f"wall {wall:.2f} s{' (under cProfile)' if not args.no_profile else ''}"
            )
    if args.py_spy and not args.no_profile:
        summarise_samples(str(RESULTS_DIR / "profile_sync.spy"), args.top)
    elif not args.no_profile:
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
