"""The benchmarks' one link to the sync engine (presencectl.sync.engine): preparing an enabled
profile against a sandbox process the way an administrator does (CLI), building an engine with a
rate limiter sized to the sandbox's throttle, one-shot and watch runs with timings, and planning
CPU measured around ``presencectl.sync.plan.plan`` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from _harness import PROFILE, SandboxProcess

SYNC_PASSWORD = "B3nch-Sync-Passw0rd!"


def available() -> bool:
    try:
        from presencectl.sync import engine  # noqa: F401
    except ImportError:
        return False
    return True


def cli(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "presencectl", "--profile", PROFILE, "--no-input", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"presencectl {' '.join(args)}: {result.stderr[-2000:]}")
    return result.stdout


def prepare(sb: SandboxProcess, direction: str = "both") -> Any:
    """setup-azure, the sync user (first-login password change done in the sandbox, then
    ``sync-user set/validate``), ``enable``: the profile as an administrator leaves it."""
    sb.setup_azure()
    sync_user = sb.profile_info()["sync_user"]
    sb.control.post(
        f"/_sandbox/users/{sync_user}/password", json={"password": SYNC_PASSWORD}
    ).raise_for_status()
    cli("sync-user", "set", "--username", sync_user, "--password-stdin", stdin=SYNC_PASSWORD + "\n")
    cli("sync-user", "validate")
    cli("enable", "--direction", direction)
    from presencectl.config import load_profile

    return load_profile(PROFILE)


class PlanTimer:
    """CPU time spent inside the pure planner, summed over calls since the last reset."""

    def __init__(self) -> None:
        from presencectl.sync import plan as planner

        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.calls = 0
        original = planner.plan

        def timed(*args: Any, **kwargs: Any) -> Any:
            c, w = time.process_time(), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.cpu_s += time.process_time() - c
                self.wall_s += time.perf_counter() - w
                self.calls += 1

        planner.plan = timed  # the engine calls planner.plan through the module

    def reset(self) -> None:
        self.cpu_s = self.wall_s = 0.0
        self.calls = 0


_PLAN_TIMER: PlanTimer | None = None


def plan_timer() -> PlanTimer:
    global _PLAN_TIMER
    if _PLAN_TIMER is None:
        _PLAN_TIMER = PlanTimer()
    return _PLAN_TIMER


@contextlib.asynccontextmanager
async def engine(
    profile: Any,
    *,
    limit: int,
    window: float,
    direction: str = "both",
    interval: float = 5.0,
    on_event: Callable[[Any], None] | None = None,
    use_feed: bool = True,
    notify: Any = None,
) -> AsyncIterator[Any]:
    """``engine_for(profile)`` with one rate limiter sized to the sandbox's throttle;
    ``notify``: a ``NotifyOptions`` (Teams by Graph change notifications)."""
    from presencectl.graph.ratelimit import RateLimiter
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.model import Direction
    from presencectl.sync.service import engine_for

    options = EngineOptions(direction=Direction(direction), interval=interval, use_feed=use_feed)
    options.notify = notify
    async with engine_for(profile, options, on_event=on_event) as eng:
        limiter = RateLimiter(limit=limit, window=window)
        eng.graph.limiter = limiter
        eng.teams_reader.limiter = limiter
        yield eng


def _result_dict(res: Any, elapsed: float, metrics: Any, timer: PlanTimer) -> dict[str, Any]:
    return {
        "elapsed": elapsed,
        "ok": res.written + res.cleared,
        "written": res.written,
        "cleared": res.cleared,
        "failed": res.failed,
        "matched": res.matched,
        "read": res.read,
        "client_429": metrics.throttled,
        "retry_after_wait_s": metrics.retry_after_wait_s,
        "budget_wait_s": metrics.bucket_wait_s,
        "http_requests": metrics.requests,
        "plan_cpu_s": timer.cpu_s,
        "summary": res.summary(),
    }


def one_shot(profile: Any, *, limit: int, window: float, direction: str = "both") -> dict[str, Any]:
    """One ``run_once`` in a fresh engine (as ``presencectl sync`` does), timed."""
    timer = plan_timer()

    async def go() -> dict[str, Any]:
        async with engine(profile, limit=limit, window=window, direction=direction) as eng:
            timer.reset()
            start = time.perf_counter()
            res = await eng.run_once()
            elapsed = time.perf_counter() - start
            return _result_dict(res, elapsed, eng.graph.metrics, timer)

    return asyncio.run(go())


def cli_one_shot() -> dict[str, Any]:
    """``presencectl sync -o json`` as its own process, as cron runs it: wall time and the CPU
    time (user + system) of that process alone, imports, sign-in and everything included."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "presencectl",
            "--profile",
            PROFILE,
            "--no-input",
            "-o",
            "json",
            "sync",
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=900,
        check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 5):
        raise RuntimeError(f"presencectl sync: exit {out.returncode}: {out.stderr[-2000:]}")
    summary = json.loads(out.stdout)
    return {
        "elapsed": wall,
        "cpu_user_s": after.ru_utime - before.ru_utime,
        "cpu_sys_s": after.ru_stime - before.ru_stime,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "written": summary.get("written"),
        "failed": summary.get("failed"),
        "exit": out.returncode,
    }


def watch_cycles(
    profile: Any,
    *,
    limit: int,
    window: float,
    cycles: int = 4,
    direction: str = "both",
    after_first: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Steady-state watch cycles (Teams poll + plan + writes; Connect by its feed), back to back
    (interval ~0): wall per cycle measured between consecutive cycle ends; the first cycle, which
    lists both directories and reads Connect fully, is reported apart (``after_first`` runs
    right after it, e.g. to reset the sandbox's counters)."""
    timer = plan_timer()
    ends: list[float] = []
    plan_cpu: list[float] = []

    def after(n: int) -> None:
        if n == 1 and after_first is not None:
            after_first()
        ends.append(time.perf_counter())
        plan_cpu.append(timer.cpu_s)
        timer.reset()

    async def go() -> dict[str, Any]:
        async with engine(
            profile, limit=limit, window=window, direction=direction, interval=0.001
        ) as eng:
            timer.reset()
            start = time.perf_counter()
            res = await eng.watch(max_cycles=cycles, after_cycle=after)
            laps = [b - a for a, b in zip([start, *ends], ends, strict=False)]
            return {
                "first_cycle_s": laps[0],
                "cycle_s": laps[1:],
                "plan_cpu_s": plan_cpu[1:],
                "summary": res.summary(),
                "http_requests": eng.graph.metrics.requests,
            }

    return asyncio.run(go())


def seed_connect(sb: SandboxProcess, pairs: list[Any], status: str) -> None:
    for p in pairs:
        sb.set_connect(p.email, status)
