"""Access tokens for Graph: the value type and the provider contract the client calls.

Owns: :class:`AccessToken`, the :class:`TokenProvider` protocol, and :class:`TokenCache`, the
client-side cache that asks a provider for a new token only when the cached one is within
``refresh_margin`` seconds of expiry, or when Graph answered 401 (``force_refresh=True``).

Providers are synchronous because msal is: the client calls them in ``asyncio.to_thread``. The
identity package supplies the real ones (client credentials, the sync user); tests pass fakes.
Tokens are never logged, and ``repr`` of an :class:`AccessToken` hides the token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

REFRESH_MARGIN_S = 120.0


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and the epoch time (seconds) at which it expires."""

    token: str = field(repr=False)
    expires_at: float

    def expires_within(self, seconds: float, now: float) -> bool:
        return self.expires_at - now <= seconds


class TokenProvider(Protocol):
    """Returns a valid token; ``force_refresh`` asks for a fresh one (bypassing msal's cache)."""

    def __call__(self, force_refresh: bool = False) -> AccessToken: ...


def access_token_from_msal(result: Mapping[str, Any], now: float | None = None) -> AccessToken:
    """An :class:`AccessToken` from an msal ``acquire_token_*`` result (``expires_in`` seconds)."""
    issued = time.time() if now is None else now
    return AccessToken(
        token=str(result["access_token"]), expires_at=issued + float(result.get("expires_in", 3599))
    )


class TokenCache:
    """One cached token per client; concurrent callers share a single provider call."""

    def __init__(
        self,
        provider: TokenProvider,
        *,
        refresh_margin: float = REFRESH_MARGIN_S,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._provider = provider
        self._margin = refresh_margin
        self._now = now
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def get(self, *, force_refresh: bool = False, stale: str | None = None) -> str:
        """The bearer token to send.

        ``stale`` is the token a 401 was answered to: if another caller already replaced it, the
        new one is returned without a second forced refresh.
        """
        async with self._lock:
            current = self._token
            if (
                force_refresh
                and current is not None
                and stale is not None
                and current.token != stale
            ):
                return current.token
            if (
                force_refresh
                or current is None
                or current.expires_within(self._margin, self._now())
            ):
                current = await asyncio.to_thread(self._provider, force_refresh)
                self._token = current
                self.fetches += 1
            return current.token
