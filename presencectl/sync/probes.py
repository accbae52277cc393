"""Health, readiness and Prometheus metrics of a running watch (``sync --watch --listen``).

Owns :class:`WatchProbes`. It follows the engine's events — the same stream the live view and
``-o json`` show (``start``, ``cycle``, ``write``, ``change``, ``outage``, ``recovered``,
``feed``, ``notifications``, ``stop``) — and answers three routes, served on ``--listen`` by the
notification receiver's own app (``sync/receiver.py``), with or without ``--notify-url``:

- ``GET /healthz``: the watch loop is alive — 200 while it runs and has been heard from within
  ``max(600 s, 5 × its poll interval)`` (the answer itself comes from the sync's own event loop,
  so a loop that hangs does not answer at all); 503 once it stopped or went quiet;
- ``GET /readyz``: signed in and working — 200 when a cycle finished within 3 poll intervals
  (plus a minute's slack) and no outage is being waited out; else 503 with the reason as JSON
  (before the first cycle: ``starting``);
- ``GET /metrics``: Prometheus text format, from the ``prometheus_client`` library, in a registry
  of this watch's own (no process-wide globals). Labels are the profile, the side, the outcome,
  the direction or the drop reason — never a person.

Counters follow the cumulative figures the events carry (a watch's result adds up over its
cycles), so a counter only ever grows by what the engine counted. The propagation histogram
measures, per direction, from the cycle that first saw a person's change on one side to our
write on the other being answered: the delay the tool itself adds (the services' own delays are
outside it). docs/running-as-a-service.md lists the metrics and three example alerts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LIVENESS_FLOOR_S = 600.0
READY_SLACK_S = 60.0
PROPAGATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)

# A change seen on one side is mirrored by a write on the other.
_DIRECTION_OF_WRITE = {"connect": "teams_to_connect", "teams": "connect_to_teams"}
_SIDE_SEEN_FOR_WRITE = {"connect": "teams", "teams": "connect"}


@dataclass
class ProbeAnswer:
    """One probe's verdict: HTTP status and the JSON body."""

    status: int
    body: dict[str, Any]


