"""``POST /_sandbox/certs`` signs loopback names only (issue 26): the sandbox CA is trusted by
every profile written for the sandbox, so it must never vouch for a name a real site answers to."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509


@pytest.mark.parametrize("hostname", ["localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1"])
def test_loopback_names_get_a_certificate(sandbox: Any, hostname: str) -> None:
    answer = sandbox.control.post("/_sandbox/certs", json={"hostname": hostname})
    assert answer.status_code == 200, answer.text
    cert = x509.load_pem_x509_certificate(answer.json()["cert_pem"].encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    shown = [str(n.value).lower() for n in names]
    assert any(hostname.lower() == name or hostname in name for name in shown), shown


@pytest.mark.parametrize(
    "hostname",
    ["graph.microsoft.com", "login.microsoftonline.com", "*.example.com", "localhost.evil.example",
     "10.0.0.1", "192.168.1.1", "0.0.0.0", "::", "2001:db8::1"],
)  # fmt: skip
def test_other_names_are_refused_with_the_sandbox_error_body(sandbox: Any, hostname: str) -> None:
    answer = sandbox.control.post("/_sandbox/certs", json={"hostname": hostname})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "invalid_request" and "loopback" in error["message"]
    assert "cert_pem" not in answer.text
