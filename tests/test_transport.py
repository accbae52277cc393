"""The HTTP stack: redaction, User-Agent, debug logging, ca_bundle, and the msal adapter."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from presencectl.errors import ConfigError
from presencectl.transport import (
    USER_AGENT,
    HttpSettings,
    MsalHttpClient,
    build_async_client,
    build_client,
    msal_http_client,
    redact,
)

SECRETS_IN_TEXT = [
    ("grant_type=password&username=u&password=hunter2&scope=s", "hunter2"),
    ("client_id=abc&client_secret=Sx8Q~abc.def&grant_type=client_credentials", "Sx8Q~abc.def"),
    ("grant_type=refresh_token&refresh_token=0.AXYZ-rt", "0.AXYZ-rt"),
    ("https://localhost/cb?code=0.AAAA-code&state=abc", "0.AAAA-code"),
    ("grant_type=device_code&device_code=DAQABAAEAAAB", "DAQABAAEAAAB"),
    ('{"password": "hunter2", "other": 1}', "hunter2"),
    ('{"passwordProfile": {"password": "p\\"q"}}', 'p\\"q'),
    ('{"currentPassword":"old-pw","newPassword":"new-pw"}', "new-pw"),
    ('{"secretText": "abc~secret", "keyId": "k"}', "abc~secret"),
    ('{"access_token": "eyJ0eXAi.eyJhdWQi.sig", "expires_in": 3599}', "eyJ0eXAi.eyJhdWQi.sig"),
    ("{'client_secret': 'repr-secret'}", "repr-secret"),
    ("Authorization: Bearer eyJ0eXAi.payload.sig", "eyJ0eXAi.payload.sig"),
    ("{'Authorization': 'Basic Y2xpZW50OnNlY3JldA=='}", "Y2xpZW50OnNlY3JldA=="),
    ("authorization=opaque-token-value", "opaque-token-value"),
]


@pytest.mark.parametrize(("text", "secret"), SECRETS_IN_TEXT)
def test_redact_removes_the_secret(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert "***" in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "client_id=abc&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&username=ada%40contoso.com",
        '{"availability": "Busy", "activity": "InACall", "sessionId": "abc"}',
        "GET https://graph.microsoft.com/v1.0/users?$select=mail,userPrincipalName",
        "error_codes=[50126]",
    ],
)
def test_redact_keeps_what_is_not_secret(text: str) -> None:
    assert redact(text) == text


def _recording_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handler)


def test_client_sends_user_agent_and_logs_redacted(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[httpx.Request] = []
    caplog.set_level(logging.DEBUG, logger="presencectl.transport")
    transport = _recording_transport(seen)
    with build_client(
        HttpSettings(), base_url="https://login.example", transport=transport
    ) as client:
        client.post(
            "/t/oauth2/v2.0/token?code=the-code",
            data={"grant_type": "password", "username": "ada", "password": "hunter2"},
            headers={"Authorization": "Bearer eyJ.secret.token"},
        )
    assert seen[0].headers["User-Agent"] == USER_AGENT
    assert "hunter2" not in caplog.text and "the-code" not in caplog.text
    assert "eyJ.secret.token" not in caplog.text
    assert "username=ada" in caplog.text and "← 200 POST" in caplog.text


def test_async_client_shares_the_settings(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204, headers={"echo-ua": request.headers["User-Agent"]})

    async def call() -> httpx.Response:
        async with build_async_client(
            HttpSettings(), base_url="https://api.example", transport=httpx.MockTransport(handler)
        ) as client:
            return await client.put("/p", json={"client_secret": "abc123"})

    caplog.set_level(logging.DEBUG, logger="presencectl.transport")
    response = asyncio.run(call())
    assert response.headers["echo-ua"] == USER_AGENT
    assert "abc123" not in caplog.text


# --- ca_bundle: a real TLS server on loopback whose certificate only our CA signs --------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"ua": self.headers["User-Agent"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", ca_file
    server.shutdown()
    server.server_close()


def test_ca_bundle_is_trusted(tls_server: tuple[str, Path]) -> None:
    url, ca_file = tls_server
    with build_client(HttpSettings(ca_bundle=str(ca_file))) as client:
        assert client.get(url + "/x").json() == {"ua": USER_AGENT}


def test_without_the_ca_bundle_verification_fails(tls_server: tuple[str, Path]) -> None:
    url, _ = tls_server
    with build_client(HttpSettings()) as client, pytest.raises(httpx.ConnectError):
        client.get(url + "/x")


def test_msal_adapter_uses_the_ca_bundle(tls_server: tuple[str, Path]) -> None:
    url, ca_file = tls_server
    adapter = msal_http_client(HttpSettings(ca_bundle=str(ca_file)))
    try:
        assert adapter.get(url + "/x").status_code == 200
    finally:
        adapter.close()


def test_unreadable_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build_client(HttpSettings(ca_bundle=str(tmp_path / "missing.pem")))
    assert caught.value.code == "ca_bundle_invalid" and "missing.pem" in caught.value.message
    assert caught.value.exit_code == 3


# --- the msal adapter --------------------------------------------------------------------------


def _adapter(seen: list[httpx.Request], fixes: dict[str, int]) -> MsalHttpClient:
    return MsalHttpClient(build_client(HttpSettings(), transport=_recording_transport(seen)), fixes)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://127.0.0.1/common/userrealm/a@b?api-version=1.0",
            "https://127.0.0.1:8443/common/userrealm/a@b?api-version=1.0",
        ),
        ("https://127.0.0.1:9000/t/v2.0/token", "https://127.0.0.1:9000/t/v2.0/token"),
        ("https://login.microsoftonline.com/t", "https://login.microsoftonline.com/t"),
        ("https://[::1]/common/userrealm/x", "https://[::1]:8444/common/userrealm/x"),
        ("https://LOCALHOST/x", "https://localhost:8445/x"),
    ],
)
def test_msal_port_fix(url: str, expected: str) -> None:
    seen: list[httpx.Request] = []
    adapter = _adapter(seen, {"127.0.0.1": 8443, "::1": 8444, "localhost": 8445})
    adapter.get(url)
    assert str(seen[0].url) == expected


def test_msal_adapter_drops_none_like_requests_does() -> None:
    seen: list[httpx.Request] = []
    adapter = _adapter(seen, {})
    adapter.post(
        "https://h/token",
        params={"a": "1", "b": None},
        data={"grant_type": "password", "claims": None},
        headers={"X-Client": "msal", "X-Empty": None},
    )
    assert seen[0].url.params.get("b") is None and seen[0].url.params["a"] == "1"
    assert seen[0].content == b"grant_type=password"
    assert "x-empty" not in seen[0].headers and seen[0].headers["x-client"] == "msal"
    adapter.post("https://h/raw", data="a=b")
    assert seen[1].content == b"a=b"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ROPC is what the sync user uses
def test_msal_signs_in_through_the_adapter_against_a_non_default_port() -> None:
    """Real msal, username/password flow: its user-realm request reaches the right port."""
    import msal

    seen: list[httpx.Request] = []
    base = "https://127.0.0.1:8443/contoso"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(
                200,
                json={
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    "issuer": f"{base}/v2.0",
                },
            )
        if "/userrealm/" in path:
            return httpx.Response(200, json={"account_type": "Managed", "ver": "1.0"})
        if path.endswith("/token"):
            return httpx.Response(
                200,
                json={
                    "access_token": "at",
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "scope": "User.Read",
                },
            )
        return httpx.Response(404)

    settings = HttpSettings(msal_port_fixes={"127.0.0.1": 8443})
    app = msal.PublicClientApplication(
        "client-id",
        authority=base,
        http_client=msal_http_client(settings, transport=httpx.MockTransport(handler)),
        instance_discovery=False,
    )
    result = app.acquire_token_by_username_password("ada@contoso.com", "pw", scopes=["User.Read"])
    assert result.get("access_token") == "at", result
    realm = [r for r in seen if "/userrealm/" in r.url.path]
    assert realm and all(r.url.port == 8443 for r in seen)
    token = next(r for r in seen if r.url.path.endswith("/token"))
    assert b"password=pw" in token.content
