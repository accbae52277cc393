"""Health, readiness and metrics of a watch (sync/probes.py), and `sync --watch --listen` serving
them end to end against the sandbox, with and without Teams notifications."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_engine_sandbox import ADMIN, Org

from presencectl.sync.probes import WatchProbes

pytestmark = pytest.mark.timeout(240)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def probes_at(clock: Clock) -> WatchProbes:
    return WatchProbes("contoso", clock=clock)


def event(kind: str, **data: Any) -> dict[str, Any]:
    return {"event": kind, **data}


def test_ready_only_after_a_cycle_and_not_during_an_outage() -> None:
    clock = Clock()
    probes = probes_at(clock)
    probes.on_event(event("start", direction="both", interval=5))
    assert probes.liveness().status == 200
    answer = probes.readiness()
    assert answer.status == 503 and answer.body["reason"].startswith("starting")
    probes.on_event(event("cycle", cycle=1, matched=10, throttled=0, sessions=0))
    assert probes.readiness().status == 200
    probes.on_event(event("outage", service="connect", message="Connect unreachable"))
    answer = probes.readiness()
    assert answer.status == 503 and answer.body == {
        "ready": False, "reason": "outage", "service": "connect",
        "message": "Connect unreachable",
    }  # fmt: skip
    assert probes.liveness().status == 200  # waiting an outage out is being alive
    probes.on_event(event("recovered", service="connect", down_s=12.0))
    probes.on_event(event("cycle", cycle=2, matched=10, throttled=0, sessions=0))
    assert probes.readiness().status == 200


def test_a_watch_that_stops_cycling_goes_unready_then_dead() -> None:
    clock = Clock()
    probes = probes_at(clock)
    probes.on_event(event("start", interval=5))
    probes.on_event(event("cycle", cycle=1, matched=3))
    clock.now += 3 * 5 + 61  # three intervals and the slack
    answer = probes.readiness()
    assert answer.status == 503 and "last cycle finished 76 s ago" in answer.body["reason"]
    assert probes.liveness().status == 200
    clock.now += 600
    answer = probes.liveness()
    assert answer.status == 503 and "no sign of the watch loop" in answer.body["reason"]
    probes.on_event(event("stop"))
    assert probes.liveness().body == {"alive": False, "reason": "the watch has stopped"}


def test_notifications_lengthen_the_limits_with_the_poll_interval() -> None:
    clock = Clock()
    probes = probes_at(clock)
    probes.on_event(event("start", interval=5))
    probes.on_event(event("notifications", users_covered=40, poll_interval_s=60.0, received=0))
    probes.on_event(event("cycle", cycle=1, matched=40))
    clock.now += 3 * 60 + 30
    assert probes.readiness().status == 200  # a reconcile poll a minute is not late at 210 s


def test_metrics_count_what_the_events_say_without_naming_anyone() -> None:
    clock = Clock()
    probes = probes_at(clock)
    probes.on_event(event("start", interval=5))
    probes.on_event(event("cycle", cycle=1, matched=12, throttled=2, sessions=3))
    probes.on_event(event("change", user="ann@contoso.example", teams="Busy/InACall",
                          connect="available"))  # fmt: skip
    probes.on_event(event("change", user="ann@contoso.example", teams="Available/Available",
                          connect="available"))  # fmt: skip
    clock.now += 0.4
    probes.on_event(event("write", user="ann@contoso.example", side="connect", outcome="ok"))
    probes.on_event(event("write", user="bob@contoso.example", side="teams", outcome="failed"))
    probes.on_event(event("cycle", cycle=2, matched=12, throttled=5, sessions=3))
    probes.on_event(event("notifications", received=7, dropped_client_state=1,
                          dropped_untrusted=2, overflows=0, users_covered=12))  # fmt: skip
    probes.on_event(event("notifications", received=9, dropped_client_state=1,
                          dropped_untrusted=2, overflows=0, users_covered=12))  # fmt: skip
    probes.on_event(event("feed", state="connected"))
    probes.on_event(event("feed", state="connected"))
    text = probes.metrics_text()[0].decode()
    lines = {line.split(" ")[0]: float(line.split(" ")[1])
             for line in text.splitlines() if line and not line.startswith("#")}  # fmt: skip
    assert lines['presencectl_cycles_total{profile="contoso"}'] == 2
    assert lines['presencectl_throttled_responses_total{profile="contoso"}'] == 5
    assert lines['presencectl_writes_total{outcome="ok",profile="contoso",side="connect"}'] == 1
    assert lines['presencectl_writes_total{outcome="failed",profile="contoso",side="teams"}'] == 1
    assert lines['presencectl_notifications_received_total{profile="contoso"}'] == 9
    dropped = 'presencectl_notifications_dropped_total{profile="contoso",reason="untrusted"}'
    assert lines[dropped] == 2
    assert lines['presencectl_connect_feed_reconnects_total{profile="contoso"}'] == 1
    assert lines['presencectl_people_matched{profile="contoso"}'] == 12
    assert lines['presencectl_people_covered_by_notifications{profile="contoso"}'] == 12
    assert lines['presencectl_ready{profile="contoso"}'] == 1
    # ann's Teams change seen, written to Connect 0.4 s later: one teams→connect observation
    key = 'presencectl_propagation_seconds_count{direction="teams_to_connect",profile="contoso"}'
    assert lines[key] == 1
    assert 'le="0.5"' in text
    assert "contoso.example" not in text  # never a person in a label


def test_figures_added_to_the_cycle_later_become_gauges_only_when_present() -> None:
    probes = probes_at(Clock())
    probes.on_event(event("cycle", cycle=1, matched=1))
    assert b"presencectl_queued_writes" not in probes.metrics_text()[0]
    probes.on_event(event("cycle", cycle=2, matched=1, queued_writes=4))
    assert b'presencectl_queued_writes{profile="contoso"} 4.0' in probes.metrics_text()[0]


# -- end to end: `presencectl sync --watch --listen` in a child process -----------------------


@pytest.fixture
def org(cli: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Org]:
    from presencectl.sandbox import running_sandbox

    monkeypatch.setenv("PRESENCECTL_SECRETS_BACKEND", "file")  # the child sees the secrets
    with running_sandbox(users=12, seed=5, auto_approve=ADMIN) as sb:
        o = Org(sb, cli)
        assert o.run("enable").exit_code == 0
        yield o
    gc.collect()


def bound_port() -> socket.socket:
    """A listening socket on a free port: kept open until the watch is about to bind it, so no
    other test takes the port in between."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


