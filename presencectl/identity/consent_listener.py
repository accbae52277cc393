"""Admin consent by URL: the ``/v2.0/adminconsent`` link and the loopback listener for the answer.

Owns: building the admin-consent URL for our app, and a one-shot HTTP listener on 127.0.0.1 (a
random port) that waits for the identity platform's redirect, checks ``state``, answers the
browser once with a short page, and reports the grant or the refusal. Requests without the right
``state`` (a stray favicon fetch, a forged link) are refused and the wait goes on until the timeout.

``error`` is read before ``admin_consent``: Entra's error redirect carries ``admin_consent=True``
too, to say that it answers an admin-consent request (entra-docs
``docs/identity-platform/v2-admin-consent.md``, "Error response"). The ``tenant`` of the redirect is
reported as given and never trusted (same page: "Never use the tenant ID value … to authenticate or
authorize"): the caller compares it with the profile's and proves the grant through Graph.
"""

from __future__ import annotations

import logging
import re
import secrets as _random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from presencectl.errors import AuthError
from presencectl.graph.permissions import GRAPH_DEFAULT_SCOPE

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ConsentAnswer:
    granted: bool
    tenant: str = ""
    error: str = ""
    error_description: str = ""

    @property
    def aadsts(self) -> str:
        """The AADSTS code(s) named in the description (``AADSTS65004``), for display only."""
        return ", ".join(dict.fromkeys(re.findall(r"AADSTS\d+", self.error_description)))

    @property
    def summary(self) -> str:
        """The description's first line (Entra appends trace and correlation ids on the next)."""
        lines = self.error_description.replace("\r", "\n").splitlines()
        return lines[0].strip() if lines else ""


class _Server(HTTPServer):
    expected_state: str
    answer: ConsentAnswer | None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Socket timeout per connection: a client that connects and sends nothing (a browser's
    # speculative pre-connect, a port scan) would otherwise block the one-request-at-a-time
    # loop in wait() forever, past its own timeout.
    timeout = 2.0

    def do_GET(self) -> None:
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        if self.server.answer is not None or query.get("state") != self.server.expected_state:
            self._reply(400, "This link is not the answer presencectl is waiting for.")
            return
        if not query.get("error") and query.get("admin_consent", "").lower() == "true":
            self.server.answer = ConsentAnswer(True, tenant=query.get("tenant", ""))
            self._reply(
                200, "Admin consent granted. You can close this window and return to the terminal."
            )
        else:
            self.server.answer = ConsentAnswer(
                False,
                tenant=query.get("tenant", ""),
                error=query.get("error") or "unknown_error",
                error_description=query.get("error_description", ""),
            )
            self._reply(200, "Admin consent was not granted. Return to the terminal for details.")

    def _reply(self, status: int, text: str) -> None:
        body = f"<!doctype html><title>presencectl</title><p>{text}</p>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("consent listener: " + format, *args)


class ConsentListener:
    """A loopback listener bound before the URL is shown; ``wait()`` returns the one answer."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._server = _Server((host, 0), _Handler)
        self._server.expected_state = _random.token_urlsafe(24)
        self._server.answer = None
        self._server.timeout = 0.2

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def state(self) -> str:
        return self._server.expected_state

    @property
    def redirect_uri(self) -> str:
        # Entra ID matches a localhost redirect URI whatever its port, so one registered
        # "http://localhost" serves every random port.
        return f"http://localhost:{self.port}/"

    def consent_url(self, authority_url: str, tenant: str, client_id: str) -> str:
        query = urlencode(
            {
                "client_id": client_id,
                "scope": GRAPH_DEFAULT_SCOPE,
                "redirect_uri": self.redirect_uri,
                "state": self.state,
            }
        )
        return f"{authority_url.rstrip('/')}/{tenant}/v2.0/adminconsent?{query}"

    def wait(
        self, timeout: float = DEFAULT_TIMEOUT_S, cancel: threading.Event | None = None
    ) -> ConsentAnswer:
        deadline = time.monotonic() + timeout
        try:
            while self._server.answer is None:
                if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
                    raise AuthError(
                        f"no admin consent answer arrived within {int(timeout)} s",
                        hint="open the consent URL in a browser signed in as a Global "
                        "Administrator, "
                        "or run without --consent-url to grant consent through Graph",
                        code="consent_timeout",
                    )
                self._server.handle_request()
        finally:
            self._server.server_close()
        return self._server.answer

    def close(self) -> None:
        self._server.server_close()
