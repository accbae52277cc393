"""presencectl against the approach of typical open-source Teams presence tools, side by side.

The naive tool polls: for every user, ``GET /users/{id}/presence`` on Graph and a GET of the
user's Connect presence, one request at a time over one kept-alive connection; then a per-user
``setPresence`` (or Connect PUT) for each user whose mapped status changed. presencectl's path is
its sync engine: a steady watch cycle (getPresencesByUserId by 650, plan, batched writes; Connect
by its change feed) and a one-shot run. Both run against the same sandbox process in the same run,
so the comparison is a ratio measured side by side.

Fairness, in the naive tool's favour: the sandbox's throttle is lifted for the whole comparison
(under Graph's 50 requests/s ceiling the naive tool's 10,000 reads alone take 200 s; that bound is
printed as ``throttle_bound_s``), and the naive tool re-sends nothing that did not change. For
sizes above ``--sample`` the naive cycle runs over the first ``--sample`` users and is
extrapolated linearly (it is strictly per-user work); the table says so.

    python bench/baseline_naive.py [--users 1000,10000] [--sample 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from typing import Any

import engine_driver
from _harness import (
    Pair,
    Report,
    SandboxProcess,
    graph_requests,
    isolated_env,
    matched_pairs,
    median,
    parse_sizes,
)

GRAPH_CEILING_PER_S = 1500 / 30


def _connect_requests(stats: dict[str, Any]) -> int:
    """Connect requests as the sandbox counts them (token, directory, presence, feed)."""
    return sum(v for k, v in stats["requests"].items() if k.startswith("connect."))


class NaiveTool:
    """What typical tools do: per-user polling, one request at a time."""

    def __init__(self, profile: Any) -> None:
        from presencectl.connect import wire
        from presencectl.identity.tokens import app_token_provider
        from presencectl.mapping import Mapping as StatusMapping
        from presencectl.transport import build_client

        self.wire = wire
        self.profile = profile
        self.mapping = StatusMapping.from_profile(profile)
        settings = profile.http_settings()
        token = app_token_provider(profile)().token
        self.graph = build_client(settings, base_url=profile.graph_url)
        self.graph.headers["Authorization"] = f"Bearer {token}"
        self.connect = build_client(settings, base_url=profile.connect_api_url)
        from presencectl import secrets

        form = {
            "grant_type": "client_credentials",
            "client_id": profile.connect_client_id,
            "client_secret": secrets.get_secret(profile.name, secrets.CONNECT_CLIENT_SECRET),
            "scope": wire.MESSAGING_SCOPE,
        }
        answer = self.connect.post(profile.connect_login_url + wire.TOKEN_PATH, data=form)
        connect_token = answer.raise_for_status().json()["access_token"]
        self.connect.headers["Authorization"] = f"Bearer {connect_token}"
        self.last: dict[str, tuple[Any, Any]] = {}
        self.requests = 0
        self.resource = wire.resource_id_for(profile.connect_api_url, "naive", profile.name)

    def close(self) -> None:
        self.graph.close()
        self.connect.close()

    def cycle(self, pairs: list[Pair]) -> dict[str, Any]:
        from presencectl.mapping import TeamsStatus

        start = time.perf_counter()
        graph_calls = connect_calls = writes = 0
        for p in pairs:
            teams = self.graph.get(f"/users/{p.azure_id}/presence").raise_for_status().json()
            graph_calls += 1
            connect = self.connect.get(self.wire.PRESENCE_PATH.format(user_id=p.connect_id))
            connect_calls += 1
            status = connect.raise_for_status().json().get("presence")
            seen = (teams.get("availability"), teams.get("activity"), status)
            previous = self.last.get(p.email)
            self.last[p.email] = seen
            if previous is None or previous == seen:
                continue  # first sight, or nothing changed: nothing to write
            if previous[2] != status:  # Connect changed: write Teams
                target = self.mapping.connect_to_teams(status)
                if target is not None and hasattr(target, "availability"):
                    self.graph.post(
                        f"/users/{p.azure_id}/presence/setPresence",
                        json={
                            "sessionId": self.profile.client_id,
                            "availability": target.availability,
                            "activity": target.activity,
                            "expirationDuration": "PT1H",
                        },
                    )
                    graph_calls += 1
                    writes += 1
            elif previous[:2] != seen[:2]:  # Teams changed: write Connect
                target = self.mapping.teams_to_connect(TeamsStatus.of(seen[0], seen[1], False))
                if isinstance(target, str) and target != "unaltered":
                    self.connect.put(
                        self.wire.PRESENCE_PATH.format(user_id=p.connect_id),
                        params={"resource": self.resource},
                        json={"presence": target},
                    )
                    connect_calls += 1
                    writes += 1
        return {
            "wall_s": time.perf_counter() - start,
            "graph": graph_calls,
            "connect": connect_calls,
            "writes": writes,
        }


def compare(users: int, sample: int, seed: int, one_shot: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    lifted = 10**7
    with isolated_env(), SandboxProcess(users=users, seed=seed, throttle=lifted) as sb:
        profile = engine_driver.prepare(sb)
        pairs = asyncio.run(matched_pairs(profile))
        n = len(pairs)
        engine_driver.one_shot(profile, limit=lifted, window=30.0)  # both sides converged
        # presencectl: steady watch cycles, then a one-shot run.
        # Counted over the steady cycles only: the counters are reset after the first cycle
        # (directory listings and the full Connect read that starts every watch).
        watch = engine_driver.watch_cycles(
            profile, limit=lifted, window=30.0, cycles=5, after_first=sb.reset_stats
        )
        stats = sb.stats()
        cycles = len(watch["cycle_s"])
        graph_per_cycle = graph_requests(stats) / cycles
        rows.append(
            {
                "users": n,
                "tool": "presencectl watch cycle",
                "wall_s": median(watch["cycle_s"]),
                "graph_requests": graph_per_cycle,
                "connect_requests": _connect_requests(stats) / cycles,
                "throttle_bound_s": graph_per_cycle / GRAPH_CEILING_PER_S,
                "measured_over": n,
            }
        )
        sb.reset_stats()
        once = engine_driver.one_shot(profile, limit=lifted, window=30.0) if one_shot else None
        stats = sb.stats()
        g = graph_requests(stats)
        rows.append(
            {}
            if once is None
            else {
                "users": n,
                "tool": "presencectl one-shot",
                "wall_s": once["elapsed"],
                "graph_requests": float(g),
                "connect_requests": float(_connect_requests(stats)),
                "throttle_bound_s": g / GRAPH_CEILING_PER_S,
                "measured_over": n,
            }
        )
        # The naive tool: a first cycle to learn the states (not timed), then a steady cycle.
        subset = pairs[: min(n, sample)]
        naive = NaiveTool(profile)
        try:
            naive.cycle(subset)
            sb.reset_stats()
            result = naive.cycle(subset)
            stats = sb.stats()  # the sandbox's count, as for presencectl's rows
        finally:
            naive.close()
        scale = n / len(subset)
        graph_per_cycle = graph_requests(stats) * scale
        rows.append(
            {
                "users": n,
                "tool": "naive polling"
                + (f" (x{scale:.0f} from {len(subset)})" if scale > 1 else ""),
                "wall_s": result["wall_s"] * scale,
                "graph_requests": graph_per_cycle,
                "connect_requests": _connect_requests(stats) * scale,
                "throttle_bound_s": graph_per_cycle / GRAPH_CEILING_PER_S,
                "measured_over": len(subset),
            }
        )
    rows = [r for r in rows if r]
    naive_row = rows[-1]
    for row in rows:  # all Graph requests on both sides ($batch members one by one)
        row["graph_x_fewer"] = naive_row["graph_requests"] / max(row["graph_requests"], 1e-9)
        row["wall_x_faster"] = naive_row["wall_s"] / row["wall_s"] if row["wall_s"] else math.nan
    return rows


def run(sizes: list[int], sample: int, seed: int, one_shot: bool = True) -> Report:
    report = Report(
        "baseline_naive",
        [
            "users",
            "tool",
            "wall_s",
            "graph_requests",
            "connect_requests",
            "throttle_bound_s",
            "graph_x_fewer",
            "wall_x_faster",
            "measured_over",
        ],
    )
    report.notes.append(
        "per cycle; throttle lifted for both (in the naive tool's favour); throttle_bound_s = "
        "Graph requests / 50 per s, the least time Graph's ceiling allows; x_fewer / x_faster = "
        "naive / this row"
    )
    figures: dict[str, Any] = {}
    for n in sizes:
        rows = compare(n, sample, seed, one_shot)
        for row in rows:
            report.add(**row)
        figures[str(n)] = {
            "graph_x_fewer": rows[0]["graph_x_fewer"],
            "wall_x_faster": rows[0]["wall_x_faster"],
            "naive_extrapolated": rows[-1]["measured_over"] < rows[-1]["users"],
        }
        if rows[-1]["measured_over"] < rows[-1]["users"]:
            report.notes.append(
                f"{n} users: the naive cycle ran over {rows[-1]['measured_over']} users and was "
                "extrapolated linearly"
            )
    report.extra["figures"] = figures
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="1000,10000")
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-one-shot", action="store_true", help="skip the one-shot row")
    args = parser.parse_args(argv)
    run(parse_sizes(args.users), args.sample, args.seed, not args.no_one_shot).emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
