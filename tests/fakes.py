"""Test doubles shared by the tests (they live here, not in the package).

- :class:`FakeClock`: time that moves only when someone sleeps. Pass ``clock=fake,
  sleep=fake.sleep`` to :class:`~presencectl.graph.ratelimit.RateLimiter` (and ``now=fake`` to the
  Graph client) and a run that would wait minutes for budget or Retry-After finishes instantly,
  with the waits still measured.
- :func:`fresh_secrets_process`: ``presencectl.secrets`` as a new process finds it — the one-time
  keyring fallback warning not given yet, the keyring not known to have failed.
"""

from __future__ import annotations

import asyncio

import pytest

from presencectl import secrets


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


def fresh_secrets_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget what presencectl.secrets remembers per process (both flags must still exist:
    monkeypatch raises if one was renamed, so this cannot silently stop resetting)."""
    monkeypatch.setattr(secrets, "_warned_fallback", False)
    monkeypatch.setattr(secrets, "_keyring_failed", False)
