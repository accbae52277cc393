"""cli/signals.py: the first SIGINT/SIGTERM asks to stop, the second aborts (both ways to wait)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from presencectl.cli.signals import run_stoppable, stop_on_signals


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_on_signals_first_stops_second_aborts_then_restores(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    seen: list[str] = []
    with pytest.raises(KeyboardInterrupt), stop_on_signals(seen.append) as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), sig)
        assert stop.wait(5) and seen == [sig.name]
        os.kill(os.getpid(), sig)
        for _ in range(1000):  # the handler runs between bytecodes of the main thread
            pass
        pytest.fail("the second signal did not abort")
    assert signal.getsignal(sig) == before


def test_run_stoppable_first_signal_sets_stop_and_the_run_returns() -> None:
    seen: list[str] = []

    async def work(stop: asyncio.Event) -> str:
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
        return "finished"

    assert run_stoppable(work, on_first=seen.append) == "finished"
    assert seen == ["SIGTERM"]


def test_run_stoppable_second_signal_aborts_as_keyboard_interrupt() -> None:
    async def work(stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(os.kill, os.getpid(), signal.SIGINT)
        await asyncio.wait_for(stop.wait(), 5)
        loop.call_soon(os.kill, os.getpid(), signal.SIGINT)
        await asyncio.sleep(5)  # cancelled by the second signal

    with pytest.raises(KeyboardInterrupt):
        run_stoppable(work)
