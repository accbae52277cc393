"""Test doubles for code that uses the Graph client: a clock whose sleep returns at once.

Owns: :class:`FakeClock`. Pass ``clock=fake, sleep=fake.sleep`` to
:class:`~presencectl.graph.ratelimit.RateLimiter` (and ``now=fake`` to the client) and a run that
would wait minutes for budget or Retry-After finishes instantly, with the waits still measured.
"""

from __future__ import annotations

import asyncio


class FakeClock:
    """Time that moves only when someone sleeps (or :meth:`advance` is called)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start
        self.slept = 0.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        self.slept += max(0.0, seconds)
        await asyncio.sleep(0)  # still let other tasks run, as a real sleep would
