"""Fault soak (bench/soak.py): watch mode against a sandbox with 5xx, dropped connections, a low
throttle limit, short-lived tokens, a Connect feed that disconnects and random genuine changes on
both sides. The short version runs with the fast suite; ``pytest -m soak`` runs the long one
(``PRESENCECTL_SOAK_MINUTES``, default 3; CI's second step runs it for 2 minutes).

Each run first asserts that the faults really happened — 5xx/drops injected, 429s sent, feed
connections dropped, genuine changes made — and only then that they were handled: no request
sent inside a Retry-After window, the sync settled once the chaos stopped (no write of ours for
the echo window plus five polls) and both sides then agree with the mapping, every audited write
reached the sandbox, nothing of ours left after ``disable``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_soak_apart(seconds: float, **kwargs: Any) -> Any:
    """bench/soak.py's run_soak in a Python process of its own, its report back as JSON.

    In the test process the short soak failed every time it ran after certain other test files
    (tests/test_signalr_hub.py, tests/test_secrets_leak.py, the whole suite) and passed every
    time alone: something those tests leave in the process, not found yet, perturbs the watch the
    soak drives. The soak measures the product, so it gets a clean process, as `sync --watch`
    does in real use (secrets in the 0600 file of this test's config dir, never a keyring)."""
    code = (
        "import dataclasses, json, sys\n"
        "from soak import run_soak\n"
        "report = run_soak(float(sys.argv[1]), **json.loads(sys.argv[2]))\n"
        "print('SOAK_REPORT ' + json.dumps(dataclasses.asdict(report), default=str))\n"
    )
    env = dict(os.environ, PRESENCECTL_SECRETS_BACKEND="file")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", code, str(seconds), json.dumps(kwargs)],
        capture_output=True, text=True, env=env, timeout=3600, check=False,
    )  # fmt: skip
    line = next((x for x in done.stdout.splitlines() if x.startswith("SOAK_REPORT ")), None)
    assert done.returncode == 0 and line, done.stdout[-3000:] + done.stderr[-3000:]
    return SimpleNamespace(**json.loads(line[len("SOAK_REPORT ") :]))


def _run(seconds: float, **kwargs: Any) -> Any:
    report = run_soak_apart(seconds, **kwargs)
    # The hostile conditions really happened ...
    assert report.faults_injected > 0, report
    assert report.throttled_429 > 0, report
    assert report.genuine_changes > 0 and report.hub_disconnects > 0 and report.cycles > 3
    assert report.clock_jumps_s > 0  # the clock really moved: tokens and sessions expired
    # ... and were handled.
    assert report.exit_code in (0, 5), report
    assert not report.errors, report.errors
    assert report.in_retry_after_window == 0, report
    assert not report.mismatches, report.mismatches
    assert report.audit_ok <= report.sandbox_writes, report
    assert report.sandbox_writes > 0 and not report.audit_vs_sandbox, report.audit_vs_sandbox
    assert report.sessions_left_after_disable == 0, report
    return report


def test_short_soak() -> None:
    """15 s of chaos, then quiet until the sync settles; 4 presence requests per 3 s: what every
    test run can afford.

    The sandbox shows a write at once, so a 5 s echo window is ample there (the profile's
    ``echo_window_s``); with the default 60 s, settling alone would take over a minute."""
    _run(20, users=14, seed=2, throttle=4, echo_window_s=5)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_long_soak() -> None:
    minutes = float(os.environ.get("PRESENCECTL_SOAK_MINUTES", "3"))
    report = _run(minutes * 60, users=40, seed=11, throttle=8)  # the default 60 s echo window
    print("soak figures:", report)


def test_the_audit_is_checked_against_the_sandbox_per_side_and_user() -> None:
    """Totals can balance one person's lost write with another's unaudited one; pairs cannot."""
    from soak import audit_vs_sandbox

    audit = {("teams", "a"): (1, 1), ("teams", "b"): (1, 1), ("connect", "c"): (2, 1)}
    sandbox = {("teams", "a"): 2, ("connect", "c"): 1}  # 3 writes against 3 ok: totals agree
    assert audit_vs_sandbox(audit, sandbox) == [
        "teams a: audit ok 1, sandbox 2, audit rows 1",  # a write with no audit row
        "teams b: audit ok 1, sandbox 0, audit rows 1",  # an ok write that never arrived
    ]
