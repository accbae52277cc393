"""The watch's rule for failures (sync/resilience.py): what is waited out, what ends it, and the
backoff between tries."""

from __future__ import annotations

import random

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
