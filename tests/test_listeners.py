"""The admin-consent loopback listener: 127.0.0.1 only, checks ``state``, answers once, times out.

(The sync engine has no change-notification receiver: Teams presence is polled and Connect
arrives over the SignalR feed, so there is no inbound endpoint to test beyond this one.)
"""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest

from presencectl.errors import AuthError
from presencectl.identity.consent_listener import ConsentListener


def _get(listener: ConsentListener, **query: str) -> httpx.Response:
    url = f"http://127.0.0.1:{listener.port}/?{urlencode(query)}"
    return httpx.get(url, timeout=5)


class Waiter:
    """``listener.wait()`` in a thread; the answer or the error it ended with."""

    def __init__(self, listener: ConsentListener, timeout: float) -> None:
        self.answer: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.answer = listener.wait(timeout=timeout)
            except BaseException as exc:  # reported to the test
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


def _other_local_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent for a UDP connect
            address: str = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_binds_loopback_only() -> None:
    listener = ConsentListener()
    try:
        assert listener._server.server_address[0] == "127.0.0.1"
        assert urlsplit(listener.redirect_uri).hostname in ("localhost", "127.0.0.1")
        other = _other_local_address()
        if other is not None:
            with pytest.raises(OSError):
                socket.create_connection((other, listener.port), timeout=1).close()
    finally:
        listener.close()


def test_state_is_checked_and_the_wait_goes_on() -> None:
    listener = ConsentListener()
    waiter = Waiter(listener, timeout=10)
    forged = _get(listener, admin_consent="True", tenant="t", state="forged")
    assert forged.status_code == 400
    missing = _get(listener, admin_consent="True", tenant="t")
    assert missing.status_code == 400
    assert waiter.thread.is_alive()  # still waiting for the real answer
    real = _get(listener, admin_consent="True", tenant="contoso", state=listener.state)
    assert real.status_code == 200 and real.headers["content-type"].startswith("text/html")
    assert waiter.join(5)
    assert waiter.error is None and waiter.answer.granted and waiter.answer.tenant == "contoso"


def test_state_is_unguessable() -> None:
    states = set()
    for _ in range(5):
        listener = ConsentListener()
        states.add(listener.state)
        listener.close()
    assert len(states) == 5 and all(len(s) >= 32 for s in states)


def test_answers_once() -> None:
    listener = ConsentListener()
    # Two answers arrive before anybody waits: the first one counts, the second is refused.
    first: list[httpx.Response] = []
    t = threading.Thread(
        target=lambda: first.append(
            _get(
                listener, error="access_denied", error_description="<b>no</b>", state=listener.state
            )
        )
    )
    t.start()
    listener._server.handle_request()
    t.join(5)
    assert first[0].status_code == 200
    assert "<b>no</b>" not in first[0].text  # nothing the caller sent is echoed into the page
    second: list[httpx.Response] = []
    t = threading.Thread(
        target=lambda: second.append(
            _get(listener, admin_consent="True", tenant="x", state=listener.state)
        )
    )
    t.start()
    listener._server.handle_request()
    t.join(5)
    assert second[0].status_code == 400
    answer = listener.wait(timeout=1)
    assert not answer.granted and answer.error == "access_denied"
    with pytest.raises(OSError):  # closed once the answer is taken
        socket.create_connection(("127.0.0.1", listener.port), timeout=1).close()


def test_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # The listener's own clock, stepped by hand: the timeout is honoured exactly, whatever the
    # machine's load (each step is one pass of the wait loop).
    from presencectl.identity import consent_listener

    now = [1000.0]

    def monotonic() -> float:
        now[0] += 0.25
        return now[0]

    monkeypatch.setattr(consent_listener, "time", SimpleNamespace(monotonic=monotonic))
    listener = ConsentListener()
    passes = []
    handle = listener._server.handle_request
    monkeypatch.setattr(listener._server, "handle_request", lambda: passes.append(handle()))
    with pytest.raises(AuthError) as err:
        listener.wait(timeout=0.5)
    assert err.value.code == "consent_timeout"
    # Started at 1000.25, deadline 1000.75: one pass at 1000.5, then the deadline ends the wait.
    assert now[0] == 1000.75 and len(passes) == 1


def test_cancel_ends_the_wait() -> None:
    listener = ConsentListener()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(AuthError):
        listener.wait(timeout=60, cancel=cancel)


def test_an_idle_connection_does_not_defeat_the_timeout() -> None:
    """A client that connects and sends nothing (a browser's pre-connect, a port scanner) must
    not hold the listener past its timeout."""
    listener = ConsentListener()
    idle = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
    try:
        waiter = Waiter(listener, timeout=1.0)
        ended = waiter.join(8)
    finally:
        idle.close()
    waiter.join(5)
    assert ended, "wait() was still blocked on an idle connection 8 s after a 1 s timeout"
    assert isinstance(waiter.error, AuthError)
