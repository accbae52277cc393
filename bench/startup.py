"""Start-up time: ``presencectl --help`` and ``mapping show`` against ``python -c pass``.

Each command runs ``--runs`` times in a fresh interpreter (subprocess); the median is reported, and
the figure that matters is the median minus nothing: what a user waits for. ``python -c pass`` is
the floor no Python CLI can beat on this machine.

    python bench/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from _harness import Report, isolated_env, median

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "presencectl --help": [sys.executable, "-m", "presencectl", "--help"],
    "presencectl mapping show": [sys.executable, "-m", "presencectl", "mapping", "show"],
    "presencectl --version": [sys.executable, "-m", "presencectl", "--version"],
}


def time_command(argv: list[str], runs: int) -> tuple[list[float], int]:
    """Wall times of ``runs`` runs, and the exit code (a stub command still has a start-up)."""
    times = []
    code = 0
    env = {**os.environ, "COLUMNS": "120"}
    for _ in range(runs + 1):  # the first run warms the OS page cache and .pyc files
        start = time.perf_counter()
        done = subprocess.run(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False
        )
        times.append(time.perf_counter() - start)
        code = done.returncode
    return times[1:], code


def run(runs: int) -> Report:
    report = Report("startup", ["command", "median_s", "min_s", "over_python_s", "exit"])
    with isolated_env():
        timed = {name: time_command(argv, runs) for name, argv in COMMANDS.items()}
    results = {name: times for name, (times, _) in timed.items()}
    floor = median(results["python -c pass"])
    for name, (times, code) in timed.items():
        report.add(
            command=name,
            median_s=median(times),
            min_s=min(times),
            over_python_s=median(times) - floor,
            exit=code,
        )
        if code not in (0,):
            report.notes.append(f"`{name}` exited {code} (not built yet, or no profile)")
    report.extra["runs"] = runs
    report.extra["figures"] = {
        "help_s": median(results["presencectl --help"]),
        "mapping_show_s": median(results["presencectl mapping show"]),
        "python_floor_s": floor,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)
    run(args.runs).emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
