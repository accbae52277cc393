"""The benchmarks run end to end in a tiny configuration, so they cannot rot.

``bench/run_all.py --smoke`` runs every benchmark script (each starts its own sandbox process and
prepares a profile through the CLI) at a few dozen users, then prints the targets table; the
JSON results go to a temp dir. The figures are not judged here (tiny sizes say nothing), only
that every script ran and produced the figures the targets table reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Generous: these bound a hang, not a speed (timings are judged by the benchmarks themselves).
pytestmark = pytest.mark.timeout(900)


def run_smoke(tmp_path: Path, *names: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCECTL_")}
    env["PRESENCECTL_BENCH_RESULTS"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--smoke", "--only", ",".join(names)],
        capture_output=True, text=True, env=env, timeout=880, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== targets (issue 7) ==" in done.stdout
    for name in names:
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["rows"], name
        assert data["machine"]["cores"]
    return done


def test_cycle_baseline_and_startup_benchmarks_run(tmp_path: Path) -> None:
    run_smoke(tmp_path, "startup", "cycle", "baseline_naive")
    summary = json.loads((tmp_path / "summary.json").read_text())
    measured = {t["target"]: t["measured"] for t in summary["targets"]}
    assert measured["presencectl --help (s)"] > 0
    assert measured["Graph presence reads per cycle, 30 users"] == 1
    naive = json.loads((tmp_path / "baseline_naive.json").read_text())
    tools = [r["tool"] for r in naive["rows"]]
    assert tools[0] == "presencectl watch cycle" and tools[-1].startswith("naive polling")


@pytest.mark.slow
def test_every_benchmark_runs_and_reports_its_figures(tmp_path: Path) -> None:
    names = ("startup", "throughput", "cycle", "baseline_naive", "latency", "timings")
    run_smoke(tmp_path, *names)
    for name in names:
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["rows"], name
        assert data["machine"]["cores"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    measured = {t["target"]: t["measured"] for t in summary["targets"]}
    assert measured["presencectl --help (s)"] > 0
    assert measured["propagation p95 Connect->Teams (s)"] is not None
    assert measured["write throughput, share of the ceiling"] is not None
    assert measured["limit below the client's: lost writes"] is not None
    assert measured["running_sandbox stop (median, s)"] is not None
    assert any(k.startswith("Graph presence reads per cycle") for k in measured)
    # Each write-heavy row's wall time against its throttle-bound minimum, measured per row.
    ratios = [v for k, v in measured.items() if k.startswith("write-heavy:")]
    assert len(ratios) == 4 and all(isinstance(v, float) and v > 0 for v in ratios), ratios
