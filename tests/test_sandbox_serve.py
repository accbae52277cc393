"""`presencectl sandbox serve` as a process, and running_sandbox's start/stop."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest


def test_serve_prints_one_line_answers_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PRESENCECTL_CONFIG_DIR": str(tmp_path / "cfg"),
        "PRESENCECTL_SECRETS_BACKEND": "file",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "presencectl",
            "sandbox",
            "serve",
            "--port",
            "0",
            "--users",
            "12",
            "--write-profile",
            "sb",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert (
            line["base_url"].startswith("https://127.0.0.1:") and Path(line["ca_bundle"]).is_file()
        )
        verify = ssl.create_default_context(cafile=line["ca_bundle"])
        profile = httpx.get(line["base_url"] + "/_sandbox/profile", verify=verify).json()
        assert profile["users"] == 12
        config = (tmp_path / "cfg" / "config.toml").read_text()
        assert line["base_url"] in config and "[profiles.sb]" in config
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == ""  # nothing after the start line
    assert not Path(line["ca_bundle"]).exists()


def test_serve_refuses_a_non_loopback_host(cli: Any) -> None:
    result = cli("sandbox", "serve", "--host", "0.0.0.0")
    assert result.exit_code == 2


def test_running_sandbox_serves_and_leaves_nothing_behind() -> None:
    # How fast it starts and stops is a benchmark row (bench/timings.py), not an assert here.
    from presencectl.sandbox import running_sandbox

    # Earlier tests' unclosed clients (the in-process CLI leaves msal's sessions to the
    # collector) are collected first: what follows must fail on this sandbox's leaks only, not
    # on whichever earlier leak a garbage collection happens to reach during it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    threads_before = set(threading.enumerate())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with running_sandbox() as sb:
            with httpx.Client(verify=ssl.create_default_context(cafile=sb.ca_bundle)) as c:
                assert c.get(sb.base_url + "/_sandbox/health").status_code == 200
            ca = Path(sb.ca_bundle)
            port = sb.port
    assert set(threading.enumerate()) == threads_before
    assert not ca.exists()
    with socket.socket() as probe:  # the port is free again: nothing listens on it
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_idle_keep_alive_clients_do_not_hold_the_stop() -> None:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=3) as sb:
        lingering = httpx.Client(verify=ssl.create_default_context(cafile=sb.ca_bundle))
        lingering.get(sb.base_url + "/_sandbox/health")
        uvicorn_server = sb._server._server
    # The idle connection was aborted by the stop (see SandboxServer._reap_idle), so the
    # graceful shutdown finished on its own: it did not have to be forced, and nothing is left.
    # (The stop's duration with such a client is a benchmark row in bench/timings.py.)
    assert uvicorn_server.should_exit and not uvicorn_server.force_exit
    assert not uvicorn_server.server_state.connections
    with pytest.raises(httpx.TransportError):
        lingering.get(sb.base_url + "/_sandbox/health")
    lingering.close()


def test_a_port_in_use_is_a_usage_error_not_a_crash(cli: Any) -> None:

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = cli("-o", "json", "sandbox", "serve", "--port", str(port))
    assert result.exit_code == 2, result.stderr
    assert result.json()["error"]["code"] == "port_unavailable"
    assert "Traceback" not in result.stderr
