"""No secret in any output of ``sync --watch -vvv`` with Graph notifications, nor of
``sandbox serve -vv`` (issue 26).

Both run as real processes. The sandbox's Graph delivers to a small forwarder of the test's
(on loopback), which records each body — so the test learns the subscription's clientState
from the wire — and hands it on to the watch's receiver. Every secret the test can know is then
looked for in both processes' stdout and stderr: the Graph app's client secret and the Connect
client secret, the sync user's passwords, every access, refresh and id token in the stored
token caches, the notification certificate's private key, and the clientState.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from presencectl.config import config_dir

pytestmark = pytest.mark.timeout(240)

ADMIN = "admin@contoso.example"
NEW_PASSWORD = "Watch-Leak-Canary-Passw0rd!"


class Forwarder:
    """Graph's notification URL: records every body, forwards it to the receiver as it came."""

    def __init__(self, target_port: int) -> None:
        self.bodies: list[bytes] = []
        forwarder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(size)
                forwarder.bodies.append(body)
                try:
                    answer = httpx.post(
                        f"http://127.0.0.1:{target_port}{self.path}", content=body,
                        headers={"content-type": self.headers.get("content-type") or ""},
                    )  # fmt: skip
                    status, payload = answer.status_code, answer.content
                    kind = answer.headers.get("content-type", "text/plain")
                except httpx.HTTPError:
                    status, payload, kind = 503, b"", "text/plain"
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def client_states(self) -> set[str]:
        found = set()
        for body in self.bodies:
            try:
                doc = json.loads(body)
            except ValueError:
                continue
            for item in doc.get("value", []) if isinstance(doc, dict) else []:
                if isinstance(item, dict) and isinstance(item.get("clientState"), str):
                    found.add(item["clientState"])
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _stored_secrets() -> dict[str, str]:
    """Every secret in the file secret store: plain values, PEM key bodies, and every token of
    the persisted msal caches (read back as the product reads them)."""
    from presencectl.identity.msal_apps import ADMIN as ADMIN_ID
    from presencectl.identity.msal_apps import APP, SYNC_USER, PersistentTokenCache

    found: dict[str, str] = {}
    data = json.loads((config_dir() / "secrets.json").read_text())
    for profile, names in data.items():
        for name, value in names.items():
            if name.startswith("token_cache:"):
                continue  # packed; read below
            label = f"{profile}:{name}"
            try:
                doc = json.loads(value)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                found[label] = value
                continue
            for key, text in doc.items():
                if isinstance(text, str) and "PRIVATE KEY-----" in text:
                    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("-----")]
                    found[f"{label}:{key}"] = lines[len(lines) // 2]
        for identity in (ADMIN_ID, APP, SYNC_USER):
            state = PersistentTokenCache(profile, identity)._read()
            cache = json.loads(state) if state else {}
            for kind in ("AccessToken", "RefreshToken", "IdToken"):
                for key, entry in (cache.get(kind) or {}).items():
                    found[f"{profile}:token_cache:{identity}:{kind}:{key[:16]}"] = entry["secret"]
    return found


@pytest.fixture
def sandbox_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("PRESENCECTL_SECRETS_BACKEND", "file")
    proc = subprocess.Popen(
        [sys.executable, "-m", "presencectl", "-vv", "sandbox", "serve", "--port", "0",
         "--users", "10", "--seed", "4", "--auto-approve", ADMIN, "--write-profile", "sandbox",
         "--allow-http-notifications"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    assert proc.stdout is not None
    line = json.loads(proc.stdout.readline())
    info: dict[str, Any] = {"proc": proc, **line}
    try:
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_watch_with_notifications_at_vvv_and_sandbox_at_vv_leak_nothing(
    cli: Any, sandbox_process: dict[str, Any]
) -> None:
    base, verify = (
        sandbox_process["base_url"],
        ssl.create_default_context(cafile=sandbox_process["ca_bundle"]),
    )
    control = httpx.Client(base_url=base, verify=verify)
    info = control.get("/_sandbox/profile").json()
    assert cli("--profile", "sandbox", "setup-azure", "--no-input").exit_code == 0
    control.post(f"/_sandbox/users/{info['sync_user']}/password",
                 json={"password": NEW_PASSWORD}).raise_for_status()  # fmt: skip
    assert cli("--profile", "sandbox", "sync-user", "set", "--username", info["sync_user"],
               "--password-stdin", input=NEW_PASSWORD + "\n").exit_code == 0  # fmt: skip
    assert cli("--profile", "sandbox", "sync-user", "validate").exit_code == 0
    assert cli("--profile", "sandbox", "enable").exit_code == 0
    users = cli("--profile", "sandbox", "-o", "json", "users").json()
    person = next(
        r["email"]
        for r in users
        if r["status"] == "matched" and r["email"] not in (ADMIN, info["sync_user"])
    )

    listen = _free_port()
    forwarder = Forwarder(listen)
    watch = subprocess.Popen(
        [sys.executable, "-m", "presencectl", "-vvv", "--profile", "sandbox", "sync", "--watch",
         "--notify-url", forwarder.url, "--listen", f"127.0.0.1:{listen}",
         "--reconcile-interval", "3600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    try:
        stats = lambda: control.get("/_sandbox/stats").json()  # noqa: E731
        _until(lambda: stats()["subscriptions_active"] >= 1 or watch.poll() is not None, 90,
               "the watch's Graph subscription")  # fmt: skip
        assert watch.poll() is None, "the watch ended early"
        control.post(
            "/_sandbox/teams/presence",
            json={"user": person, "availability": "Busy", "activity": "InACall"},
        ).raise_for_status()
        _until(lambda: bool(forwarder.client_states()), 60, "a notification with clientState")
        # and one with a wrong clientState, straight to the receiver: its warning is logged
        httpx.post(
            f"http://127.0.0.1:{listen}/",
            json={
                "value": [
                    {"clientState": "not-ours", "subscriptionId": "x", "resourceData": {"id": "y"}}
                ]
            },
        )
        watch.send_signal(signal.SIGTERM)
        watch_out, watch_err = watch.communicate(timeout=60)
    finally:
        forwarder.close()
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    proc = sandbox_process["proc"]
    proc.send_signal(signal.SIGINT)
    sandbox_out, sandbox_err = proc.communicate(timeout=30)
    control.close()

    secrets = {
        "connect_client_secret": info["connect_client_secret"],
        "sync_user_first_password": info["sync_user_password"],
        "sync_user_password": NEW_PASSWORD,
        **{f"clientState:{i}": s for i, s in enumerate(sorted(forwarder.client_states()))},
        **_stored_secrets(),
    }
    secrets = {k: v for k, v in secrets.items() if isinstance(v, str) and len(v) >= 8}
    assert any(":token_cache:" in k and ":AccessToken:" in k for k in secrets)  # tokens known
    assert any(":RefreshToken:" in k for k in secrets)
    assert any("client_secret" in k and "connect" not in k for k in secrets)  # the Graph app's
    assert any(k.startswith("clientState:") for k in secrets)
    outputs = {"watch stdout": watch_out, "watch stderr": watch_err,
               "sandbox stdout": sandbox_out, "sandbox stderr": sandbox_err}  # fmt: skip
    # The outputs are what -vvv / -vv show: request lines, the subscription body (its clientState
    # redacted), uvicorn's access log of the sandbox.
    assert "POST" in watch_err and "subscriptions" in watch_err
    assert '"clientState":"***"' in watch_err  # the subscription body, logged and redacted
    assert "wrong clientState" in watch_err  # the receiver's warning
    assert "/v1.0/subscriptions" in sandbox_err
    hits = [f"{name} in {where}" for where, text in outputs.items()
            for name, value in secrets.items() if value in text]  # fmt: skip
    assert not hits, hits
