"""The Microsoft Graph client: one httpx connection pool, retries, throttling, paging and $batch.

Owns: :class:`GraphClient` (HTTP/1.1, keep-alive, the profile's TLS/proxy/timeouts
through :mod:`presencectl.transport`), the retry policy, the translation of Graph error bodies
into :mod:`presencectl.errors`, and ``$batch`` (chunks of 20, failed members retried alone).

Retry rules: network errors, 5xx and 429 are retried with bounded exponential
backoff and jitter; a ``Retry-After`` is honoured — for a 429 by pausing every request of that
scope in the shared :class:`~presencectl.graph.ratelimit.RateLimiter`; no other 4xx is retried.
A 401 forces one token refresh and one more try. Tokens never reach a log or an error text.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from presencectl.errors import ApiError, AuthError, NetworkError, PresencectlError
from presencectl.graph.ratelimit import (
    OTHER,
    PRESENCE,
    RateLimiter,
    ThrottleMetrics,
    endpoint_scope,
)
from presencectl.graph.tokens import TokenCache, TokenProvider
from presencectl.transport import HttpSettings, build_async_client, redact, retry_after_seconds

log = logging.getLogger(__name__)

BATCH_MAX = 20
# 424 on a member: it did not run because the batch failed (no dependsOn is ever sent).
RETRYABLE_MEMBER_STATUSES = frozenset({424, 429, 503, 504})
# A $batch may fail as a whole: 424 (concepts/throttling.md, "Throttling and batching": the
# throttled members keep their own 429 and Retry-After in the JSON content) or 429.
WHOLE_BATCH_STATUSES = (424, 429)
CONSENT_HINT = "run `presencectl consent` to grant (or re-grant) the presence permissions"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: backoff ``base * 2**(attempt-1)``, capped, jittered."""

    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** max(0, attempt - 1))
        return float(ceiling * (0.5 + rng.random() / 2))  # "equal jitter": never less than half


@dataclass(frozen=True)
class BatchRequest:
    """One member of a ``$batch``; ``url`` is relative to the version root (``/users/…``)."""

    id: str
    method: str
    url: str
    body: Any = None
    headers: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "method": self.method.upper(), "url": self.url}
        headers = dict(self.headers or {})
        if self.body is not None:
            out["body"] = self.body
            headers.setdefault("Content-Type", "application/json")
        if headers:
            out["headers"] = headers
        return out


@dataclass(frozen=True)
class BatchResult:
    """The answer to one :class:`BatchRequest` (after retries). ``status`` 0: no answer at all."""

    id: str
    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error(self, method: str = "", url: str = "") -> PresencectlError | None:
        if self.ok:
            return None
        return graph_error(self.status, self.body, self.headers, method, url)


def _error_fields(body: Any) -> tuple[str, str]:
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            return str(err.get("code") or ""), str(err.get("message") or "")
        if isinstance(err, str):  # OAuth-style bodies
            return err, str(body.get("error_description") or "")
    return "", ""


def graph_error(
    status: int,
    body: Any,
    headers: Mapping[str, str] | None = None,
    method: str = "",
    url: str = "",
) -> PresencectlError:
    """The presencectl error for a Graph error answer (the body may be JSON, text or None)."""
    code, message = _error_fields(body)
    request_id = ""
    for key, v in (headers or {}).items():
        if key.lower() == "request-id":
            request_id = f" (request-id {v})"
    where = f"{method.upper()} {redact(url)}".strip()
    text = f"Graph {where} failed: HTTP {status}"
    if code:
        text += f" {code}"
    if message:
        text += f": {redact(message)}"
    text += request_id
    if status == 401:
        return AuthError(text, hint=CONSENT_HINT, code="graph_unauthorized")
    if status == 403:
        return AuthError(text, hint=CONSENT_HINT, code="graph_forbidden")
    if status == 429:
        return ApiError(
            text,
            status=status,
            code="graph_throttled",
            hint="Graph kept throttling; try again later or lower the request rate",
        )
    return ApiError(text, status=status, code="graph_error")


