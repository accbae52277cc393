"""How a watch survives the world: which failures are weathered, and how long to wait between tries.

Owns :func:`is_transient`, :func:`service_of`, :class:`Backoff` (capped exponential backoff with
jitter) and :class:`Outage` (what ``status``, the live view and the NDJSON stream say while a
service is down: "Graph unreachable since 10:02, retrying in 20 s").

The rule (issue: a watch must be safe to leave running): a ``sync --watch`` ends only on errors a
retry cannot fix — configuration and prerequisites (exit 3) and sign-in, consent or permission
(exit 4). Everything else the services do to it — connections refused or dropped, timeouts,
5xx, throttling past the clients' own retries, an odd answer — is weathered: the watch waits
(backoff below, interruptible by SIGINT/SIGTERM), tries again, and on the first clean cycle
reconciles in full (directories listed again, Connect read in full), because changes made
meanwhile were not seen. The HTTP clients already retry each request a few times; this is the
layer above them, and it retries for as long as the watch runs.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from presencectl.errors import AuthError, ConfigError, ExitCode, PresencectlError, UsageError

BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 60.0


def is_transient(exc: BaseException) -> bool:
    """True for a failure a watch should wait out; False for one that must end it."""
    if isinstance(exc, (ConfigError, AuthError, UsageError)):
        return False
    if isinstance(exc, PresencectlError):
        return exc.exit_code in (ExitCode.ERROR, ExitCode.PARTIAL)
    return isinstance(exc, (httpx.TransportError, asyncio.TimeoutError, OSError))


def service_of(exc: BaseException) -> str:
    """Which service a failure came from, for people (Graph, Connect, Microsoft sign-in)."""
    code = getattr(exc, "code", "") or ""
    text = getattr(exc, "message", None) or str(exc)
    if code.startswith("connect"):
        return "Connect"
    if text.startswith("Graph") or code.startswith("graph"):
        return "Graph"
    if "sign-in" in text:
        return "Microsoft sign-in"
    if re.search(r"\bConnect\b", text):
        return "Connect"
    return "a service"


@dataclass
class Backoff:
    """``base * 2**(n-1)`` seconds before the n-th retry, capped, with "equal jitter" (never
    less than half the step, so a fleet of watches does not retry in lockstep)."""

    base: float = BACKOFF_BASE_S
    cap: float = BACKOFF_CAP_S
    rng: random.Random | None = None
    attempts: int = 0

    def next_delay(self) -> float:
        self.attempts += 1
        ceiling = min(self.cap, self.base * 2 ** (self.attempts - 1))
        rng = self.rng or random
        return float(ceiling * (0.5 + rng.random() / 2))

    def reset(self) -> None:
        self.attempts = 0


@dataclass
class Outage:
    """A service the watch cannot use right now."""

    service: str
    since: datetime
    error: str
    retry_in_s: float = 0.0
    attempts: int = 0

    def message(self) -> str:
        since = self.since.astimezone().strftime("%H:%M")
        return f"{self.service} unreachable since {since}, retrying in {self.retry_in_s:.0f} s"

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "since": self.since.isoformat(),
            "retry_in_s": round(self.retry_in_s, 1),
            "attempts": self.attempts,
            "error": self.error,
            "message": self.message(),
        }


__all__ = ["Backoff", "Outage", "is_transient", "service_of"]
