"""GraphClient: retries, Retry-After, backoff, no retry on 4xx, 401 refresh, paging, $batch.

Graph is faked with httpx.MockTransport; time with FakeClock, so every wait is instant but measured.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fakes import FakeClock

from presencectl.errors import ApiError, AuthError, NetworkError
from presencectl.graph.client import (
    BatchRequest,
    GraphClient,
    RetryPolicy,
    graph_error,
    retry_after_seconds,
)
from presencectl.graph.ratelimit import RateLimiter
from presencectl.graph.tokens import AccessToken

GRAPH = "https://graph.test/v1.0"
Handler = Callable[[httpx.Request], httpx.Response]


class Tokens:
    """A token provider that counts its calls and hands out numbered tokens."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls: list[bool] = []

    def __call__(self, force_refresh: bool = False) -> AccessToken:
        self.calls.append(force_refresh)
        return AccessToken(f"tok-{len(self.calls)}", self.clock() + self.lifetime)


def make_client(
    handler: Handler, clock: FakeClock | None = None, **kwargs: Any
) -> tuple[GraphClient, FakeClock, Tokens]:
    clock = clock or FakeClock()
    tokens = kwargs.pop("tokens", None) or Tokens(clock)
    limiter = kwargs.pop("limiter", None) or RateLimiter(clock=clock, sleep=clock.sleep)
    client = GraphClient(
        GRAPH, tokens, transport=httpx.MockTransport(handler), limiter=limiter, now=clock, **kwargs
    )
    return client, clock, tokens


def graph_err(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": f"{code} happened"}}
    return httpx.Response(status, json=body, headers=headers or {})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_retries_503_with_backoff_then_succeeds() -> None:
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(clock())
        if len(seen) < 3:
            return graph_err(503, "serviceNotAvailable")
        return httpx.Response(200, json={"ok": True})

    clock = FakeClock()
    client, _, _ = make_client(handler, clock)

    async def go() -> Any:
        async with client:
            return await client.get_json("/users")

    assert run(go()) == {"ok": True}
    assert len(seen) == 3
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert 0.25 <= gaps[0] <= 0.5 and 0.5 <= gaps[1] <= 1.0  # base 0.5 s, doubling, jittered
    assert client.metrics.retries == 2
    assert client.metrics.backoff_wait_s == pytest.approx(sum(gaps))


def test_429_waits_exactly_the_retry_after() -> None:
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(clock())
        if len(seen) == 1:
            return graph_err(429, "TooManyRequests", {"Retry-After": "7"})
        return httpx.Response(200, json={"value": []})

    clock = FakeClock()
    client, _, _ = make_client(handler, clock)
    run(client.post_json("/communications/getPresencesByUserId", {"ids": ["a"]}))
    assert seen[1] - seen[0] == pytest.approx(7.0)
    assert client.metrics.throttled == 1
    assert client.metrics.retry_after_wait_s == pytest.approx(7.0)


@pytest.mark.parametrize("status", [400, 404, 409, 412])
def test_other_4xx_are_never_retried(status: int) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return graph_err(status, "badThing", {"request-id": "rid-1"})

    client, _, _ = make_client(handler)
    with pytest.raises(ApiError) as info:
        run(client.get_json("/users/x"))
    assert len(calls) == 1
    assert info.value.status == status
    assert info.value.code == "graph_error"
    assert "badThing" in info.value.message and "rid-1" in info.value.message


def test_401_refreshes_the_token_once_and_succeeds() -> None:
    auths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        auths.append(request.headers["Authorization"])
        if len(auths) == 1:
            return graph_err(401, "InvalidAuthenticationToken")
        return httpx.Response(200, json={})

    client, _, tokens = make_client(handler)
    run(client.get_json("/me"))
    assert auths == ["Bearer tok-1", "Bearer tok-2"]
    assert tokens.calls == [False, True]


def test_401_twice_is_an_auth_error_with_the_consent_hint() -> None:
    client, _, tokens = make_client(lambda r: graph_err(401, "InvalidAuthenticationToken"))
    with pytest.raises(AuthError) as info:
        run(client.get_json("/users"))
    assert info.value.code == "graph_unauthorized"
    assert "presencectl consent" in info.value.hint
    assert tokens.calls == [False, True]


def test_403_is_graph_forbidden_without_retry() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return graph_err(403, "Forbidden")

    client, _, _ = make_client(handler)
    with pytest.raises(AuthError) as info:
        run(client.post_json("/users/u/presence/setPresence", {}))
    assert info.value.code == "graph_forbidden" and info.value.exit_code == 4
    assert len(calls) == 1


def test_network_errors_are_retried_then_reported() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("connection refused", request=request)

    client, _clock, _ = make_client(handler, retry=RetryPolicy(max_attempts=4, backoff_max=2.0))
    with pytest.raises(NetworkError):
        run(client.get_json("/users"))
    assert len(calls) == 4
    assert 0 < client.metrics.backoff_wait_s <= 0.5 + 1.0 + 2.0  # bounded by backoff_max


def test_5xx_exhausted_raises_api_error_with_status() -> None:
    client, _, _ = make_client(
        lambda r: graph_err(500, "generalException"), retry=RetryPolicy(max_attempts=3)
    )
    with pytest.raises(ApiError) as info:
        run(client.get_json("/users"))
    assert info.value.status == 500 and "generalException" in info.value.message


def test_token_is_cached_until_near_expiry() -> None:
    clock = FakeClock()
    tokens = Tokens(clock, lifetime=600.0)
    client, _, _ = make_client(lambda r: httpx.Response(200, json={}), clock, tokens=tokens)

    async def go() -> None:
        for _ in range(5):
            await client.get_json("/users")
        clock.advance(600 - 121)  # still valid for 121 s: kept
        await client.get_json("/users")
        assert len(tokens.calls) == 1
        clock.advance(2)  # 119 s left: inside the 120 s margin, refreshed
        await client.get_json("/users")
        assert len(tokens.calls) == 2

    run(go())


def test_tokens_never_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    secret = "eyJhbGciOi.SECRET-TOKEN-VALUE.sig"

    def provider(force_refresh: bool = False) -> AccessToken:
        return AccessToken(secret, 4_000_000_000.0)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == f"Bearer {secret}"
        return graph_err(429 if not caplog.records else 400, "x", {"Retry-After": "0"})

    clock = FakeClock()
    client = GraphClient(
        GRAPH,
        provider,
        transport=httpx.MockTransport(handler),
        limiter=RateLimiter(clock=clock, sleep=clock.sleep),
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ApiError) as info:
        run(client.get_json("/users", params={"access_token": "leak"}))
    assert "SECRET-TOKEN" not in caplog.text and "SECRET-TOKEN" not in info.value.message
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("presencectl"))
    assert "leak" not in ours  # (httpx's own INFO log prints URLs as they are)
    assert "SECRET-TOKEN" not in repr(provider())


