"""The watch's rule for failures (sync/resilience.py): what is waited out, what ends it, and the
backoff between tries."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from presencectl.errors import (
    ApiError,
    AuthError,
    ConfigError,
    NetworkError,
    PresencectlError,
    UsageError,
)
from presencectl.sync.resilience import Backoff, is_transient, service_of


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (NetworkError("Graph POST /x: ConnectError: refused"), True),
        (NetworkError("cannot reach Connect", code="connect_unreachable"), True),
        (ApiError("Graph answered 503", status=503), True),
        (ApiError("Connect kept throttling", status=429, code="connect_throttled"), True),
        (ApiError("odd answer", status=400), True),  # exit 1: weathered, the next cycle retries
        (httpx.ReadTimeout("timed out"), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (ConfigError("no app registration", code="setup_missing"), False),
        (ConfigError("cannot use the state database", code="state_unavailable"), False),
        (AuthError("consent revoked", code="consent_missing"), False),
        (AuthError("Connect denied", code="connect_forbidden"), False),
        (UsageError("bad flag"), False),
        (ValueError("a bug"), False),  # a bug is not the network: it ends the run, loudly
    ],
)
def test_only_configuration_and_sign_in_failures_end_a_watch(
    exc: BaseException, transient: bool
) -> None:
    assert is_transient(exc) is transient


def test_services_are_named_for_people() -> None:
    assert service_of(NetworkError("Graph POST /communications/x: ConnectError")) == "Graph"
    assert service_of(NetworkError("cannot reach Connect", code="connect_unreachable")) == (
        "Connect"
    )
    signin = NetworkError("cannot reach the Microsoft sign-in service (token): reset")
    assert service_of(signin) == "Microsoft sign-in"
    assert service_of(PresencectlError("something")) == "a service"


def test_backoff_doubles_with_jitter_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(base=2.0, cap=60.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    ceilings = [min(60.0, 2.0 * 2**i) for i in range(10)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling  # equal jitter: never under half the step
    assert max(delays) <= 60.0 and len(set(delays)) == len(delays)
    backoff.reset()
    assert backoff.next_delay() <= 2.0


def test_the_live_view_and_plain_lines_say_what_is_down_and_when_it_came_back() -> None:
    from datetime import UTC, datetime

    from presencectl.cli.events import event_text
    from presencectl.cli.live import LiveView
    from presencectl.sync.engine import EngineOptions, SyncEvent
    from presencectl.sync.resilience import Outage

    since = datetime(2026, 11, 30, 10, 2, tzinfo=UTC)
    outage = Outage("Graph", since, "network_error: refused", retry_in_s=20.0, attempts=3)
    assert outage.message() == (
        f"Graph unreachable since {since.astimezone().strftime('%H:%M')}, retrying in 20 s"
    )
    down = SyncEvent("outage", since, outage.to_dict())
    assert event_text(down) == outage.message() + " (network_error: refused)"
    back = SyncEvent("recovered", since, {"service": "Graph", "down_s": 31.2, "attempts": 3})
    assert event_text(back) == "Graph reachable again after 31 s: reconciling in full"

    view = LiveView("p", EngineOptions())
    view.on_event(down)
    assert view.outage == outage.message()
    view.on_event(back)
    assert view.outage is None


def test_a_bulk_read_that_found_connect_down_is_an_outage_not_failing_users() -> None:
    from presencectl.sync.resilience import service_down

    refused = NetworkError("cannot reach Connect", code="connect_unreachable")
    unhealthy = ApiError("Connect answered HTTP 503", status=503, code="connect_api_error")
    missing = ApiError("Connect: not found", status=404, code="connect_not_found")
    assert service_down(0, {"a": refused, "b": unhealthy}) is refused
    assert service_down(0, {"a": unhealthy}) is unhealthy
    assert service_down(1, {"a": refused}) is None  # someone was read: those users failed
    assert service_down(0, {"a": refused, "b": missing}) is None  # one user's 404 is his
    assert service_down(0, {}) is None


def test_status_counts_down_to_the_next_try_at_read_time() -> None:
    """The outage stores *when* the next try is due; the seconds left are computed when
    ``status`` reads it (a fixed clock here), never negative: "retrying now" once due."""
    import json
    from datetime import UTC, datetime, timedelta

    from presencectl.sync.resilience import Outage, outage_text
    from presencectl.sync.service import outage_summary

    since = datetime(2026, 11, 30, 10, 2, tzinfo=UTC)
    outage = Outage("Connect", since, "connect_unreachable: refused")
    written = since + timedelta(seconds=40)
    outage.retry(written, 20.0, 3)
    assert outage.retry_at == written + timedelta(seconds=20)
    stored = json.dumps(outage.to_dict())
    head = f"Connect unreachable since {since.astimezone().strftime('%H:%M')}, "
    for later, said in [
        (0, "retrying in 20 s"),
        (5, "retrying in 15 s"),
        (19.5, "retrying in 1 s"),
        (20, "retrying now"),
        (3600, "retrying now"),
    ]:
        now = written + timedelta(seconds=later)
        assert outage_summary(stored, now) == head + said
        assert outage_text(outage.to_dict(), now) == head + said
        assert outage.message(now) == head + said
    assert outage.message() == head + "retrying in 20 s"  # the event's words, at write time
    legacy = {k: v for k, v in outage.to_dict().items() if k != "retry_at"}
    assert outage_text(legacy, written + timedelta(seconds=60)) == outage.message()
    assert outage_summary("not json", written) is None and outage_summary(None, written) is None


def test_status_of_a_stored_outage_is_counted_when_status_runs(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end through ``state_summary``: the stored ``retry_in_s`` (20) is not what status
    says; the seconds left until ``retry_at`` are."""
    import json
    from datetime import UTC, datetime, timedelta

    from presencectl.sync.engine import OUTAGE_META
    from presencectl.sync.resilience import Outage
    from presencectl.sync.service import state_summary
    from presencectl.sync.state import StateStore, database_path

    monkeypatch.setenv("PRESENCECTL_STATE_DIR", str(tmp_path))
    now = datetime.now(UTC)
    ahead, behind = Outage("Graph", now, "x"), Outage("Graph", now, "x")
    ahead.retry(now + timedelta(hours=1), 20.0, 1)  # an hour away, whenever status runs
    behind.retry(now - timedelta(hours=1), 20.0, 1)  # long past
    for outage, said in [(ahead, "retrying in 36"), (behind, "retrying now")]:
        with StateStore(database_path("p")) as store:
            store.set_meta(OUTAGE_META, json.dumps(outage.to_dict()))
        text = state_summary("p")["outage"]
        assert text.startswith("Graph unreachable since ") and said in text, text
        assert "retrying in 20 s" not in text


def test_the_live_view_counts_down_on_each_redraw() -> None:
    from datetime import UTC, datetime, timedelta

    from presencectl.cli.live import LiveView
    from presencectl.sync.engine import EngineOptions, SyncEvent
    from presencectl.sync.resilience import Outage

    now = datetime.now(UTC)
    outage = Outage("Connect", now - timedelta(minutes=5), "connect_unreachable: refused")
    outage.retry(now - timedelta(seconds=30), 20.0, 4)  # the try was due 10 s ago
    view = LiveView("p", EngineOptions())
    view.on_event(SyncEvent("outage", now, outage.to_dict()))
    assert view.outage == outage.message()  # the event's words: "retrying in 20 s"
    assert (view._outage_now() or "").endswith("retrying now")
