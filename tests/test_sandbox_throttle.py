"""Sandbox throttling (429 + Retry-After per app and tenant) and fault injection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from presencectl.sandbox import running_sandbox
from presencectl.sandbox.throttle import SlidingWindow, Ticket

APP_A = "aaaaaaaa-0000-4000-8000-000000000001"
APP_B = "bbbbbbbb-0000-4000-8000-000000000002"


def headers(sb: Any, appid: str = APP_A) -> dict[str, str]:
    token, _ = sb.world.issue_token(kind="app", appid=appid, roles=("Presence.ReadWrite.All",))
    return {"Authorization": f"Bearer {token}"}


def read(sb: Any, appid: str = APP_A) -> httpx.Response:
    person = next(p for p in sb.world.people if p.azure_id)
    return sb.control.get(f"/v1.0/users/{person.azure_id}/presence", headers=headers(sb, appid))


@pytest.fixture
def sb() -> Iterator[Any]:
    with running_sandbox(users=5, throttle=3, throttle_window=30.0) as sandbox:
        yield sandbox


def test_window_admits_limit_then_refuses_until_oldest_leaves() -> None:
    window = SlidingWindow()
    for i in range(3):
        assert window.admit("k", 100.0 + i, 3, 30.0) == (None, False)
    wait, inside = window.admit("k", 103.0, 3, 30.0)  # no ticket: delivered when given
    assert (wait, inside) == (27, False)
    wait, inside = window.admit("k", 110.0, 3, 30.0)
    assert inside is True and wait == 20
    assert window.admit("k", 130.0, 3, 30.0) == (None, False)
    assert window.admit("other", 110.0, 3, 30.0) == (None, False)


def test_retry_after_is_when_a_request_fits_again_after_the_limit_was_lowered() -> None:
    """A window holding more than a lowered limit: Retry-After waits until all but limit - 1
    have left (the oldest leaving alone would free nothing), for one request and for a batch."""
    window = SlidingWindow()
    for i in range(10):  # accepted under a high limit, one a second
        assert window.admit("app", float(i), 100, 30.0)[0] is None
    wait, _ = window.admit("app", 10.0, 3, 30.0)  # the limit is now 3
    # 10 in the window: 8 must leave, the 8th (sent at 7 s) leaves at 37 s: 27 s from 10 s.
    assert wait == 27
    assert window.admit("app", 37.5, 3, 30.0)[0] is None
    batch = SlidingWindow()
    for i in range(10):
        assert batch.admit("app", float(i), 100, 30.0)[0] is None
    wait, _ = batch.refuse_all("app", 10.0, 5, 30.0, count=2)
    # 2 more under a limit of 5: 7 of the 10 must leave; the 7th (at 6 s) leaves at 36 s.
    assert wait == 26


def test_only_a_request_sent_after_the_429_was_delivered_is_held_against_the_client() -> None:
    window = SlidingWindow()
    for i in range(3):
        assert window.admit("k", 100.0 + i, 3, 30.0, Ticket(100.0 + i)) == (None, False)
    answer = Ticket(103.0)
    assert window.admit("k", 103.0, 3, 30.0, answer) == (27, False)
    # Arrived while that 429 was still on its way out: refused, not counted — however long
    # after the 429 it is looked at (no grace period involved).
    assert window.admit("k", 103.2, 3, 30.0, Ticket(103.2)) == (27, False)
    answer.delivered(103.5)
    late_look = Ticket(103.4)  # arrived before the delivery, examined after it
    assert window.admit("k", 109.0, 3, 30.0, late_look) == (21, False)
    # Noted as already waiting when the answer went out: arrived at the delivery, not after it.
    assert window.admit("k", 104.0, 3, 30.0, Ticket(103.5)) == (26, False)
    # Arrived after the delivery: sent inside the Retry-After window.
    assert window.admit("k", 103.6, 3, 30.0, Ticket(103.6)) == (27, True)
    # A $batch member shares its batch's ticket: the batch arrived inside the window, so each
    # member counts, even one looked at after the window ended (and then admitted).
    batch = Ticket(129.0)
    assert window.admit("k", 129.5, 3, 30.0, batch) == (1, True)
    assert window.admit("k", 130.5, 3, 30.0, batch) == (None, True)
    # After the Retry-After: admitted and not counted.
    assert window.admit("k", 131.0, 3, 30.0, Ticket(131.0)) == (None, False)


def test_members_of_the_batch_that_got_the_429_are_not_counted(sb: Any) -> None:
    person = next(p for p in sb.world.people if p.azure_id)
    member = {"method": "GET", "url": f"/users/{person.azure_id}/presence"}
    batch = {"requests": [{"id": str(i), **member} for i in range(5)]}
    answer = sb.control.post("/v1.0/$batch", json=batch, headers=headers(sb))
    assert answer.status_code == 200
    statuses = sorted(int(r["status"]) for r in answer.json()["responses"])
    assert statuses == [200, 200, 200, 429, 429]
    stats = sb.control.get("/_sandbox/stats").json()
    assert stats["throttled"] == 2 and stats["in_retry_after_window"] == 0
    # The batch's answer (with its 429s) is delivered: the next request was sent inside.
    assert read(sb).status_code == 429
    assert sb.control.get("/_sandbox/stats").json()["in_retry_after_window"] == 1


def test_a_request_in_flight_on_another_connection_is_not_counted(sb: Any) -> None:
    for _ in range(2):
        assert read(sb).status_code == 200
    # Both requests arrive before either is answered (each waits 300 ms in the sandbox first):
    # one is admitted, the other gets the 429; neither was sent after a delivered 429.
    sb.control.post("/_sandbox/faults", json={"latency_ms": 300})
    person = next(p for p in sb.world.people if p.azure_id)
    url = f"{sb.base_url}/v1.0/users/{person.azure_id}/presence"

    async def two_at_once() -> list[int]:
        async with (
            httpx.AsyncClient(verify=_verify(sb)) as one,
            httpx.AsyncClient(verify=_verify(sb)) as two,
        ):
            answers = await asyncio.gather(
                one.get(url, headers=headers(sb)), two.get(url, headers=headers(sb))
            )
        return sorted(a.status_code for a in answers)

    assert asyncio.run(two_at_once()) == [200, 429]
    stats = sb.control.get("/_sandbox/stats").json()
    assert stats["throttled"] == 1 and stats["in_retry_after_window"] == 0


def test_over_the_limit_gets_429_with_retry_after(sb: Any) -> None:
    assert [read(sb).status_code for _ in range(3)] == [200, 200, 200]
    refused = read(sb)
    assert refused.status_code == 429
    retry_after = refused.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    assert refused.json()["error"]["code"] == "TooManyRequests"
    # Another app of the same tenant has its own budget.
    assert read(sb, APP_B).status_code == 200
    # Coming back inside the Retry-After window is counted and refused: these requests were
    # sent after the 429 had been delivered (one at a time, each after the previous answer).
    assert read(sb).status_code == 429
    sb.control.post("/_sandbox/clock/advance", json={"seconds": 1})
    assert read(sb).status_code == 429
    stats = sb.control.get("/_sandbox/stats").json()
    assert stats["throttled"] == 3
    assert stats["in_retry_after_window"] == 2
    sb.control.post("/_sandbox/clock/advance", json={"seconds": int(retry_after) - 1})
    assert read(sb).status_code == 200


def test_limit_changes_through_faults(sb: Any) -> None:
    sb.control.post("/_sandbox/faults", json={"throttle_per_30s": 10})
    assert all(read(sb).status_code == 200 for _ in range(10))
    assert read(sb).status_code == 429


def test_error_rate_gives_500_503_504(sb: Any) -> None:
    sb.control.post("/_sandbox/faults", json={"error_rate": 1.0, "throttle_per_30s": 1000})
    seen: dict[int, httpx.Response] = {}
    for _ in range(20):
        answer = read(sb)
        seen.setdefault(answer.status_code, answer)
    assert set(seen) <= {500, 503, 504}
    assert len(seen) >= 2
    if 503 in seen:
        assert int(seen[503].headers["Retry-After"]) >= 1
    assert all("error" in answer.json() for answer in seen.values())
    sb.control.post("/_sandbox/faults", json={"error_rate": 0.0})
    assert read(sb).status_code == 200


def test_drop_rate_closes_the_connection(sb: Any) -> None:
    sb.control.post("/_sandbox/faults", json={"drop_rate": 1.0})
    person = next(p for p in sb.world.people if p.azure_id)
    with (
        httpx.Client(base_url=sb.base_url, verify=_verify(sb)) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get(f"/v1.0/users/{person.azure_id}/presence", headers=headers(sb))
    sb.control.post("/_sandbox/faults", json={"drop_rate": 0.0})
    assert read(sb).status_code == 200


def test_latency(sb: Any) -> None:
    sb.control.post("/_sandbox/faults", json={"latency_ms": 250})
    started = time.perf_counter()
    assert read(sb).status_code == 200
    assert time.perf_counter() - started >= 0.25


def _verify(sb: Any) -> Any:
    import ssl

    return ssl.create_default_context(cafile=sb.ca_bundle)


def test_a_request_already_at_the_sandbox_is_seen_waiting() -> None:
    """What the middleware looks at when a 429 goes out: a connection whose next request has
    reached the sandbox (bytes in the socket, or parsed and not yet served) is 'waiting'."""
    import socket
    from types import SimpleNamespace

    from presencectl.sandbox.throttle import TICKET, _request_waiting

    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        transport = SimpleNamespace(
            is_closing=lambda: False, get_extra_info=lambda name: server_side
        )
        idle = SimpleNamespace(transport=transport, cycle=None)
        assert not _request_waiting(idle)
        client_side.sendall(b"POST /v1.0/$batch HTTP/1.1\r\n")  # on its way, not yet read
        assert _request_waiting(idle)
        server_side.recv(100)
        parsed = SimpleNamespace(response_complete=False, scope={})
        assert _request_waiting(SimpleNamespace(transport=transport, cycle=parsed))
        served = SimpleNamespace(response_complete=False, scope={TICKET: object()})
        assert not _request_waiting(SimpleNamespace(transport=transport, cycle=served))
        closing = SimpleNamespace(is_closing=lambda: True)
        assert not _request_waiting(SimpleNamespace(transport=closing, cycle=parsed))
