"""Sandbox throttling (429 + Retry-After per app and tenant) and fault injection."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from presencectl.sandbox import running_sandbox
from presencectl.sandbox.throttle import SlidingWindow

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
    wait, inside = window.admit("k", 103.0, 3, 30.0)
    assert (wait, inside) == (27, False)
    wait, inside = window.admit("k", 103.1, 3, 30.0)
    assert inside is False and wait == 27  # in flight when the 429 went out
    wait, inside = window.admit("k", 110.0, 3, 30.0)
    assert inside is True and wait == 20
    wait, inside = window.admit("k", 111.0, 3, 30.0, origin="batch-1")
    assert inside is True
    assert window.admit("k", 130.0, 3, 30.0) == (None, False)
    assert window.admit("other", 110.0, 3, 30.0) == (None, False)


def test_over_the_limit_gets_429_with_retry_after(sb: Any) -> None:
    assert [read(sb).status_code for _ in range(3)] == [200, 200, 200]
    refused = read(sb)
    assert refused.status_code == 429
    retry_after = refused.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    assert refused.json()["error"]["code"] == "TooManyRequests"
    # Another app of the same tenant has its own budget.
    assert read(sb, APP_B).status_code == 200
    # Coming back inside the Retry-After window is counted and refused (a request right after
    # the 429, still in flight when it was sent, is refused but not counted).
    assert read(sb).status_code == 429
    sb.control.post("/_sandbox/clock/advance", json={"seconds": 1})
    assert read(sb).status_code == 429
    stats = sb.control.get("/_sandbox/stats").json()
    assert stats["throttled"] == 3
    assert stats["in_retry_after_window"] == 1
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
