"""Propagation delay in watch mode: genuine changes injected at random times on both sides.

A sandbox process; the profile enabled for both directions; ``SyncEngine.watch`` (default 5 s Teams
poll, Connect by its change feed) runs in a thread of this process. The injector picks a user at
random from two disjoint groups and changes a status through the sandbox's control API:
- group C (Connect→Teams): the user's own Connect app toggles ``onphone`` / ``available``; their own
  Teams client shows Away, so our Teams session decides what Teams shows;
- group T (Teams→Connect): the user's own Teams client toggles Busy/InACall / BeRightBack; their own
  Connect app is ``offline``, so our Connect session decides what Connect shows.
Each change is timed until the other side shows the mapped status, polled through the control API
every 20 ms (so figures include up to ~20 ms of polling resolution).

Targets (issue 7): Connect→Teams p95 < 1 s (event-driven); Teams→Connect p95 < interval + 1 s.

    python bench/latency.py [--duration 60] [--changes 200] [--interval 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import engine_driver
from _harness import Report, SandboxProcess, isolated_env, matched_pairs, percentile

C_STATES = [("onphone", ("Busy", "InACall")), ("available", ("Available", "Available"))]
T_STATES = [(("Busy", "InACall"), "onphone"), (("BeRightBack", "BeRightBack"), "on_break")]
POLL_S = 0.02
TIMEOUT_S = 30.0


def wait_until(check: Any) -> float | None:
    """Seconds until ``check()`` is true (polled), None after TIMEOUT_S."""
    start = time.perf_counter()
    while time.perf_counter() - start < TIMEOUT_S:
        if check():
            return time.perf_counter()
        time.sleep(POLL_S)
    return None


def run(users: int, duration: float, changes: int, interval: float, seed: int) -> Report:
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {"connect->teams": [], "teams->connect": []}
    missed: dict[str, int] = {"connect->teams": 0, "teams->connect": 0}
    with isolated_env(), SandboxProcess(users=users, seed=seed) as sb:
        profile = engine_driver.prepare(sb)
        pairs = asyncio.run(matched_pairs(profile))
        rng.shuffle(pairs)
        group = max(4, min(len(pairs) // 2, changes))
        group_c, group_t = pairs[:group], pairs[group : 2 * group]
        for p in group_c:
            sb.set_teams(p.email, "Away", "Away")
            sb.set_connect(p.email, "available")
        for p in group_t:
            sb.set_connect(p.email, "offline")
            sb.set_teams(p.email, "BeRightBack", "BeRightBack")
        engine_driver.one_shot(profile, limit=1500, window=30.0)  # converge first

        ready = threading.Event()
        loop_box: dict[str, Any] = {}

        def on_event(event: Any) -> None:
            if event.type == "cycle":
                ready.set()

        def watcher() -> None:
            async def go() -> None:
                stop = asyncio.Event()
                loop_box["loop"], loop_box["stop"] = asyncio.get_running_loop(), stop
                async with engine_driver.engine(profile, limit=1500, window=30.0,
                                                interval=interval, on_event=on_event) as eng:
                    loop_box["result"] = await eng.watch(stop=stop)

            asyncio.run(go())

        thread = threading.Thread(target=watcher, name="watch", daemon=True)
        thread.start()
        if not ready.wait(60):
            raise RuntimeError("the watch did not complete its first cycle")
        time.sleep(1.0)  # the feed's subscription settles

        state_c = {p.email: 1 for p in group_c}  # index into C_STATES: "available" now
        state_t = {p.email: 1 for p in group_t}
        busy: set[str] = set()
        lock = threading.Lock()

        def inject_c(p: Any) -> None:
            state_c[p.email] ^= 1
            status, want = C_STATES[state_c[p.email]]
            t0 = time.perf_counter()
            sb_thread_control().post("/_sandbox/connect/presence",
                                     json={"user": p.email, "status": status})

            def check() -> bool:
                d = sb_thread_control().get("/_sandbox/teams/presence",
                                            params={"user": p.email}).json()
                return (d["availability"], d["activity"]) == want

            record("connect->teams", t0, wait_until(check), p.email)

        def inject_t(p: Any) -> None:
            state_t[p.email] ^= 1
            pair, want = T_STATES[state_t[p.email]]
            t0 = time.perf_counter()
            sb_thread_control().post("/_sandbox/teams/presence",
                                     json={"user": p.email, "availability": pair[0],
                                           "activity": pair[1]})

            def check() -> bool:
                d = sb_thread_control().get("/_sandbox/connect/presence",
                                            params={"user": p.email}).json()
                return bool(d["status"] == want)

            record("teams->connect", t0, wait_until(check), p.email)

        def record(direction: str, t0: float, t1: float | None, email: str) -> None:
            with lock:
                busy.discard(email)
                if t1 is None:
                    missed[direction] += 1
                else:
                    samples[direction].append(t1 - t0)

        local = threading.local()

        def sb_thread_control() -> Any:
            if not hasattr(local, "client"):
                import ssl

                import httpx

                local.client = httpx.Client(
                    base_url=sb.base_url,
                    verify=ssl.create_default_context(cafile=sb.ca_bundle), timeout=30.0)
            return local.client

        times = sorted(rng.uniform(0, duration) for _ in range(changes))
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=32) as pool:
            for at in times:
                delay = start + at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                side_c = rng.random() < 0.5
                candidates = [p for p in (group_c if side_c else group_t) if p.email not in busy]
                if not candidates:
                    continue
                p = rng.choice(candidates)
                with lock:
                    busy.add(p.email)
                pool.submit(inject_c if side_c else inject_t, p)
        loop_box["loop"].call_soon_threadsafe(loop_box["stop"].set)
        thread.join(timeout=60)

    report = Report("latency", ["direction", "changes", "p50_s", "p95_s", "max_s", "missed",
                                "target_p95_s", "verdict"])
    targets = {"connect->teams": 1.0, "teams->connect": interval + 1.0}
    figures: dict[str, Any] = {}
    for direction, values in samples.items():
        p95 = percentile(values, 95)
        report.add(direction=direction, changes=len(values), p50_s=percentile(values, 50),
                   p95_s=p95, max_s=max(values) if values else None,
                   missed=missed[direction], target_p95_s=targets[direction],
                   verdict="PASS" if values and p95 < targets[direction] else "MISS")
        figures[direction] = {"p50_s": percentile(values, 50), "p95_s": p95,
                              "max_s": max(values) if values else None,
                              "missed": missed[direction]}
    report.notes.append(
        f"watch --interval {interval:g}; {changes} changes over {duration:g} s on {users} users; "
        f"measured by polling the target side through the control API every {POLL_S * 1000:.0f} ms"
    )
    report.extra["figures"] = figures
    report.extra["interval_s"] = interval
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    run(args.users, args.duration, args.changes, args.interval, args.seed).emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
