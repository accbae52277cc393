"""A reader that leaves: ``presencectl sync --watch -o json | head -1``.

Owns :class:`ClosedPipeGuard`. When a write to stdout fails with ``BrokenPipeError`` the reader
is gone for good: the guard points stdout at the null device (so nothing more fails, not even
the interpreter's flush at exit), sets the run's ``stop`` event so that the watch finishes the
batch in flight and persists, and remembers it, so that the command can end quietly with exit 0
— as ``yes | head`` does. Without it every later event raised again: a traceback per event.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any


class ClosedPipeGuard:
    """Wraps the writes of a long command to stdout; see the module docstring."""

    def __init__(self) -> None:
        self.closed = False
        self.stop: asyncio.Event | None = None  # the run's stop event, once it exists

    def write(self, emit: Callable[..., Any], *args: Any) -> None:
        if self.closed:
            return
        try:
            emit(*args)
        except BrokenPipeError:
            self.closed = True
            silence_stdout()
            if self.stop is not None:
                self.stop.set()


def silence_stdout() -> None:
    """Point file descriptor 1 at the null device (an in-memory stdout has none: nothing to do)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


__all__ = ["ClosedPipeGuard", "silence_stdout"]