def _whole_batch_result(
    member_id: str, status: int, body: Any, response: httpx.Response
) -> BatchResult:
    """A member's result when its batch failed whole without member answers and retries ran out:
    429 (it did not run), or 0 for a 424 (no answer: it may or may not have run)."""
    headers = {str(k): str(v) for k, v in response.headers.items()}
    if status == 429:
        return BatchResult(member_id, 429, body, headers)
    message = f"the $batch failed as a whole (HTTP {status}) without member answers"
    return BatchResult(
        member_id, 0, {"error": {"code": "batchFailed", "message": message}}, headers
    )


def _response_body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than json's stack
        return response.text[:500]


class GraphClient:
    """Async Microsoft Graph client for one app in one tenant. Use as ``async with``."""

    def __init__(
        self,
        graph_url: str,
        token_provider: TokenProvider,
        settings: HttpSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        max_in_flight: int = 16,
        batch_concurrency: int = 4,
        rng: random.Random | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.graph_url = graph_url.rstrip("/")
        self.limiter = limiter or RateLimiter()
        self.retry = retry or RetryPolicy()
        self.batch_concurrency = max(1, batch_concurrency)
        self._tokens = TokenCache(token_provider, now=now)
        self._rng = rng or random.Random()
        self._in_flight = asyncio.Semaphore(max(1, max_in_flight))
        self._http = build_async_client(
            settings or HttpSettings(),
            base_url=self.graph_url,
            transport=transport,
            limits=httpx.Limits(max_connections=max(4, max_in_flight), max_keepalive_connections=8),
        )

    @property
    def metrics(self) -> ThrottleMetrics:
        return self.limiter.metrics

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> GraphClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- single requests ---------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        ok_statuses: Collection[int] = (),
    ) -> httpx.Response:
        """Send one request with retries; return a 2xx answer (or one in ``ok_statuses``).

        Anything else raises the matching :mod:`presencectl.errors` exception.
        """
        scope = endpoint_scope(path)
        if scope != PRESENCE:
            return await self._send(
                method, path, json=json, params=params, headers=headers, units=0, scope=scope,
                ok_statuses=ok_statuses,
            )  # fmt: skip
        # Presence requests go one at a time, as presence batches do (batch()), across every
        # client sharing the limiter: a request that leaves after a 429 has reached us, but
        # before its reader has set the pause, would land inside that Retry-After
        # (tests/test_graph_sandbox.py saw it with 4 chunked reads in flight). Reads are 650 ids
        # each, so a 10,000-user cycle is 16 round trips in a row.
        async with self.limiter.presence_on_wire:
            return await self._send(
                method, path, json=json, params=params, headers=headers, units=1, scope=scope,
                ok_statuses=ok_statuses,
            )  # fmt: skip

    async def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return _response_body(await self.request("GET", path, params=params))

    async def post_json(self, path: str, json: Any = None) -> Any:
        return _response_body(await self.request("POST", path, json=json))

    async def paged(
        self, path: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item of a collection, following ``@odata.nextLink`` exactly as given."""
        url: str | None = path
        query = params
        while url:
            page = await self.get_json(url, params=query)
            if not isinstance(page, Mapping):
                raise ApiError(
                    f"Graph GET {redact(url)}: expected a JSON object", code="graph_error"
                )
            for item in page.get("value") or []:
                if isinstance(item, dict):
                    yield item
            next_link = page.get("@odata.nextLink")
            url = next_link if isinstance(next_link, str) and next_link else None
            if url is not None:
                self._check_next_link(url)
            query = None  # the next link carries its own query

    def _check_next_link(self, url: str) -> None:
        """A next link goes where our bearer token may go: the configured Graph host and scheme
        (https; plain http only for a graph_url on this machine, as config.py allows).

        The link is server-supplied; followed anywhere, it would carry the token there."""
        from urllib.parse import urlsplit

        ours, theirs = urlsplit(self.graph_url), urlsplit(url)
        host = (ours.hostname or "").lower()
        loopback = host == "localhost" or host == "::1" or host.startswith("127.")
        if (
            theirs.scheme != ours.scheme
            or theirs.netloc.lower() != ours.netloc.lower()
            or (theirs.scheme != "https" and not loopback)  # plain http to this machine only
        ):
            shown = (
                f"{theirs.scheme}://{theirs.hostname or ''}" if theirs.scheme else "a relative URL"
            )
            raise ApiError(
                f"Graph's @odata.nextLink points to {redact(shown)}, not https on "
                f"{ours.hostname}: not followed (the access token goes to Graph only)",
                hint="check the profile's graph_url, and any proxy that rewrites Graph's answers",
                code="graph_error",
            )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        json: Any,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        units: int,
        scope: str,
        ok_statuses: Collection[int] = (),
    ) -> httpx.Response:
        attempt = 0
        refreshed = False
        force = False
        stale: str | None = None
        while True:
            attempt += 1
            token = await self._tokens.get(force_refresh=force, stale=stale)
            force = False
            request = self._http.build_request(
                method,
                url,
                json=json,
                params=params,
                headers={**(headers or {}), "Authorization": f"Bearer {token}"},
            )
            failure: httpx.TransportError | None = None
            response: httpx.Response | None = None
            async with self._in_flight:
                # The pause is checked here, after the wait for a slot, just before sending.
                sent_at = await self.limiter.acquire(units, scope)
                self.metrics.requests += 1
                try:
                    response = await self._http.send(request)
                except httpx.TransportError as exc:
                    failure = exc
            if response is None:
                if attempt >= self.retry.max_attempts:
                    reason = f"{type(failure).__name__}: {redact(str(failure))}"
                    raise NetworkError(
                        f"Graph {method} {redact(url)}: {reason}",
                        hint="check the network, the proxy setting and the profile's graph_url",
                    ) from failure
                log.info("Graph %s %s: %s, retrying", method, redact(url), type(failure).__name__)
                await self._backoff(attempt)
                continue
            status = response.status_code
            if units and status not in (401, 429) and status < 500:  # it passed the throttle
                if url == "/$batch":  # the caller sees which members were refused
                    response.extensions["presencectl_sent_at"] = sent_at
                else:
                    self.limiter.note_answer(sent_at, units)
            if 200 <= status < 300 or status in ok_statuses:
                return response
            if status == 401 and not refreshed:
                refreshed, force, stale = True, True, token
                attempt -= 1
                log.info("Graph answered 401; refreshing the token once")
                continue
            retry_after = retry_after_seconds(response.headers)
            if status == 429:
                self.metrics.throttled += 1
                if attempt < self.retry.max_attempts:
                    wait = retry_after if retry_after is not None else self._delay(attempt)
                    log.info("Graph throttled %s %s; pausing %.2fs", method, redact(url), wait)
                    self.limiter.note_retry_after(scope, wait)
                    self.metrics.retries += 1
                    continue
            elif status >= 500 and attempt < self.retry.max_attempts:
                wait = retry_after if retry_after is not None else self._delay(attempt)
                log.info(
                    "Graph %s %s answered %s; retrying in %.2fs", method, redact(url), status, wait
                )
                await self.limiter.sleep(wait)
                self.metrics.backoff_wait_s += wait
                self.metrics.retries += 1
                continue
            raise graph_error(status, _response_body(response), response.headers, method, url)

    def _delay(self, attempt: int) -> float:
        return self.retry.backoff(attempt, self._rng)

    async def _backoff(self, attempt: int) -> None:
        wait = self._delay(attempt)
        await self.limiter.sleep(wait)
        self.metrics.backoff_wait_s += wait
        self.metrics.retries += 1

    # -- $batch ------------------------------------------------------------------------------
    async def batch(self, requests: Sequence[BatchRequest]) -> list[BatchResult]:
        """Run ``requests`` through ``$batch`` (≤ 20 a request, chunks concurrent, bounded).

        Members answered 424/429/503/504 are sent again (in a new batch) after their
        ``Retry-After``; a member answered otherwise is never sent again. A batch that fails as a
        whole (424 or 429) is read for its members' own answers where it carries them, else its
        own ``Retry-After`` is waited and every member sent again (none of them ran). The results
        come back in the order of ``requests``.
        """
        ids = [r.id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("batch request ids must be unique")
        chunks = [list(requests[i : i + BATCH_MAX]) for i in range(0, len(requests), BATCH_MAX)]
        gate = asyncio.Semaphore(self.batch_concurrency)
        serial = self.limiter.presence_on_wire  # shared by the clients sharing the limiter

        async def run(chunk: list[BatchRequest]) -> dict[str, BatchResult]:
            async with gate:
                if any(endpoint_scope(r.url) == PRESENCE for r in chunk):
                    # Presence batches go one at a time: a batch already on the wire when a 429
                    # arrives cannot be called back, so with several in flight each would land
                    # inside that Retry-After. One batch of 20 members a round trip still
                    # outpaces Graph's presence limit (1,500 per 30 s), so little is lost.
                    async with serial:
                        return await self._batch_chunk(chunk)
                return await self._batch_chunk(chunk)

        merged: dict[str, BatchResult] = {}
        for part in await asyncio.gather(*(run(c) for c in chunks)):
            merged.update(part)
        return [merged[i] for i in ids]

    async def _batch_chunk(self, chunk: list[BatchRequest]) -> dict[str, BatchResult]:
        results: dict[str, BatchResult] = {}
        pending = chunk
        attempt = 0
        while pending:
            attempt += 1
            scopes = [endpoint_scope(r.url) for r in pending]
            units = scopes.count(PRESENCE)
            scope = PRESENCE if units else OTHER
            response = await self._send(
                "POST",
                "/$batch",
                json={"requests": [r.to_json() for r in pending]},
                params=None,
                headers=None,
                units=units,
                scope=scope,
                ok_statuses=WHOLE_BATCH_STATUSES,
            )
            body = _response_body(response)
            answers: dict[str, Mapping[str, Any]] = {}
            if isinstance(body, Mapping):
                for item in body.get("responses") or []:
                    if isinstance(item, Mapping) and "id" in item:
                        answers[str(item["id"])] = item
            if response.status_code in WHOLE_BATCH_STATUSES and not answers:
                # Failed whole with no member answers: none of them ran (429), or we cannot tell
                # (424 without content). Wait the envelope's Retry-After, then send them again.
                status = response.status_code
                self.metrics.throttled += 1
                if attempt >= self.retry.max_attempts:
                    for req in pending:
                        results[req.id] = _whole_batch_result(req.id, status, body, response)
                    break
                ra = retry_after_seconds(response.headers)
                wait = ra if ra is not None else self._delay(attempt)
                log.info(
                    "$batch answered %s as a whole; retrying its members in %.2fs", status, wait
                )
                self.limiter.note_retry_after(scope, wait)
                self.metrics.retries += len(pending)
                continue
            sent_at = response.extensions.get("presencectl_sent_at")
            if sent_at is not None:  # presence members the server did not refuse
                accepted = sum(
                    1
                    for req, req_scope in zip(pending, scopes, strict=True)
                    if req_scope == PRESENCE
                    and isinstance(member_status := (answers.get(req.id) or {}).get("status"), int)
                    and member_status != 429
                )
                self.limiter.note_answer(sent_at, accepted)
            retry: list[BatchRequest] = []
            member_wait = 0.0
            for req, req_scope in zip(pending, scopes, strict=True):
                item = answers.get(req.id)
                if item is None:
                    result = BatchResult(
                        req.id,
                        0,
                        {
                            "error": {
                                "code": "noAnswer",
                                "message": "missing from the $batch answer",
                            }
                        },
                    )
                else:
                    raw_headers = item.get("headers")
                    member_headers = (
                        {str(k): str(v) for k, v in raw_headers.items()}
                        if isinstance(raw_headers, Mapping)
                        else {}
                    )
                    result = BatchResult(
                        req.id, int(item.get("status") or 0), item.get("body"), member_headers
                    )
                retryable = result.status in RETRYABLE_MEMBER_STATUSES or result.status == 0
                if result.status == 429:
                    self.metrics.throttled += 1
                if retryable and attempt < self.retry.max_attempts:
                    retry.append(req)
                    ra = retry_after_seconds(result.headers)
                    wait = ra if ra is not None else self._delay(attempt)
                    if result.status == 429:
                        self.limiter.note_retry_after(req_scope, wait)
                    else:
                        member_wait = max(member_wait, wait)
                else:
                    results[req.id] = result
            if retry:
                self.metrics.retries += len(retry)
                log.info("$batch: %d of %d members to retry", len(retry), len(pending))
                if member_wait > 0:
                    await self.limiter.sleep(member_wait)
                    self.metrics.backoff_wait_s += member_wait
            pending = retry
        return results
