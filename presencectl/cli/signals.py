"""SIGINT and SIGTERM for the commands that run until stopped: one rule, two ways to wait.

The rule: the first signal asks to stop (finish what is in flight, then end normally), the
second aborts at once as ``KeyboardInterrupt`` (exit 130 at the error boundary).

Owns :func:`run_stoppable` (``sync``, ``sync --watch``, ``disable``: a coroutine on a new event
loop) and :func:`stop_on_signals` (``demo``, ``sandbox serve``: a synchronous wait on a
``threading.Event``).

:func:`run_stoppable` runs a coroutine on a new event loop with both signals caught.
The first signal sets the ``stop`` event the engine watches (it finishes the batch in flight,
persists state and audit, and returns its result, marked interrupted); the second cancels the
run at once — still consistent, because the engine saves its intent before sending and every
save is one SQLite transaction (see ``sync/state.py``) — and surfaces as ``KeyboardInterrupt``,
which the error boundary turns into exit 130.

Where the loop cannot take signal handlers (Windows, not the main thread) Ctrl-C keeps Python's
default: ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_stoppable(
    make: Callable[[asyncio.Event], Awaitable[T]],
    on_first: Callable[[str], None] | None = None,
) -> T:
    """``asyncio.run(make(stop))`` where SIGINT/SIGTERM set ``stop`` once, then abort."""

    async def main() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        hits = 0

        def handle(sig: signal.Signals) -> None:
            nonlocal hits
            hits += 1
            if hits == 1:
                stop.set()
                if on_first is not None:
                    on_first(sig.name)
            elif task is not None:
                task.cancel()

        installed = []
        for sig in SIGNALS:
            try:
                loop.add_signal_handler(sig, handle, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or Windows: Ctrl-C raises KeyboardInterrupt
        try:
            return await make(stop)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


@contextlib.contextmanager
def stop_on_signals(on_first: Callable[[str], None] | None = None) -> Iterator[threading.Event]:
    """Yield an event that SIGINT/SIGTERM set once; a second signal raises KeyboardInterrupt.

    The previous handlers come back on exit. Outside the main thread Python allows no handler:
    the event is never set and Ctrl-C keeps its default.
    """
    stop = threading.Event()

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if on_first is not None:
            on_first(signal.Signals(signum).name)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["run_stoppable", "stop_on_signals"]
