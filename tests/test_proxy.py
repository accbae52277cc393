"""The profile's ``proxy`` setting, proven with a real HTTP CONNECT proxy the test starts on
loopback: msal's sign-in, Graph and Connect all tunnel through it (counted per target), and a
proxy that is down is a clear network error that names it."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from test_engine_sandbox import ADMIN, Org

pytestmark = pytest.mark.timeout(120)


class ConnectProxy:
    """A minimal HTTP proxy that serves only CONNECT (what an HTTPS client asks of a proxy)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.tunnels: Counter[str] = Counter()
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self.server.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.closing(conn):
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _ = line.split(" ", 2)
            if method != "CONNECT":
                with self._lock:
                    self.refused.append(line)
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            try:
                upstream = socket.create_connection((host, int(port)), timeout=10)
            except OSError:
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            with self._lock:
                self.tunnels[target] += 1
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
            with contextlib.closing(upstream):
                if rest:
                    upstream.sendall(rest)
                self._pipe(conn, upstream)

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while True:
            readable, _, _ = select.select(list(peers), [], [], 30)
            if not readable:
                return
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                peers[sock].sendall(data)

    def total(self) -> int:
        with self._lock:
            return sum(self.tunnels.values())


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy() as p:
        yield p


@pytest.fixture
def org(cli: Any) -> Iterator[Org]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=10, seed=4, auto_approve=ADMIN) as sb:
        o = Org(sb, cli)
        assert o.run("enable").exit_code == 0
        yield o


def _set_proxy(url: str | None) -> None:
    from presencectl.config import load_profile, save_profile

    profile = load_profile("sandbox")
    profile.proxy = url
    save_profile(profile)


def test_sign_in_graph_and_connect_all_go_through_the_profile_proxy(
    org: Org, proxy: ConnectProxy
) -> None:
    person = org.people[0].email
    org.connect(person, "onphone")
    _set_proxy(proxy.url)
    before = dict(org.sb.world.stats.requests)

    result = org.sync()
    assert result.exit_code == 0, result.stderr
    assert org.teams_pair(person) == "Busy/InACall"  # the write went through the tunnel
    target = f"127.0.0.1:{org.sb.port}"  # the sandbox serves Entra, Graph and Connect
    assert proxy.tunnels[target] >= 1
    assert proxy.refused == []  # HTTPS only ever asks for a tunnel
    after = org.sb.world.stats.requests
    grew = {k for k in after if after[k] > before.get(k, 0)}
    # Every kind of traffic of a run was among what the proxy carried: tokens (msal, Connect),
    # Graph reads and writes, Connect reads.
    assert any("token" in k for k in grew), grew
    assert any("presence" in k.lower() for k in grew), grew

    tunnels = proxy.total()
    _set_proxy(None)  # without the setting, nothing goes through the proxy
    assert org.sync().exit_code == 0
    assert proxy.total() == tunnels


def test_each_client_tunnels_on_its_own(org: Org, proxy: ConnectProxy) -> None:
    """msal, the Graph client and the Connect client each take the setting (one host serves all
    three in the sandbox, so each is counted alone)."""
    import asyncio

    from presencectl.config import load_profile
    from presencectl.connect.client import connect_client_for
    from presencectl.connect.directory import list_contacts
    from presencectl.graph.client import GraphClient
    from presencectl.graph.users import list_users
    from presencectl.identity.tokens import app_token_provider

    _set_proxy(proxy.url)
    profile = load_profile("sandbox")
    provider = app_token_provider(profile)
    try:
        provider()  # msal: client credentials at the token endpoint
    finally:
        provider._app.http_client.close()  # this process goes on: close msal's connection
    after_msal = proxy.total()
    assert after_msal >= 1

    async def graph() -> int:
        async with GraphClient(profile.graph_url, provider, profile.http_settings()) as client:
            return len(await list_users(client))

    assert asyncio.run(graph()) > 0
    after_graph = proxy.total()
    assert after_graph > after_msal

    async def connect() -> int:
        async with connect_client_for(profile) as client:
            return len(await list_contacts(client))

    assert asyncio.run(connect()) > 0
    assert proxy.total() > after_graph


def test_consent_check_signs_in_through_the_proxy(org: Org, proxy: ConnectProxy) -> None:
    _set_proxy(proxy.url)
    result = org.run("-o", "json", "consent", "--check")
    assert result.exit_code == 0, result.stderr
    assert proxy.total() >= 1


def test_a_proxy_that_is_down_is_a_clear_network_error(org: Org, refused_port: int) -> None:
    _set_proxy(f"http://127.0.0.1:{refused_port}")
    result = org.run("-o", "json", "sync")
    assert result.exit_code == 1, result.stdout + result.stderr
    error = result.json()["error"]
    assert "proxy" in (error["message"] + error.get("hint", "")).lower()
    assert "Traceback" not in result.stderr
