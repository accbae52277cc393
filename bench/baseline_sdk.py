"""presencectl beside a peer we did not write: the same sync as a developer writes it with
Microsoft's Graph SDK for Python (msgraph-sdk, kiota, azure-identity), side by side in one run.

The peer (``SdkSync``), as the SDK's own documentation leads one to write it:
- an ``azure.identity.aio.ClientSecretCredential`` for the app (client credentials), a
  ``GraphServiceClient`` over the SDK's default middleware (retry, redirect; its RetryHandler
  honours ``Retry-After``);
- Teams: ``communications.get_presences_by_user_id.post`` in chunks of 650 ids, the chunks
  gathered; Connect: one httpx GET per user (32 at a time: no SDK exists for it);
- writes for users whose state changed since its last pass: ``users.by_user_id(id).presence.
  set_presence.post`` per user (16 at a time), or — the second row — the same requests through
  the SDK's batch support (``BatchRequestContentCollection``, 20 a batch), members answered 429
  sent again after their ``Retry-After``; Connect writes: one httpx PUT per user.

presencectl's row is its one-shot run (``presencectl sync``, the engine in-process).

Fair by construction: one sandbox process serves all rows; each row learns the current state
first (untimed, throttle lifted), then 10 % of users change on Connect and another 10 % on Teams
(a fresh random draw per row), the sandbox's clock moves 31 s so the row starts with an empty
throttle window, and the timed pass runs under Graph's documented throttle, 1,500 requests per
30 s. Every figure is measured: wall and CPU (user + system) time of this process — the sandbox
runs in its own — and Graph and Connect requests as the sandbox counts them (each ``$batch``
member counts as one Graph request; the envelope does not), 429s the sandbox sent, writes that
failed.

Two things a developer meets on the way, both handled here as a developer would, and reported:
the SDK writes ``expirationDuration`` as ``str(timedelta)`` ("1:00:00", not ISO 8601 "PT1H";
microsoftgraph/msgraph-sdk-python issue 1262), which setPresence refuses with 400 — so the peer
passes "PT1H" through ``additional_data``; and msgraph-core's batch module imports
``deprecated`` without declaring it (the ``bench`` extra lists it).

    pip install -e '.[bench]'
    python bench/baseline_sdk.py --users 1000,10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import engine_driver
from _harness import (
    Pair,
    Report,
    SandboxProcess,
    graph_requests,
    isolated_env,
    matched_pairs,
    parse_sizes,
    presence_requests,
    progress,
    throttle_minimum_s,
)

THROTTLE = (1500, 30.0)
LIFTED = 10**7
READ_CHUNK = 650
GRAPH_WRITE_CONCURRENCY = 16
CONNECT_CONCURRENCY = 32
BATCH_ROUNDS = 6
# httpx keeps idle connections 5 s, as long as the sandbox's server (uvicorn) keeps them: reused
# at the last moment they fail with "Server disconnected" — what any script meets against a
# server with a short keep-alive. The peer keeps them 2 s and tries a failed call 5 times.
TRIES = 5
TEAMS_CHANGES = [
    ("Busy", "InACall"),
    ("DoNotDisturb", "Presenting"),
    ("Available", "Available"),
    ("BeRightBack", "BeRightBack"),
    ("Busy", "InAConferenceCall"),
]
CONNECT_CHANGES = ["onphone", "available", "meeting", "dnd", "agent_onphone", "busy"]


def _keepalive() -> Any:
    import httpx

    return httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)


def sdk_available() -> bool:
    try:
        import azure.identity.aio  # noqa: F401
        import msgraph  # noqa: F401
        import msgraph_core.requests.batch_request_content_collection  # noqa: F401
    except ImportError:
        return False
    return True


class SdkSync:
    """The peer: what a developer writes with msgraph-sdk for Teams and httpx for Connect."""

    def __init__(self, profile: Any, *, batch: bool) -> None:
        self.profile = profile
        self.batch = batch
        self.last: dict[str, tuple[str | None, str | None, str | None]] = {}
        self.failed_writes = 0
        self.writes = 0
        self.transport_retries = 0

    # -- clients (one set per pass, as a script run by cron would have) ------------------------
    async def __aenter__(self) -> SdkSync:
        import httpx
        from azure.identity.aio import ClientSecretCredential
        from kiota_authentication_azure.azure_identity_authentication_provider import (
            AzureIdentityAuthenticationProvider,
        )
        from msgraph import GraphServiceClient
        from msgraph.graph_request_adapter import GraphRequestAdapter
        from msgraph_core import GraphClientFactory

        from presencectl import secrets
        from presencectl.connect import wire

        p = self.profile
        # A custom authority: host[:port] (azure-identity adds https://), no instance discovery
        # (not a Microsoft host), the sandbox's CA for azure-core's transport.
        self.credential = ClientSecretCredential(
            p.tenant_id, p.client_id, secrets.get_secret(p.name, secrets.CLIENT_SECRET),
            authority=p.authority_url.split("://", 1)[1], disable_instance_discovery=True,
            connection_verify=p.ca_bundle,
        )  # fmt: skip
        auth = AzureIdentityAuthenticationProvider(
            self.credential, scopes=["https://graph.microsoft.com/.default"]
        )
        tls = ssl.create_default_context(cafile=p.ca_bundle)
        # The SDK's default client (kiota: http2=True, its timeouts) with our CA and base URL.
        http = httpx.AsyncClient(
            http2=True, verify=tls, base_url=p.graph_url,
            timeout=httpx.Timeout(100.0, connect=30.0), limits=_keepalive(),
        )  # fmt: skip
        adapter = GraphRequestAdapter(auth, GraphClientFactory.create_with_default_middleware(
            client=http))  # fmt: skip
        adapter.base_url = p.graph_url
        self.graph = GraphServiceClient(request_adapter=adapter)
        self._graph_http = http
        self.connect = httpx.AsyncClient(
            verify=tls, base_url=p.connect_api_url,
            limits=httpx.Limits(max_connections=CONNECT_CONCURRENCY, keepalive_expiry=2.0),
            timeout=60.0,
        )  # fmt: skip
        self.wire = wire
        # The peer's own session GUID at Connect (not presencectl's), as the naive baseline does.
        self.resource = wire.resource_id_for(p.connect_api_url, "sdk-peer", p.name)
        answer = await self.connect.post(
            p.connect_login_url + wire.TOKEN_PATH,
            data={"grant_type": "client_credentials", "client_id": p.connect_client_id,
                  "client_secret": secrets.get_secret(p.name, secrets.CONNECT_CLIENT_SECRET),
                  "scope": wire.MESSAGING_SCOPE},
        )  # fmt: skip
        self.connect.headers["Authorization"] = "Bearer " + answer.raise_for_status().json()[
            "access_token"]  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.connect.aclose()
        await self._graph_http.aclose()
        await self.credential.close()

    # -- reads --------------------------------------------------------------------------------
    async def read_teams(self, ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
        from msgraph.generated.communications.get_presences_by_user_id.get_presences_by_user_id_post_request_body import (  # noqa: E501
            GetPresencesByUserIdPostRequestBody,
        )

        async def chunk(part: list[str]) -> list[Any]:
            body = GetPresencesByUserIdPostRequestBody(ids=part)
            answer = await self._graph_call(
                lambda: self.graph.communications.get_presences_by_user_id.post(body)
            )
            return list(answer.value or []) if answer is not None else []

        parts = [ids[i : i + READ_CHUNK] for i in range(0, len(ids), READ_CHUNK)]
        out: dict[str, tuple[str | None, str | None]] = {}
        for answers in await asyncio.gather(*(chunk(p) for p in parts)):
            for presence in answers:
                out[presence.id] = (presence.availability, presence.activity)
        return out

    async def _graph_call(self, call: Any) -> Any:
        """One SDK call; the SDK's RetryHandler retries 429/503/504 but not a connection the
        server dropped, so a script adds this (up to 5 tries), as for Connect below."""
        import httpx

        for attempt in range(TRIES):
            try:
                return await call()
            except httpx.TransportError:
                if attempt == TRIES - 1:
                    raise
                self.transport_retries += 1
        raise AssertionError("unreachable")

    async def _connect_call(self, method: str, url: str, **kwargs: Any) -> Any:
        """One Connect request; a dropped connection is tried again (up to 5 times), as any
        script that has met a server closing a kept-alive connection ends up doing."""
        import httpx

        for attempt in range(TRIES):
            try:
                return await self.connect.request(method, url, **kwargs)
            except httpx.TransportError:
                if attempt == TRIES - 1:
                    raise
                self.transport_retries += 1
        raise AssertionError("unreachable")

    async def read_connect(self, ids: list[str]) -> dict[str, str | None]:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(user_id: str) -> tuple[str, str | None]:
            async with gate:
                answer = await self._connect_call(
                    "GET", self.wire.PRESENCE_PATH.format(user_id=user_id)
                )
                return user_id, answer.raise_for_status().json().get("presence")

        return dict(await asyncio.gather(*(one(i) for i in ids)))

    # -- one pass -----------------------------------------------------------------------------
    async def run(self, pairs: list[Pair], *, learn: bool = False) -> dict[str, int]:
        from presencectl.mapping import Mapping as StatusMapping
        from presencectl.mapping import TeamsStatus

        mapping = StatusMapping.from_profile(self.profile)
        teams, connect = await asyncio.gather(
            self.read_teams([p.azure_id for p in pairs]),
            self.read_connect([p.connect_id for p in pairs]),
        )
        to_teams: list[tuple[str, Any]] = []
        to_connect: list[tuple[str, str]] = []
        for p in pairs:
            t = teams.get(p.azure_id, (None, None))
            seen = (t[0], t[1], connect.get(p.connect_id))
            previous = self.last.get(p.email)
            self.last[p.email] = seen
            if learn or previous is None or previous == seen:
                continue
            if previous[2] != seen[2] and seen[2]:  # Connect changed: Teams follows
                target = mapping.connect_to_teams(seen[2])
                if isinstance(target, TeamsStatus):
                    to_teams.append((p.azure_id, target))
            elif previous[:2] != seen[:2] and seen[0]:  # Teams changed: Connect follows
                value = mapping.teams_to_connect(TeamsStatus.of(seen[0], seen[1], False))
                if isinstance(value, str):
                    to_connect.append((p.connect_id, value))
        if to_teams:
            await (self._set_batched(to_teams) if self.batch else self._set_each(to_teams))
        if to_connect:
            await self._put_connect(to_connect)
        return {"teams_writes": len(to_teams), "connect_writes": len(to_connect)}

    def _body(self, target: Any) -> Any:
        from msgraph.generated.users.item.presence.set_presence.set_presence_post_request_body import (  # noqa: E501
            SetPresencePostRequestBody,
        )

        # expiration_duration=timedelta(hours=1) would go out as "1:00:00" (a 400): see the top.
        return SetPresencePostRequestBody(
            session_id=self.profile.client_id, availability=target.availability,
            activity=target.activity, additional_data={"expirationDuration": "PT1H"},
        )  # fmt: skip

    async def _set_each(self, writes: list[tuple[str, Any]]) -> None:
        gate = asyncio.Semaphore(GRAPH_WRITE_CONCURRENCY)

        async def one(user_id: str, target: Any) -> None:
            async with gate:
                try:
                    await self._graph_call(
                        lambda: self.graph.users.by_user_id(user_id).presence.set_presence.post(
                            self._body(target)
                        )
                    )
                    self.writes += 1
                except Exception:  # the SDK raised after its own retries (ODataError, …)
                    self.failed_writes += 1

        await asyncio.gather(*(one(u, t) for u, t in writes))

    async def _set_batched(self, writes: list[tuple[str, Any]]) -> None:
        from msgraph_core.requests.batch_request_content_collection import (
            BatchRequestContentCollection,
        )
        from msgraph_core.requests.batch_request_item import BatchRequestItem

        pending = {str(i): w for i, w in enumerate(writes)}
        for _ in range(BATCH_ROUNDS):
            collection = BatchRequestContentCollection()
            for rid, (user_id, target) in pending.items():
                info = self.graph.users.by_user_id(
                    user_id
                ).presence.set_presence.to_post_request_information(self._body(target))
                collection.add_batch_request_item(BatchRequestItem(info, id=rid))
            answer = await self._graph_call(lambda c=collection: self.graph.batch.post(c))
            retry: dict[str, tuple[str, Any]] = {}
            wait = 0.0
            for content in answer._responses:  # BatchResponseContentCollection: one per batch
                for rid, item in (content.responses or {}).items():
                    status = int(item.status or 0)
                    if 200 <= status < 300:
                        self.writes += 1
                    elif status in (429, 503, 504) and rid in pending:
                        retry[rid] = pending[rid]
                        headers = item.headers or {}
                        wait = max(wait, float(headers.get("Retry-After") or 1))
                    else:
                        self.failed_writes += 1
            pending = retry
            if not pending:
                return
            await asyncio.sleep(wait)
        self.failed_writes += len(pending)

    async def _put_connect(self, writes: list[tuple[str, str]]) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(user_id: str, value: str) -> None:
            async with gate:
                answer = await self._connect_call(
                    "PUT", self.wire.PRESENCE_PATH.format(user_id=user_id),
                    params={"resource": self.resource}, json={"presence": value},
                )  # fmt: skip
                if answer.is_success:
                    self.writes += 1
                else:
                    self.failed_writes += 1

        await asyncio.gather(*(one(u, v) for u, v in writes))


# -- the run -----------------------------------------------------------------------------------
def change_ten_percent(sb: SandboxProcess, pairs: list[Pair], rng: random.Random) -> int:
    k = max(1, len(pairs) // 10)
    chosen = rng.sample(pairs, min(len(pairs), 2 * k))
    for p in chosen[:k]:
        sb.set_connect(p.email, rng.choice(CONNECT_CHANGES))
    for p in chosen[k:]:
        sb.set_teams(p.email, *rng.choice(TEAMS_CHANGES))
    return len(chosen)


def _connect_requests(stats: dict[str, Any]) -> int:
    return sum(v for k, v in stats["requests"].items() if k.startswith("connect."))


def _fresh_window(sb: SandboxProcess) -> None:
    """Start the timed pass with the real throttle and an empty window (sandbox clock +31 s)."""
    sb.faults(throttle_per_30s=THROTTLE[0], throttle_window=THROTTLE[1])
    sb.control.post("/_sandbox/clock/advance", json={"seconds": THROTTLE[1] + 1}).raise_for_status()
    sb.reset_stats()


def _lift(sb: SandboxProcess) -> None:
    sb.faults(throttle_per_30s=LIFTED, throttle_window=THROTTLE[1])


def measure_one(users: int, seed: int, rows_wanted: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with isolated_env(), SandboxProcess(users=users, seed=seed, throttle=LIFTED) as sb:
        progress(f"{users} users: sandbox up in {sb.start_s:.1f} s; preparing the profile")
        profile = engine_driver.prepare(sb)
        pairs = asyncio.run(matched_pairs(profile))
        progress(f"{len(pairs)} matched; presencectl converges both sides (untimed)")
        engine_driver.one_shot(profile, limit=LIFTED, window=30.0)
        rng = random.Random(seed)

        def record(tool: str, wall: float, cpu: float, changed: int, extra: dict[str, Any]) -> None:
            stats = sb.stats()
            # The throttle-bound minimum: the presence requests the sandbox accepted, at its
            # enforced limit (requests / limit x window); a row that needs more than one
            # window's limit is bound by the throttle, and its wall time is judged against it.
            accepted = presence_requests(stats) - stats["throttled"]
            minimum = throttle_minimum_s(accepted, *THROTTLE)
            rows.append({
                "users": len(pairs), "tool": tool, "changed": changed, "wall_s": wall,
                "cpu_s": cpu, "graph_requests": graph_requests(stats),
                "connect_requests": _connect_requests(stats), "throttled_429": stats["throttled"],
                "presence_accepted": accepted, "throttle_min_s": minimum,
                "wall_vs_throttle_min": wall / minimum if minimum else math.nan,
                "throttle_bound": accepted > THROTTLE[0],
                **extra,
            })  # fmt: skip

        for tool in rows_wanted:
            if tool == "presencectl":
                _lift(sb)
                engine_driver.one_shot(profile, limit=LIFTED, window=30.0)  # learn = converge
                changed = change_ten_percent(sb, pairs, rng)
                _fresh_window(sb)
                progress(f"presencectl one-shot, {changed} changed")
                c0 = time.process_time()
                result = engine_driver.one_shot(profile, limit=THROTTLE[0], window=THROTTLE[1])
                cpu = time.process_time() - c0
                record(
                    "presencectl one-shot",
                    result["elapsed"],
                    cpu,
                    changed,
                    {"written": result["ok"], "failed": result["failed"]},
                )
                continue
            batch = tool == "sdk-batch"

            async def learn(batch: bool = batch) -> SdkSync:
                peer = SdkSync(profile, batch=batch)
                async with peer:
                    await peer.run(pairs, learn=True)
                return peer

            _lift(sb)
            peer = asyncio.run(learn())
            changed = change_ten_percent(sb, pairs, rng)
            _fresh_window(sb)
            progress(f"{tool}, {changed} changed")

            async def timed(peer: SdkSync = peer) -> tuple[float, dict[str, int]]:
                async with peer:
                    started = time.perf_counter()
                    counts = await peer.run(pairs)
                    return time.perf_counter() - started, counts

            c0 = time.process_time()
            wall, counts = asyncio.run(timed())
            cpu = time.process_time() - c0
            label = "msgraph-sdk, $batch" if batch else "msgraph-sdk, per user"
            record(
                label,
                wall,
                cpu,
                changed,
                {
                    "written": peer.writes,
                    "failed": peer.failed_writes,
                    "transport_retries": peer.transport_retries,
                    **counts,
                },
            )
            # The peer's sessions stay; presencectl's next converge run sees them as any
            # other writer's and settles before its own timed pass.
    return rows


def run(sizes: list[int], seed: int, tools: list[str]) -> Report:
    report = Report(
        "baseline_sdk",
        [
            "users",
            "tool",
            "changed",
            "wall_s",
            "cpu_s",
            "graph_requests",
            "connect_requests",
            "throttled_429",
            "written",
            "failed",
            "transport_retries",
            "wall_vs_presencectl",
            "presence_accepted",
            "throttle_min_s",
            "wall_vs_throttle_min",
        ],
    )
    report.notes.append(
        "one sandbox process per size (its CPU is not in cpu_s); each row: learn (untimed), "
        "10%+10% changed, then a timed pass under 1,500 requests per 30 s starting from an empty "
        "window; requests as the sandbox counts them ($batch members one by one)"
    )
    per_size: dict[str, Any] = {}
    for n in sizes:
        out = subprocess.run(
            [
                sys.executable,
                str(Path(__file__)),
                "--one",
                str(n),
                "--seed",
                str(seed),
                "--tools",
                ",".join(tools),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            report.notes.append(f"{n} users failed: {out.stderr[-1500:]}")
            continue
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        ours = next((r for r in rows if r["tool"].startswith("presencectl")), None)
        for row in rows:
            row["wall_vs_presencectl"] = (
                row["wall_s"] / ours["wall_s"] if ours and ours["wall_s"] else math.nan
            )
            report.add(**row)
        per_size[str(n)] = rows
    report.extra["per_size"] = per_size
    report.extra["figures"] = {
        n: {r["tool"]: {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                        "graph_requests": r["graph_requests"],
                        "connect_requests": r["connect_requests"],
                        "presence_accepted": r.get("presence_accepted"),
                        "throttle_min_s": r.get("throttle_min_s"),
                        "wall_vs_throttle_min": r.get("wall_vs_throttle_min"),
                        "throttle_bound": r.get("throttle_bound")} for r in rows}
        for n, rows in per_size.items()
    }  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="1000,10000")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--tools", default="presencectl,sdk,sdk-batch")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    if not sdk_available():
        print("msgraph-sdk is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    if args.one:
        print(json.dumps(measure_one(args.one, args.seed, tools), default=str))
        return 0
    run(parse_sizes(args.users), args.seed, tools).emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
