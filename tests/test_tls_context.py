"""One TLS context per process and CA file: built once (loading the system store costs CPU every
client would pay), rebuilt when the file changes, never cached when it cannot be used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme

from presencectl.errors import ConfigError
from presencectl.transport import HttpSettings


def test_clients_of_one_ca_file_share_one_context(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    first = HttpSettings(ca_bundle=str(ca)).ssl_context()
    assert HttpSettings(ca_bundle=str(ca), timeout=5).ssl_context() is first
    assert HttpSettings().ssl_context() is not first  # the system store alone is another
    assert HttpSettings().ssl_context() is HttpSettings().ssl_context()


def test_a_changed_ca_file_gives_a_new_context(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    before = HttpSettings(ca_bundle=str(ca)).ssl_context()
    trustme.CA().cert_pem.write_to_path(str(ca))  # another CA at the same path
    stat = ca.stat()
    os.utime(ca, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    after = HttpSettings(ca_bundle=str(ca)).ssl_context()
    assert after is not before
    assert len(after.get_ca_certs()) >= 1


def test_an_unusable_ca_file_is_an_error_every_time(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    for _ in range(2):
        with pytest.raises(ConfigError) as caught:
            HttpSettings(ca_bundle=str(bad)).ssl_context()
        assert caught.value.code == "ca_bundle_invalid"
    with pytest.raises(ConfigError):
        HttpSettings(ca_bundle=str(tmp_path / "missing.pem")).ssl_context()
