"""Budget-bound figures (issue 21): presencectl at the services' real budgets, both enforced.

A sandbox process that enforces Graph's 1,500 presence requests / 30 s and Connect's 250
requests a minute (fault ``connect_throttle_per_min``), the ``bench`` profile enabled for both
directions with ``connect_rate_per_min = 250``. The state is made first without a budget (a
first run adopts every pair: ~3 Connect requests a person), then:

1. **one-shot**: a steady ``run_once`` (state kept, 10 % of the people changed on Teams): wall
   time against the budget-bound minimum (Connect requests / 250 a minute), 429s from either
   service, the client's CPU.
2. **during a full read**: a watch (``--interval auto``) starts, so its first cycle reads every
   user on Connect (minutes at 250 a minute); ``--changes`` Teams changes are made, spread over
   the read; each one's delay until its Connect write is answered (p50, p95, max).
3. **faster than the budget**: after that first cycle, ``--rate`` Teams changes a minute (people
   toggled between a call and Available) for ``--flood`` seconds against the 250 a minute: the
   most writes queued and the oldest wait seen (the engine's backlog, as ``status`` shows it),
   Connect writes sent against changes made (coalesced: only the latest state is sent), and how
   long after the last change every person's Connect shows their last Teams state.
4. **steady watch CPU**: the watch's own CPU over ``--steady`` seconds with no changes, as CPU
   seconds per hour.

    python bench/budget.py [--users 1000] [--changes 10] [--rate 600] [--flood 60] [--steady 60]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import threading
import time
from typing import Any

import engine_driver
from _harness import PROFILE, Report, SandboxProcess, isolated_env, progress

CONNECT_PER_MIN = 250
GRAPH_LIMIT, GRAPH_WINDOW_S = 1500, 30.0
CALL, FREE = ("Busy", "InACall"), ("Available", "Available")


def _connect_requests(sb: SandboxProcess) -> int:
    stats = sb.stats()["requests"]
    return sum(n for k, n in stats.items() if k.startswith("connect.") and "token" not in k)


def _connect_writes(sb: SandboxProcess) -> int:
    stats = sb.stats()["requests"]
    return int(stats.get("connect.presence.put", 0)) + int(stats.get("connect.presence.delete", 0))


def _set_budget(per_min: int, sb: SandboxProcess) -> Any:
    from presencectl.config import load_profile, save_profile

    profile = load_profile(PROFILE)
    profile.connect_rate_per_min = per_min
    save_profile(profile)
    sb.faults(connect_throttle_per_min=per_min)
    return profile


def one_shot(sb: SandboxProcess, people: list[str], report: Report) -> None:
    rng = random.Random(7)
    for email in rng.sample(people, max(1, len(people) // 10)):
        sb.set_teams(email, *CALL)
    profile = _set_budget(CONNECT_PER_MIN, sb)
    before, throttled = _connect_requests(sb), sb.stats()["throttled"]
    cpu = time.process_time()
    progress(f"one-shot at {CONNECT_PER_MIN}/min for {len(people)} people (minutes)")
    res = engine_driver.one_shot(profile, limit=GRAPH_LIMIT, window=GRAPH_WINDOW_S)
    cpu = time.process_time() - cpu
    made = _connect_requests(sb) - before
    minimum = made / CONNECT_PER_MIN * 60
    report.add(
        run="one-shot (state kept, 10 % changed)", people=len(people), connect_requests=made,
        wall_s=round(res["elapsed"], 1), minimum_s=round(minimum, 1),
        ratio=round(res["elapsed"] / minimum, 3), connect_429=sb.stats()["throttled"] - throttled,
        graph_429=res["client_429"], client_cpu_s=round(cpu, 2),
    )  # fmt: skip


class Watch:
    """An in-process watch (``--interval auto``) in its own thread, recording its events."""

    def __init__(self, profile: Any) -> None:
        self.profile = profile
        self.events: list[tuple[float, Any]] = []
        self.engine: Any = None
        self._stop: Any = None
        self._loop: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_event(self, event: Any) -> None:
        self.events.append((time.monotonic(), event))

    def _run(self) -> None:
        async def go() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with engine_driver.engine(
                self.profile, limit=GRAPH_LIMIT, window=GRAPH_WINDOW_S, on_event=self._on_event
            ) as eng:
                eng.options.auto_interval = True
                self.engine = eng
                await eng.watch(stop=self._stop)

        asyncio.run(go())

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=600)

    def seen(self, kind: str) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in list(self.events) if e.type == kind]

    def wait_for(self, kind: str, timeout: float = 900.0) -> float:
        start = time.monotonic()
        while not self.seen(kind):
            if time.monotonic() - start > timeout or not self.thread.is_alive():
                raise RuntimeError(f"the watch never emitted {kind}")
            time.sleep(0.05)
        return self.seen(kind)[0][0]

    def written_at(self, user: str, after: float) -> float | None:
        for t, e in self.seen("write"):
            if t >= after and e.data["user"] == user and e.data["side"] == "connect":
                return t
        return None


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def during_full_read(
    sb: SandboxProcess, people: list[str], changes: int, report: Report, extra: dict[str, Any]
) -> Watch:
    profile = _set_budget(CONNECT_PER_MIN, sb)
    for email in people[:changes]:
        sb.set_teams(email, *FREE)
    throttled = sb.stats()["throttled"]
    watch = Watch(profile)
    watch.start()
    started = watch.wait_for("progress")
    reads = [e for _, e in watch.seen("progress") if e.data["phase"] == "connect_reads"]
    while not reads:
        time.sleep(0.05)
        reads = [e for _, e in watch.seen("progress") if e.data["phase"] == "connect_reads"]
    read_s = len(people) / CONNECT_PER_MIN * 60
    progress(f"watch: full read of {len(people)} (~{read_s:.0f} s); {changes} changes during it")
    made: dict[str, float] = {}
    for i, email in enumerate(people[:changes]):
        time.sleep(max(0.0, (i + 1) * read_s / (changes + 2) - (time.monotonic() - started)))
        sb.set_teams(email, *CALL)
        made[email] = time.monotonic()
    first_cycle = watch.wait_for("cycle")
    delays = []
    for email, at in made.items():
        deadline = time.monotonic() + 60
        while (written := watch.written_at(email, at)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        delays.append((written or float("inf")) - at)
    report.add(
        run="Teams -> Connect during a full read", people=len(people), changes=changes,
        p50_s=round(statistics.median(delays), 2), p95_s=round(_pct(delays, 0.95), 2),
        max_s=round(max(delays), 2), full_read_s=round(first_cycle - started, 1),
        connect_429=sb.stats()["throttled"] - throttled,
    )  # fmt: skip
    extra["during_full_read_delays_s"] = [round(d, 2) for d in delays]
    return watch


def faster_than_budget(
    sb: SandboxProcess, people: list[str], watch: Watch, rate: int, seconds: float,
    report: Report,
) -> None:  # fmt: skip
    rng = random.Random(11)
    pool = people[: max(50, rate // 4)]
    last: dict[str, tuple[str, str]] = {}
    writes_before, throttled = _connect_writes(sb), sb.stats()["throttled"]
    most_queued, oldest = 0, 0.0
    progress(f"{rate} Teams changes a minute for {seconds:.0f} s against {CONNECT_PER_MIN}/min")
    start = time.monotonic()
    made = 0
    while time.monotonic() - start < seconds:
        email = rng.choice(pool)
        state = FREE if last.get(email) == CALL else CALL
        sb.set_teams(email, *state)
        last[email] = state
        made += 1
        waiting = dict(watch.engine._writes_waiting)
        now = time.monotonic()
        most_queued = max(most_queued, len(waiting))
        oldest = max([oldest, *(now - t for t in waiting.values())])
        time.sleep(max(0.0, start + made * 60.0 / rate - time.monotonic()))
    ended = time.monotonic()
    want = {e: ("onphone" if s == CALL else "available") for e, s in last.items()}
    while True:
        waiting = dict(watch.engine._writes_waiting)
        now = time.monotonic()
        most_queued = max(most_queued, len(waiting))
        oldest = max([oldest, *(now - t for t in waiting.values())])
        behind = [e for e, v in want.items() if sb.connect(e)["status"] != v]
        if not behind or now - ended > 600:
            break
        time.sleep(1.0)
    report.add(
        run=f"{rate} changes/min against {CONNECT_PER_MIN}/min", people=len(pool),
        changes=made, connect_writes=_connect_writes(sb) - writes_before,
        most_queued=most_queued, oldest_wait_s=round(oldest, 1),
        converged_after_last_change_s=round(time.monotonic() - ended, 1) if not behind else None,
        still_behind=len(behind), connect_429=sb.stats()["throttled"] - throttled,
    )  # fmt: skip


def steady_cpu(watch: Watch, people: int, seconds: float, report: Report) -> None:
    progress(f"steady watch, {seconds:.0f} s without changes: CPU")
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    chosen = [e.data for _, e in watch.seen("interval")]
    per_hour = cpu / wall * 3600
    report.add(
        run="steady watch CPU", people=people, cpu_s=round(cpu, 2), wall_s=round(wall, 1),
        cpu_s_per_hour=round(per_hour, 1),
        interval_s=chosen[-1]["interval_s"] if chosen else None,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--rate", type=int, default=600)
    parser.add_argument("--flood", type=float, default=60.0)
    parser.add_argument("--steady", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    report = Report(
        "budget",
        ["run", "people", "connect_requests", "wall_s", "minimum_s", "ratio", "changes",
         "p50_s", "p95_s", "max_s", "connect_writes", "most_queued", "oldest_wait_s",
         "converged_after_last_change_s", "cpu_s_per_hour", "connect_429", "graph_429"],
    )  # fmt: skip
    with (
        isolated_env(),
        SandboxProcess(
            users=args.users, seed=args.seed, throttle=GRAPH_LIMIT, throttle_window=GRAPH_WINDOW_S
        ) as sb,
    ):
        engine_driver.prepare(sb)
        rows = __import__("json").loads(engine_driver.cli("-o", "json", "users"))
        skip = {"admin@contoso.example", sb.profile_info()["sync_user"]}
        people = [r["email"] for r in rows if r["status"] == "matched" and r["email"] not in skip]
        for email in people:
            sb.set_connect(email, "available")
        progress("first run without a budget (the state: every pair adopted)")
        _set_budget(0, sb)
        engine_driver.cli("-o", "json", "sync")
        one_shot(sb, people, report)
        watch = during_full_read(sb, people, args.changes, report, report.extra)
        try:
            faster_than_budget(sb, people, watch, args.rate, args.flood, report)
            steady_cpu(watch, len(people), args.steady, report)
        finally:
            watch.stop()
    report.notes.append(
        f"both budgets enforced by the sandbox: Graph {GRAPH_LIMIT}/{GRAPH_WINDOW_S:g} s, "
        f"Connect {CONNECT_PER_MIN}/min; minimum = Connect requests / {CONNECT_PER_MIN} a minute"
    )
    report.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
