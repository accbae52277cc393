"""Connect client paths no other test reaches: the token request failing on the network (retried,
then a clear error), and the change feed's event queue overflowing (oldest dropped, counted)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest

from presencectl.connect import ConnectClient, PresenceFeed
from presencectl.connect.presence import get_presence
from presencectl.errors import ExitCode, NetworkError

SECRET = "very-s3cret-value"


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _no_sleep(_: float) -> None:
    return None


def test_token_request_refused_on_the_network_is_retried_then_a_clear_error() -> None:
    port = _closed_port()

    async def go() -> tuple[NetworkError, int]:
        client = ConnectClient(
            f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}", "client-1", SECRET,
            max_attempts=3, sleep=_no_sleep,
        )  # fmt: skip
        async with client:
            with pytest.raises(NetworkError) as caught:
                await get_presence(client, "u1")
            return caught.value, client.stats.token_requests

    error, attempts = asyncio.run(go())
    assert attempts == 3  # every attempt went out, none more
    assert error.code == "connect_unreachable"
    assert error.exit_code == ExitCode.ERROR
    assert f"127.0.0.1:{port}" in error.message and "ConnectError" in error.message
    assert "proxy" in (error.hint or "") and "connect_login_url" in (error.hint or "")
    assert SECRET not in error.message + (error.hint or "")


def test_a_token_request_lost_once_on_the_network_succeeds_on_retry() -> None:
    calls = {"token": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/user/connect/token"):
            calls["token"] += 1
            if calls["token"] == 1:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(
                200, json={"access_token": "t1", "token_type": "Bearer", "expires_in": 3600}
            )
        assert request.headers["authorization"] == "Bearer t1"
        return httpx.Response(200, json={"presence": "onphone"})

    async def go() -> str:
        async with ConnectClient(
            "https://login.example", "https://api.example", "client-1", SECRET,
            transport=httpx.MockTransport(handler), sleep=_no_sleep,
        ) as client:  # fmt: skip
            return await get_presence(client, "u1")

    assert asyncio.run(go()) == "onphone"
    assert calls["token"] == 2


def _raw(user: str, presence: str) -> dict[str, Any]:
    return {"userId": user, "presenceState": presence}


def test_feed_queue_overflow_drops_the_oldest_events_and_counts_them() -> None:
    async def go() -> tuple[PresenceFeed, list[tuple[str, str]], list[str]]:
        seen: list[str] = []
        client = ConnectClient("https://login.example", "https://api.example", "c", SECRET)
        feed = PresenceFeed(client, queue_size=3, on_event=lambda e: seen.append(e.user_id))
        await feed._on_invocation([_raw(f"u{i}", "onphone") for i in range(5)])
        await feed._on_invocation([_raw("u5", "available"), "not an event"])
        await feed.close(delete_subscription=False)
        events = []

        async def drain() -> None:
            async for event in feed.events():
                events.append((event.user_id, event.presence))

        await asyncio.wait_for(drain(), timeout=5)  # close() ends the iteration, full or not
        await client.aclose()
        return feed, events, seen

    feed, events, seen = asyncio.run(go())
    assert feed.events_received == 6
    # The queue keeps the newest; the callback saw every event as it came.
    assert seen == [f"u{i}" for i in range(6)]
    assert feed.events_dropped == 3 + 1  # three by overflow, one to make room for close()
    assert events == [("u4", "onphone"), ("u5", "available")]
