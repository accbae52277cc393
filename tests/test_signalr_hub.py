"""The sandbox's SignalR hub against the real pysignalr client and a raw websockets client.

The hub runs in a small Starlette app served by uvicorn on 127.0.0.1 in a thread (plain http/ws);
the TLS path is covered by the Connect end-to-end tests against the sandbox.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from pysignalr.client import SignalRClient
from pysignalr.exceptions import AuthorizationError
from starlette.applications import Starlette

from presencectl.sandbox.signalr import RECORD_SEPARATOR, SignalRHub, decode_records, encode_record

GOOD_TOKEN = "good-token"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class HubServer:
    """A hub in a uvicorn server on its own thread and loop."""

    def __init__(self, hub: SignalRHub) -> None:
        self.hub = hub
        config = uvicorn.Config(
            Starlette(routes=hub.routes()),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)

    async def publish(
        self, target: str, args: list[Any], subscription_id: str | None = None
    ) -> int:
        future = self.hub.publish_threadsafe(target, args, subscription_id)
        assert future is not None, "no client ever connected"
        return await asyncio.wrap_future(future)


@pytest.fixture
def hub_server() -> Iterator[HubServer]:
    hub = SignalRHub(
        "/univerge/hub/presence",
        authorize=lambda token: token == GOOD_TOKEN,
        keep_alive_interval=0.2,
        client_timeout=2.0,
    )
    with HubServer(hub) as server:
        yield server


async def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def _client(url: str, **kwargs: Any) -> SignalRClient:
    kwargs.setdefault("retry_count", 1)
    return SignalRClient(url, **kwargs)


def test_records_round_trip() -> None:
    text = encode_record({"type": 6}) + encode_record({"type": 1, "target": "X", "arguments": [1]})
    assert text.count(RECORD_SEPARATOR) == 2
    assert decode_records(text) == [{"type": 6}, {"type": 1, "target": "X", "arguments": [1]}]


def test_negotiate_answers_by_requested_version(hub_server: HubServer) -> None:
    url = f"{hub_server.http}/univerge/hub/presence/negotiate"
    headers = {"Authorization": f"Bearer {GOOD_TOKEN}"}
    v0 = httpx.post(url, headers=headers).json()
    assert set(v0) == {"connectionId", "availableTransports"}
    assert v0["availableTransports"] == [
        {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}
    ]
    v1 = httpx.post(url, params={"negotiateVersion": "1"}, headers=headers).json()
    assert v1["negotiateVersion"] == 1
    assert v1["connectionToken"] != v1["connectionId"]
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, params={"access_token": "wrong"}).status_code == 401
    assert httpx.post(url, params={"access_token": GOOD_TOKEN}).status_code == 200


@pytest.mark.anyio
async def test_pysignalr_receives_published_invocations(hub_server: HubServer) -> None:
    received: list[list[Any]] = []
    opened = asyncio.Event()
    client = _client(
        f"{hub_server.http}/univerge/hub/presence?subscriptionId=sub-1",
        headers={"Authorization": f"Bearer {GOOD_TOKEN}"},
    )

    async def on_event(args: list[Any]) -> None:
        received.append(args)

    async def on_open() -> None:
        opened.set()

    client.on("OnPresenceEvent", on_event)
    client.on_open(on_open)
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(opened.wait(), 30)
        payload = {"userId": "u1", "presenceState": "onphone", "whenRaised": "2025-01-01T00:00:00Z"}
        assert await hub_server.publish("OnPresenceEvent", [payload]) == 1
        assert await hub_server.publish("OnPresenceEvent", [payload], "sub-1") == 1
        assert await hub_server.publish("OnPresenceEvent", [payload], "other-sub") == 0
        await _wait_for(lambda: len(received) == 2)
        assert received[0] == [payload]
        # pysignalr's keep-alive pings and the hub's own pings keep the connection up.
        await asyncio.sleep(0.5)
        assert len(hub_server.hub.connections("sub-1")) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await _wait_for(lambda: not hub_server.hub.connections())


@pytest.mark.anyio
async def test_access_token_in_query_is_accepted(hub_server: HubServer) -> None:
    opened = asyncio.Event()
    client = _client(f"{hub_server.http}/univerge/hub/presence?access_token={GOOD_TOKEN}")

    async def on_open() -> None:
        opened.set()

    client.on_open(on_open)
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(opened.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.anyio
async def test_pysignalr_without_token_is_refused(hub_server: HubServer) -> None:
    client = _client(f"{hub_server.http}/univerge/hub/presence")
    with pytest.raises(AuthorizationError):
        await asyncio.wait_for(client.run(), 30)


@pytest.mark.anyio
async def test_websocket_refuses_bad_token_and_unknown_connection_id(hub_server: HubServer) -> None:
    base = f"{hub_server.ws}/univerge/hub/presence"
    with pytest.raises(websockets.InvalidStatus) as denied:
        await websockets.connect(f"{base}?access_token=wrong")
    assert denied.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus) as unknown:
        await websockets.connect(f"{base}?id=nope&access_token={GOOD_TOKEN}")
    assert unknown.value.response.status_code == 404


@pytest.mark.anyio
async def test_negotiated_id_is_single_use_and_version_1_uses_the_token(
    hub_server: HubServer,
) -> None:
    base = f"{hub_server.ws}/univerge/hub/presence"
    async with httpx.AsyncClient() as http:
        v1 = (
            await http.post(
                f"{hub_server.http}/univerge/hub/presence/negotiate",
                params={"negotiateVersion": "1", "access_token": GOOD_TOKEN},
            )
        ).json()
    with pytest.raises(websockets.InvalidStatus):  # v1: the connectionId is not the id to send
        await websockets.connect(f"{base}?id={v1['connectionId']}&access_token={GOOD_TOKEN}")
    async with websockets.connect(
        f"{base}?id={v1['connectionToken']}&access_token={GOOD_TOKEN}"
    ) as ws:
        await ws.send(encode_record({"protocol": "json", "version": 1}))
        assert await ws.recv() == "{}" + RECORD_SEPARATOR
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(f"{base}?id={v1['connectionToken']}&access_token={GOOD_TOKEN}")


@pytest.mark.anyio
async def test_raw_protocol_handshake_pings_and_timeout() -> None:
    hub = SignalRHub(authorize=None, keep_alive_interval=0.05, client_timeout=0.4)
    with HubServer(hub) as server:
        async with websockets.connect(f"{server.ws}/univerge/hub/presence") as ws:
            await ws.send(encode_record({"protocol": "messagepack", "version": 1}))
            answer = decode_records(str(await ws.recv()))
            assert "not supported" in answer[0]["error"]

        async with websockets.connect(f"{server.ws}/univerge/hub/presence") as ws:
            await ws.send(encode_record({"protocol": "json", "version": 1}))
            assert decode_records(str(await ws.recv())) == [{}]
            assert decode_records(str(await ws.recv())) == [{"type": 6}]
            # A client method call gets an error completion: the hub has no client-callable methods.
            await ws.send(
                encode_record({"type": 1, "invocationId": "7", "target": "Nope", "arguments": []})
            )
            records: list[dict[str, Any]] = []
            while not any(r.get("type") == 3 for r in records):
                records += decode_records(str(await ws.recv()))
            assert any(
                r.get("invocationId") == "7" and "Unknown hub method" in r["error"] for r in records
            )
            # Silent past client_timeout: closed with a close record carrying an error.
            closing: list[dict[str, Any]] = []
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    closing += decode_records(str(await asyncio.wait_for(ws.recv(), 30)))
            assert closing[-1]["type"] == 7 and "timeout" in closing[-1]["error"]


@pytest.mark.anyio
async def test_disconnect_closes_the_subscription_connections(hub_server: HubServer) -> None:
    closed = asyncio.Event()
    opened = asyncio.Event()
    client = _client(
        f"{hub_server.http}/univerge/hub/presence?subscriptionId=s9&access_token={GOOD_TOKEN}"
    )

    async def on_open() -> None:
        opened.set()

    async def on_close() -> None:
        closed.set()

    client.on_open(on_open)
    client.on_close(on_close)
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(opened.wait(), 30)
        loop_future = asyncio.run_coroutine_threadsafe(
            hub_server.hub.disconnect("s9"), hub_server.hub._loop
        )  # type: ignore[arg-type]
        assert await asyncio.wrap_future(loop_future) == 1
        await asyncio.wait_for(closed.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_handshake_record_is_compact_json() -> None:
    assert (
        encode_record({"protocol": "json", "version": 1})
        == json.dumps({"protocol": "json", "version": 1}, separators=(",", ":")) + "\x1e"
    )
