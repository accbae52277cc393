"""How a watch survives the world: which failures are weathered, and how long to wait between tries.

Owns :func:`is_transient`, :func:`service_of`, :func:`service_down` (a bulk read that found a
whole service down rather than some users failing), :class:`Backoff` (capped exponential backoff
with jitter) and :class:`Outage` (what ``status``, the live view and the NDJSON stream say while a
service is down: "Graph unreachable since 10:02, retrying in 20 s"; the outage keeps *when* the
next try is due, so ``status`` counts down to it: :func:`outage_text`).

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
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from presencectl.errors import (
    ApiError,
    AuthError,
    ConfigError,
    ExitCode,
    NetworkError,
    PresencectlError,
    UsageError,
)

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


def service_down(
    succeeded: int, failures: Mapping[str, PresencectlError]
) -> PresencectlError | None:
    """The failure to wait out when a bulk read found the service itself down: nothing was
    read, and every failure is a connection error, a timeout or a 5xx (the client's own retries
    already spent). One user's 404, or a mix with reads that worked, is those users' failure."""
    if succeeded or not failures:
        return None
    errors = list(failures.values())
    if all(_unreachable(e) for e in errors):
        return errors[0]
    return None


def _unreachable(exc: PresencectlError) -> bool:
    if isinstance(exc, NetworkError):  # connection refused or dropped, timeouts
        return True
    return isinstance(exc, ApiError) and exc.status is not None and exc.status >= 500


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
    retry_at: datetime | None = None  # when the next try is due (since + waits; set by retry())

    def retry(self, now: datetime, delay: float, attempts: int) -> None:
        """The next try comes ``delay`` seconds after ``now``."""
        self.retry_in_s, self.attempts = delay, attempts
        self.retry_at = now + timedelta(seconds=delay)

    def message(self, now: datetime | None = None) -> str:
        """ "Graph unreachable since 10:02, retrying in 20 s"; with ``now``, the seconds left
        until ``retry_at`` (never negative: "retrying now" once it is due)."""
        return _message(self.service, self.since, self._left(now))

    def _left(self, now: datetime | None) -> float:
        if now is None or self.retry_at is None:
            return self.retry_in_s
        return (self.retry_at - now).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "since": self.since.isoformat(),
            "retry_in_s": round(self.retry_in_s, 1),
            "retry_at": None if self.retry_at is None else self.retry_at.isoformat(),
            "attempts": self.attempts,
            "error": self.error,
            "message": self.message(),
        }


def _message(service: str, since: datetime, left_s: float) -> str:
    when = since.astimezone().strftime("%H:%M")
    # Rounded up: "in 1 s" until the moment is due; then "now", never a negative count.
    retry = "retrying now" if left_s <= 0 else f"retrying in {math.ceil(left_s - 1e-9):.0f} s"
    return f"{service} unreachable since {when}, {retry}"


def outage_text(stored: Mapping[str, Any], now: datetime) -> str | None:
    """What ``status`` says at ``now`` about an outage stored by a watch (``Outage.to_dict``):
    the seconds left are counted from ``retry_at`` when it is read, not when it was written."""
    try:
        since = datetime.fromisoformat(str(stored["since"]))
        retry_at = stored.get("retry_at")
        if retry_at is None:  # stored by a version without retry_at: its own words
            return str(stored["message"])
        left = (datetime.fromisoformat(str(retry_at)) - now).total_seconds()
        return _message(str(stored["service"]), since, left)
    except (KeyError, TypeError, ValueError):
        message = stored.get("message")
        return message if isinstance(message, str) else None


__all__ = ["Backoff", "Outage", "is_transient", "outage_text", "service_down", "service_of"]
