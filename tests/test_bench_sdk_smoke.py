"""The SDK peer benchmark (bench/baseline_sdk.py) runs end to end at a few dozen users: every row
measured by the sandbox, none hard-coded. Needs the ``bench`` extra (msgraph-sdk); without it the
test says so and skips (the peer is a third-party package, not our code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def test_sdk_peer_and_presencectl_run_side_by_side(tmp_path: Path) -> None:
    pytest.importorskip("msgraph", reason="needs the bench extra: pip install '.[bench]'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCECTL_")}
    env["PRESENCECTL_BENCH_RESULTS"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "baseline_sdk.py"), "--users", "40"],
        capture_output=True, text=True, env=env, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "baseline_sdk.json").read_text())
    rows = {r["tool"]: r for r in data["rows"]}
    assert set(rows) == {"presencectl one-shot", "msgraph-sdk, per user", "msgraph-sdk, $batch"}
    for tool, row in rows.items():
        assert row["changed"] >= 2, tool
        # Every row read both sides: at least one getPresencesByUserId and one Connect GET each.
        assert row["graph_requests"] >= 1 and row["connect_requests"] >= row["users"], tool
        assert row["failed"] == 0, tool
        assert row["written"] >= 1, tool
        assert row["cpu_s"] > 0 and row["wall_s"] > 0, tool
        # The throttle-bound minimum comes from the sandbox's own count of presence requests.
        assert 1 <= row["presence_accepted"] <= row["graph_requests"], tool
        assert row["throttle_min_s"] == row["presence_accepted"] / 1500 * 30, tool
        assert row["throttle_bound"] is False, tool  # 40 users need far less than one window