class WatchProbes:
    """Liveness, readiness and metrics of one watch, fed with its events (see the module doc)."""

    def __init__(self, profile: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.profile = profile
        self._clock = clock
        self.server: Any = None  # serves routes() alone when there are no notifications
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(name, doc, ("profile", *labels), registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Gauge(name, doc, ("profile", *labels), registry=registry)

        self.m_cycles = counter("presencectl_cycles", "Sync cycles finished.")
        self.m_writes = counter(
            "presencectl_writes",
            "Writes of our session answered, by side and outcome.",
            ("side", "outcome"),
        )
        self.m_throttled = counter(
            "presencectl_throttled_responses", "429 answers received (both services)."
        )
        self.m_notifications = counter(
            "presencectl_notifications_received", "Graph change notifications received."
        )
        self.m_dropped = counter(
            "presencectl_notifications_dropped",
            "Graph change notifications dropped, by reason.",
            ("reason",),
        )
        self.m_feed_reconnects = counter(
            "presencectl_connect_feed_reconnects",
            "Connect change feed connections after the first.",
        )
        self.m_outages = counter(
            "presencectl_outages", "Outages waited out, by service.", ("service",)
        )
        self.g_matched = gauge("presencectl_people_matched", "People matched on both sides.")
        self.g_covered = gauge(
            "presencectl_people_covered_by_notifications",
            "Matched people whose Teams changes arrive by Graph change notifications.",
        )
        self.g_sessions = gauge("presencectl_sessions_held", "Sessions of ours held on both sides.")
        self.g_last_cycle = gauge(
            "presencectl_last_cycle_timestamp_seconds",
            "When the last cycle finished (Unix time).",
        )
        self.g_poll_interval = gauge(
            "presencectl_poll_interval_seconds", "Seconds between Teams polls right now."
        )
        self.g_up = gauge("presencectl_ready", "1 while /readyz answers 200.")
        self.g_outage = gauge(
            "presencectl_outage", "1 while an outage of the service is waited out.", ("service",)
        )
        self.h_propagation = Histogram(
            "presencectl_propagation_seconds",
            "From the cycle that saw a change on one side to our write on the other answered.",
            ("profile", "direction"),
            buckets=PROPAGATION_BUCKETS,
            registry=registry,
        )
        # Figures other parts may add to the cycle event later (queued writes, budget use):
        # a gauge appears with the first event that carries the key, never as a made-up 0.
        self._optional_gauges: dict[str, Any] = {}
        self._started_at: float | None = None
        self._stopped = False
        self._heard_at: float | None = None
        self._last_cycle_at: float | None = None
        self._interval = 5.0
        self._poll_interval: float | None = None
        self._outages: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, float] = {}  # cumulative figures already counted
        self._feeds_connected = 0
        self._last_values: dict[tuple[str, str], str | None] = {}
        self._changed_at: dict[tuple[str, str], float] = {}

    # -- events -------------------------------------------------------------------------------

    def on_event(self, event: Any) -> None:
        """Follow one engine event (a ``SyncEvent``, or its NDJSON form ``to_dict()``)."""
        if hasattr(event, "data") and hasattr(event, "type"):
            kind, data = event.type, dict(event.data)
        else:
            data = dict(event)
            kind = data.get("event")
        now = self._clock()
        self._heard_at = now
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(data, now)

    def _on_start(self, data: dict[str, Any], now: float) -> None:
        self._started_at = now
        interval = data.get("interval")
        if isinstance(interval, (int, float)) and interval > 0:
            self._interval = float(interval)
            self.g_poll_interval.labels(self.profile).set(self._interval)

    def _on_stop(self, data: dict[str, Any], now: float) -> None:
        self._stopped = True
        self.g_up.labels(self.profile).set(0)

    def _on_cycle(self, data: dict[str, Any], now: float) -> None:
        self._last_cycle_at = now
        self.m_cycles.labels(self.profile).inc()
        self.g_last_cycle.labels(self.profile).set(time.time())
        self._grow(self.m_throttled.labels(self.profile), "throttled", data.get("throttled"))
        if isinstance(data.get("matched"), int):
            self.g_matched.labels(self.profile).set(data["matched"])
        if isinstance(data.get("sessions"), int):
            self.g_sessions.labels(self.profile).set(data["sessions"])
        for key, value in data.items():
            if key in ("queued_writes", "budget_used", "budget_share") and isinstance(
                value, (int, float)
            ):
                self._optional_gauge(key).labels(self.profile).set(value)
        self.g_up.labels(self.profile).set(1 if self.readiness().status == 200 else 0)

    def _on_write(self, data: dict[str, Any], now: float) -> None:
        side, outcome = str(data.get("side")), str(data.get("outcome"))
        self.m_writes.labels(self.profile, side, outcome).inc()
        if outcome != "ok" or side not in _DIRECTION_OF_WRITE:
            return
        seen = self._changed_at.pop((str(data.get("user")), _SIDE_SEEN_FOR_WRITE[side]), None)
        if seen is not None:
            self.h_propagation.labels(self.profile, _DIRECTION_OF_WRITE[side]).observe(
                max(0.0, now - seen)
            )

    def _on_change(self, data: dict[str, Any], now: float) -> None:
        user = str(data.get("user"))
        for side in ("teams", "connect"):
            value = data.get(side)
            before = self._last_values.get((user, side), value)
            self._last_values[(user, side)] = value
            if value != before and value is not None:
                self._changed_at[(user, side)] = now

    def _on_outage(self, data: dict[str, Any], now: float) -> None:
        service = str(data.get("service"))
        if service not in self._outages:
            self.m_outages.labels(self.profile, service).inc()
        self._outages[service] = data
        self.g_outage.labels(self.profile, service).set(1)
        self.g_up.labels(self.profile).set(0)

    def _on_recovered(self, data: dict[str, Any], now: float) -> None:
        service = str(data.get("service"))
        self._outages.pop(service, None)
        self.g_outage.labels(self.profile, service).set(0)

    def _on_feed(self, data: dict[str, Any], now: float) -> None:
        if data.get("state") == "connected":
            self._feeds_connected += 1
            if self._feeds_connected > 1:
                self.m_feed_reconnects.labels(self.profile).inc()

    def _on_notifications(self, data: dict[str, Any], now: float) -> None:
        self._grow(self.m_notifications.labels(self.profile), "received", data.get("received"))
        for reason in ("client_state", "untrusted"):
            self._grow(
                self.m_dropped.labels(self.profile, reason),
                f"dropped_{reason}",
                data.get(f"dropped_{reason}"),
            )
        self._grow(
            self.m_dropped.labels(self.profile, "overflow"), "overflows", data.get("overflows")
        )
        if isinstance(data.get("users_covered"), int):
            self.g_covered.labels(self.profile).set(data["users_covered"])
        poll = data.get("poll_interval_s")
        if isinstance(poll, (int, float)) and poll > 0:
            self._poll_interval = float(poll)
            self.g_poll_interval.labels(self.profile).set(poll)

    def _grow(self, child: Any, key: str, total: Any) -> None:
        """Add to a counter what a cumulative figure grew by since last seen."""
        if not isinstance(total, (int, float)):
            return
        grown = total - self._seen.get(key, 0)
        self._seen[key] = total
        if grown > 0:
            child.inc(grown)

    def _optional_gauge(self, key: str) -> Any:
        from prometheus_client import Gauge

        if key not in self._optional_gauges:
            self._optional_gauges[key] = Gauge(
                f"presencectl_{key}",
                f"The watch's {key.replace('_', ' ')}.",
                ("profile",),
                registry=self.registry,
            )
        return self._optional_gauges[key]

    # -- verdicts -----------------------------------------------------------------------------

    @property
    def poll_interval(self) -> float:
        return self._poll_interval or self._interval

    def liveness(self) -> ProbeAnswer:
        now = self._clock()
        if self._stopped:
            return ProbeAnswer(503, {"alive": False, "reason": "the watch has stopped"})
        limit = max(LIVENESS_FLOOR_S, 5 * self.poll_interval)
        heard = self._heard_at
        if heard is not None and now - heard > limit:
            return ProbeAnswer(
                503,
                {
                    "alive": False,
                    "reason": f"no sign of the watch loop for {now - heard:.0f} s",
                    "limit_s": limit,
                },
            )
        return ProbeAnswer(200, {"alive": True})

    def readiness(self) -> ProbeAnswer:
        now = self._clock()
        if self._stopped:
            return ProbeAnswer(503, {"ready": False, "reason": "stopped"})
        if self._outages:
            service, outage = next(iter(self._outages.items()))
            return ProbeAnswer(
                503,
                {
                    "ready": False,
                    "reason": "outage",
                    "service": service,
                    "message": outage.get("message"),
                },
            )
        if self._last_cycle_at is None:
            return ProbeAnswer(503, {"ready": False, "reason": "starting: no cycle finished yet"})
        age = now - self._last_cycle_at
        limit = 3 * self.poll_interval + READY_SLACK_S
        if age > limit:
            return ProbeAnswer(
                503,
                {
                    "ready": False,
                    "reason": f"the last cycle finished {age:.0f} s ago",
                    "limit_s": limit,
                },
            )
        return ProbeAnswer(200, {"ready": True, "last_cycle_age_s": round(age, 1)})

    def metrics_text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.g_up.labels(self.profile).set(1 if self.readiness().status == 200 else 0)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- HTTP ---------------------------------------------------------------------------------

    def routes(self) -> list[Any]:
        """Starlette routes for the receiver's app (``/healthz``, ``/readyz``, ``/metrics``)."""
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        def as_response(answer: ProbeAnswer) -> Response:
            return Response(
                json.dumps(answer.body),
                status_code=answer.status,
                media_type="application/json",
            )

        async def healthz(request: Request) -> Response:
            return as_response(self.liveness())

        async def readyz(request: Request) -> Response:
            return as_response(self.readiness())

        async def metrics(request: Request) -> Response:
            body, content_type = self.metrics_text()
            return Response(body, media_type=content_type)

        return [
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]


__all__ = ["ProbeAnswer", "WatchProbes"]
