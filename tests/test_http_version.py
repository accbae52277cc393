"""The HTTP version presencectl speaks: HTTP/1.1 only (HTTP/2 was enabled in the Graph client but
never spoken by the sandbox, so it was a path no test exercised; it is off, see
presencectl/transport.py). Proven against a TLS server on loopback that *offers* h2 by ALPN and
records what each client picked: a client that offered h2 would get it."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from presencectl.graph.tokens import AccessToken
from presencectl.transport import HttpSettings, build_client


class AlpnServer:
    """Answers every request ``200 {}`` over HTTP/1.1 and records the ALPN protocol picked."""

    def __init__(self, tmp: Path) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        self.ca_file = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.context)
        self.context.set_alpn_protocols(["h2", "http/1.1"])
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        self.picked: list[str | None] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()
                continue
            self.picked.append(conn.selected_alpn_protocol())
            try:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
                )
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AlpnServer]:
    s = AlpnServer(tmp_path)
    yield s
    s.close()


def test_the_graph_client_does_not_negotiate_http2(server: AlpnServer) -> None:
    from presencectl.graph.client import GraphClient

    def token(force_refresh: bool = False) -> AccessToken:
        return AccessToken("t", time.time() + 3600)

    async def go() -> str:
        settings = HttpSettings(ca_bundle=str(server.ca_file))
        async with GraphClient(server.url, token, settings) as client:
            response = await client.request("GET", "/users")
            return response.http_version

    assert asyncio.run(go()) == "HTTP/1.1"
    assert server.picked and set(server.picked) == {"http/1.1"}


def test_the_sync_client_msal_uses_does_not_negotiate_http2(server: AlpnServer) -> None:
    with build_client(HttpSettings(ca_bundle=str(server.ca_file))) as client:
        assert client.get(server.url + "/x").http_version == "HTTP/1.1"
    assert set(server.picked) == {"http/1.1"}
