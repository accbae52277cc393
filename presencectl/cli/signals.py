"""SIGINT and SIGTERM for the commands that write (``sync``, ``sync --watch``, ``disable``).

Owns :func:`run_stoppable`: it runs a coroutine on a new event loop with both signals caught.
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
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

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


__all__ = ["run_stoppable"]