def test_paged_follows_next_link_exactly_as_given() -> None:
    next_link = f"{GRAPH}/users?$select=id&$top=2&$skiptoken=X%27Y%3D%3D"
    requested: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        if "skiptoken" not in str(request.url):
            return httpx.Response(
                200, json={"value": [{"id": "1"}, {"id": "2"}], "@odata.nextLink": next_link}
            )
        return httpx.Response(200, json={"value": [{"id": "3"}]})

    client, _, _ = make_client(handler)

    async def go() -> list[dict[str, Any]]:
        return [item async for item in client.paged("/users", {"$select": "id", "$top": "2"})]

    assert [u["id"] for u in run(go())] == ["1", "2", "3"]
    assert requested[1] == next_link
    assert len(requested) == 2


def _batch_handler(
    answer: Callable[[dict[str, Any], int], tuple[int, dict[str, str]]],
) -> tuple[Handler, list[list[str]], list[float], FakeClock]:
    """A $batch endpoint; ``answer(member, attempt_of_member)`` gives the member's status."""
    posts: list[list[str]] = []
    times: list[float] = []
    attempts: dict[str, int] = {}
    clock = FakeClock()

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1.0/$batch"
        members = json.loads(request.content)["requests"]
        posts.append([m["id"] for m in members])
        times.append(clock())
        out = []
        for m in members:
            attempts[m["id"]] = attempts.get(m["id"], 0) + 1
            status, headers = answer(m, attempts[m["id"]])
            out.append({"id": m["id"], "status": status, "headers": headers, "body": None})
        out.reverse()  # Graph may answer in any order
        return httpx.Response(200, json={"responses": out})

    return handler, posts, times, clock


def test_batch_chunks_of_twenty_results_in_request_order() -> None:
    handler, posts, _, clock = _batch_handler(lambda m, n: (200, {}))
    client, _, _ = make_client(handler, clock)
    reqs = [BatchRequest(f"r{i}", "GET", f"/users/{i}") for i in range(45)]
    results = run(client.batch(reqs))
    assert sorted(len(p) for p in posts) == [5, 20, 20]
    assert [r.id for r in results] == [f"r{i}" for i in range(45)]
    assert all(r.ok for r in results)


def test_batch_retries_only_throttled_members_after_their_retry_after() -> None:
    def answer(member: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
        if member["id"] in {"3", "4"} and attempt == 1:
            return 429, {"Retry-After": "5"}
        if member["id"] == "7" and attempt < 3:
            return 503, {}
        if member["id"] == "8":
            return 400, {}
        return 200, {}

    handler, posts, times, clock = _batch_handler(answer)
    client, _, _ = make_client(handler, clock)
    reqs = [
        BatchRequest(str(i), "POST", f"/users/u{i}/presence/setPresence", {"sessionId": "s"})
        for i in range(10)
    ]
    results = run(client.batch(reqs))
    assert posts[0] == [str(i) for i in range(10)]
    assert sorted(posts[1]) == ["3", "4", "7"]
    assert posts[2] == ["7"]
    assert times[1] - times[0] >= 5.0  # the 429s' Retry-After held the retry back
    assert {r.id: r.status for r in results}["8"] == 400
    assert all(r.ok for r in results if r.id != "8")
    assert client.metrics.throttled == 2
    assert client.metrics.presence_units == 10 + 3 + 1  # members counted one by one


def test_batch_gives_up_on_a_member_after_max_attempts() -> None:
    handler, posts, _, clock = _batch_handler(lambda m, n: (503, {"Retry-After": "1"}))
    client, _, _ = make_client(handler, clock, retry=RetryPolicy(max_attempts=3))
    [result] = run(client.batch([BatchRequest("a", "GET", "/users/a")]))
    assert result.status == 503 and not result.ok
    assert len(posts) == 3
    err = result.error("GET", "/users/a")
    assert isinstance(err, ApiError) and err.status == 503


def test_batch_rejects_duplicate_ids() -> None:
    client, _, _ = make_client(lambda r: httpx.Response(200, json={}))
    with pytest.raises(ValueError):
        run(client.batch([BatchRequest("a", "GET", "/x"), BatchRequest("a", "GET", "/y")]))


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after_seconds({"Retry-After": date}, now=1445412480 - 10) == pytest.approx(10)


def test_graph_error_reads_text_and_oauth_bodies() -> None:
    assert "oops" not in graph_error(502, "oops<html>").message  # text body: status only
    err = graph_error(
        400, {"error": "invalid_request", "error_description": "bad"}, {}, "GET", "/x"
    )
    assert "invalid_request" in err.message and "GET /x" in err.message