def wait_for(url: str, status: int, deadline_s: float = 60) -> httpx.Response:
    end = time.monotonic() + deadline_s
    last: httpx.Response | None = None
    while time.monotonic() < end:
        last = get(url)
        if last is not None and last.status_code == status:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered {status}: {last and last.text}")


@pytest.mark.parametrize("notify", [False, True], ids=["polling", "notifications"])
def test_watch_serves_health_readiness_and_metrics(org: Org, tmp_path: Path, notify: bool) -> None:
    holder = bound_port()
    port = holder.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    args = ["sync", "--watch", "--interval", "1", "--listen", f"127.0.0.1:{port}"]
    if notify:
        args += ["--notify-url", f"{base}/notify", "--reconcile-interval", "2"]
    out, err = (tmp_path / "out").open("w"), (tmp_path / "err").open("w")
    holder.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "presencectl", "--profile", "sandbox", "--no-input", "-o", "json",
         *args],
        stdout=out, stderr=err, env=os.environ.copy(),
    )  # fmt: skip
    try:
        live = wait_for(f"{base}/healthz", 200, 30)
        assert live.json() == {"alive": True}
        ready = wait_for(f"{base}/readyz", 200, 90)
        assert ready.json()["ready"] is True
        metrics = get(f"{base}/metrics")
        assert metrics is not None and metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        for name in ("presencectl_cycles_total", "presencectl_people_matched",
                     "presencectl_last_cycle_timestamp_seconds", "presencectl_ready"):  # fmt: skip
            assert f'{name}{{profile="sandbox"}}' in text
        assert "contoso.example" not in text
        if notify:
            assert 'presencectl_people_covered_by_notifications{profile="sandbox"}' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        out.close()
        err.close()
    assert code == 0, (tmp_path / "err").read_text()
    assert get(f"{base}/healthz") is None  # the listener went with the watch


def test_readiness_is_503_before_the_first_cycle(org: Org, tmp_path: Path) -> None:
    org.sb.world.faults.latency_ms = 1500  # every request slow: the first cycle takes seconds
    holder = bound_port()
    port = holder.getsockname()[1]
    holder.close()
    err = (tmp_path / "err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "presencectl", "--profile", "sandbox", "--no-input", "-o", "json",
         "sync", "--watch", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=err, env=os.environ.copy(),
    )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", 200, 30)
        answer = get(f"http://127.0.0.1:{port}/readyz")
        assert answer is not None and answer.status_code == 503, answer and answer.text
        assert answer.json()["reason"].startswith("starting")
        wait_for(f"http://127.0.0.1:{port}/readyz", 200, 120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        err.close()


def test_listen_without_watch_and_a_busy_port_are_clear_errors(org: Org) -> None:
    bad = org.cli("--profile", "sandbox", "sync", "--listen", "127.0.0.1:9")
    assert bad.exit_code == 2 and "--listen goes with --watch" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = org.cli("--profile", "sandbox", "sync", "--watch", "--max-cycles", "1",
                       "--listen", f"127.0.0.1:{port}")  # fmt: skip
    assert busy.exit_code == 3, busy.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert "Traceback" not in busy.stderr
