"""The Connect request budget (connect/budget.py): N starts in any minute, writes before reads,
the full rate reached in steady state. On an injected clock: minutes pass instantly."""

from __future__ import annotations

import asyncio

import pytest

from presencectl.connect.budget import WINDOW_S, Priority, RequestBudget
from tests.fakes import FakeClock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _max_in_any_minute(starts: list[float]) -> int:
    starts = sorted(starts)
    return max(
        (sum(1 for t in starts[i:] if t < start + WINDOW_S) for i, start in enumerate(starts)),
        default=0,
    )


@pytest.mark.anyio
async def test_a_long_run_stays_inside_the_budget_at_its_full_rate() -> None:
    clock = FakeClock()
    budget = RequestBudget(250, clock=clock, sleep=clock.sleep)
    starts: list[float] = []
    t0 = clock()

    async def one() -> None:
        await budget.acquire(Priority.BULK)
        starts.append(clock())

    await asyncio.gather(*(one() for _ in range(1100)))
    assert _max_in_any_minute(starts) <= 250
    wall = clock() - t0
    minimum = budget.minimum_s(1100)  # 264 s
    # the full rate, not 5/6 of it (the old burst-then-refill bucket took 1.2 x the minimum)
    assert wall <= 1.02 * minimum, (wall, minimum)


@pytest.mark.anyio
async def test_a_write_that_arrives_during_a_bulk_read_leaves_with_the_next_slot() -> None:
    clock = FakeClock()
    budget = RequestBudget(200, clock=clock, sleep=clock.sleep)
    order: list[str] = []
    write_wait: list[float] = []

    async def read(i: int) -> None:
        await budget.acquire(Priority.BULK)
        order.append(f"r{i}")

    async def write() -> None:
        await clock.sleep(6.0)  # 6 s into the full read
        queued_at = clock()
        await budget.acquire(Priority.URGENT)
        write_wait.append(clock() - queued_at)
        order.append("w")

    reads = [asyncio.ensure_future(read(i)) for i in range(300)]  # 90 s of reads at 200/min
    await write()
    assert budget.queued(Priority.BULK) > 200  # the read was far from done
    await asyncio.gather(*reads)
    # without priorities the write would wait behind every read queued before it (~80 s)
    assert write_wait[0] <= 60.0 / 200 + 0.01
    assert order.index("w") < 30
    assert budget.granted[Priority.URGENT] == 1 and budget.granted[Priority.BULK] == 300


@pytest.mark.anyio
async def test_urgent_requests_keep_their_arrival_order_and_bulk_fills_the_rest() -> None:
    clock = FakeClock()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)
    order: list[str] = []

    async def go(name: str, priority: Priority) -> None:
        await budget.acquire(priority)
        order.append(name)

    tasks = [asyncio.ensure_future(go(f"b{i}", Priority.BULK)) for i in range(5)]
    await asyncio.sleep(0)
    tasks += [asyncio.ensure_future(go(f"u{i}", Priority.URGENT)) for i in range(3)]
    await asyncio.gather(*tasks)
    first_bulk = order[0]  # the one that found a slot free at once
    assert first_bulk == "b0"
    assert order[1:4] == ["u0", "u1", "u2"]
    assert order[4:] == ["b1", "b2", "b3", "b4"]


@pytest.mark.anyio
async def test_the_snapshot_reports_the_queue_and_its_oldest_wait() -> None:
    clock = FakeClock()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)
    waiting = [asyncio.ensure_future(budget.acquire(Priority.URGENT)) for _ in range(4)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    snap = budget.snapshot()
    assert snap["per_minute"] == 60
    assert snap["queued_urgent"] >= 2
    await asyncio.gather(*waiting)
    assert budget.snapshot()["queued_urgent"] == 0
    assert budget.granted[Priority.URGENT] == 4


@pytest.mark.anyio
async def test_a_cancelled_waiter_gives_its_slot_to_the_next() -> None:
    clock = FakeClock()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)
    await budget.acquire()
    gone = asyncio.ensure_future(budget.acquire(Priority.URGENT))
    kept = asyncio.ensure_future(budget.acquire(Priority.BULK))
    await asyncio.sleep(0)
    gone.cancel()
    await kept
    assert budget.granted == {Priority.URGENT: 0, Priority.BULK: 2}
    await budget.aclose()


@pytest.mark.anyio
async def test_no_budget_at_zero() -> None:
    clock = FakeClock()
    budget = RequestBudget(0, clock=clock, sleep=clock.sleep)
    await asyncio.gather(*(budget.acquire() for _ in range(1000)))
    assert clock.slept == 0.0 and not budget.enabled


@pytest.mark.anyio
async def test_a_run_that_follows_another_within_a_minute_continues_its_budget() -> None:
    """The service's window still holds the previous run's requests: the budget preloaded
    with them waits for the oldest to leave instead of starting full (which drew 15 429s
    from the sandbox in bench/budget.py when a watch followed a one-shot at once)."""
    clock = FakeClock()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)
    budget.preload([clock() - 30.0 + i * 0.5 for i in range(60)])  # the last 30 s: all 60 used
    start = clock()
    await budget.acquire()
    assert clock() - start == pytest.approx(30.5, abs=0.01)  # the oldest leaves the window
    fresh = RequestBudget(60, clock=clock, sleep=clock.sleep)
    fresh.preload([clock() - 120.0] * 60)  # older than the window: nothing counts
    start = clock()
    await fresh.acquire()
    assert clock() == start
