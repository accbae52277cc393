"""The notification receiver's HTTP limits (issue 26): it faces the internet.

Each test drives a real uvicorn receiver on loopback (tests.test_teams_notifications.Running)
with a raw socket or httpx, and proves the limit by what the server answered and counted.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from presencectl.sync import receiver as receiver_mod
from tests.test_teams_notifications import STATE, Running


@pytest.fixture
def receiver() -> Iterator[Running]:
    r = Running()
    yield r
    r.close()


@pytest.fixture
def small() -> Iterator[Running]:
    r = Running(max_items=5, max_connections=4)
    yield r
    r.close()


def _raw(url: str) -> tuple[socket.socket, str]:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock, "/" + url.split("//", 1)[1].split("/", 1)[1]


def _status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_declared_length_over_the_limit_is_refused_before_the_body(receiver: Running) -> None:
    sock, path = _raw(receiver.url)
    with sock:
        # 300 MiB announced, 10 bytes sent: the answer comes without the rest ever arriving.
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {300 * 1024 * 1024}\r\n\r\n".encode()
            + b'{"value":['
        )
        assert _status(sock) == 413
    assert receiver.receiver.counts.refused_large == 1
    assert receiver.items == []


def test_a_chunked_body_is_cut_off_at_the_limit(receiver: Running) -> None:
    sock, path = _raw(receiver.url)
    sent = 0
    with sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        piece = b" " * 65536
        try:
            for _ in range(300 * 16):  # 300 MiB, never finished (no final chunk)
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                sent += len(piece)
        except OSError:  # the receiver answered and closed: the sender is cut off
            pass
        assert _status(sock) == 413
    assert receiver.receiver.counts.refused_large == 1
    # Neither read whole nor drained: the connection was closed a few MiB in (socket buffers).
    assert sent < 64 * 1024 * 1024, sent


def test_a_body_at_the_limit_is_still_read(receiver: Running) -> None:
    item = {"subscriptionId": "s", "clientState": STATE, "resourceData": {"id": "u1"}}
    body = b'{"value": [' + httpx.Request("POST", "/", json=item).content + b"]}"
    body += b" " * (receiver_mod.MAX_BODY - len(body))
    assert len(body) == receiver_mod.MAX_BODY
    assert httpx.post(receiver.url, content=body).status_code == 202
    receiver.wait_for(lambda: len(receiver.items) == 1)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError in the parser
        b'{"value": ' + b"{" * 50_000 + b"}" * 50_000 + b"}",
        b"\xff\xfe not utf-8",
        b'{"value": "not a list"}',
        b"[]",
        b"",
    ],
    ids=["nested-list", "nested-object", "bad-utf8", "value-not-list", "array", "empty"],
)
def test_every_parse_error_is_400_without_a_traceback(
    receiver: Running, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        answer = httpx.post(receiver.url, content=body)
    assert answer.status_code == 400
    assert receiver.receiver.counts.dropped_untrusted == 1
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_items_per_post_are_capped_and_warned_once(
    small: Running, caplog: pytest.LogCaptureFixture
) -> None:
    good = {"subscriptionId": "s", "clientState": STATE, "resourceData": {"id": "u1"}}
    bad = {**good, "clientState": "guess"}
    with caplog.at_level(logging.WARNING, logger="presencectl.sync.receiver"):
        answer = httpx.post(small.url, json={"value": [bad, bad, good, good, good] + [good] * 20})
    assert answer.status_code == 202
    small.wait_for(lambda: len(small.items) == 3)
    counts = small.receiver.counts
    assert (counts.received, counts.dropped_client_state, counts.dropped_excess) == (5, 2, 20)
    warnings = [r for r in caplog.records if r.name == "presencectl.sync.receiver"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "2 with a wrong clientState" in warnings[0].getMessage()


def test_many_wrong_client_states_make_one_log_line(
    receiver: Running, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {"subscriptionId": "s", "clientState": "guess", "resourceData": {"id": "u1"}}
    with caplog.at_level(logging.WARNING, logger="presencectl.sync.receiver"):
        assert httpx.post(receiver.url, json={"value": [bad] * 900}).status_code == 202
    assert receiver.receiver.counts.dropped_client_state == 900
    assert len([r for r in caplog.records if r.name == "presencectl.sync.receiver"]) == 1


def test_json_is_parsed_off_the_event_loop(receiver: Running, monkeypatch: Any) -> None:
    threads: list[str] = []
    original = receiver_mod._decode

    def spy(raw: bytes) -> Any:
        threads.append(threading.current_thread().name)
        return original(raw)

    monkeypatch.setattr(receiver_mod, "_decode", spy)
    assert httpx.post(receiver.url, json={"value": []}).status_code == 202
    assert threads and threads[0] != receiver.thread.name


def test_concurrency_is_limited(small: Running) -> None:
    # Four open connections fill limit_concurrency=4; a fifth gets uvicorn's 503 at once, and
    # once they are gone the receiver answers again.
    held = [_raw(small.url)[0] for _ in range(4)]
    try:
        state = small.receiver._server.server_state
        small.wait_for(lambda: len(state.connections) >= 4)
        assert httpx.post(small.url, json={"value": []}).status_code == 503
    finally:
        for sock in held:
            sock.close()
    small.wait_for(lambda: len(state.connections) == 0)
    assert httpx.post(small.url, json={"value": []}).status_code == 202
