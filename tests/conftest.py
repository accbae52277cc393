"""Shared fixtures: an isolated user environment for every test, the CLI runner, the sandbox.

Every test runs with its own config dir, state dir and an in-memory keyring, and with the
presencectl environment variables cleared, so nothing leaks between tests or from the machine.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keyring
import pytest
from keyring.backend import KeyringBackend


class MemoryKeyring(KeyringBackend):
    """An in-memory keyring backend for tests."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        from keyring.errors import PasswordDeleteError

        if (service, username) not in self.store:
            raise PasswordDeleteError(username)
        del self.store[(service, username)]


# How long the reliability tests run (.ci/run sets them): settings of the test run, not of the
# product, so the isolation below keeps them.
TEST_LENGTH_KNOBS = frozenset({"PRESENCECTL_SOAK_MINUTES", "PRESENCECTL_CRASH_KILLS"})


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryKeyring]:
    for name in list(os.environ):
        if name.startswith("PRESENCECTL_") and name not in TEST_LENGTH_KNOBS:
            monkeypatch.delenv(name)
    monkeypatch.setenv("PRESENCECTL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("PRESENCECTL_STATE_DIR", str(tmp_path / "state"))
    backend = MemoryKeyring()
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    from fakes import fresh_secrets_process

    fresh_secrets_process(monkeypatch)  # the one-time fallback warning, a failed keyring: per test
    yield backend
    keyring.set_keyring(previous)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def cli() -> Any:
    """Run `presencectl ARGS…` in-process through the real entry point (error boundary included).

    Returns CliResult(exit_code, stdout, stderr). ``input`` feeds stdin (not a TTY, so the
    command behaves as in CI: no prompts).
    """
    from presencectl.cli.app import run

    def invoke(*args: str, input: str = "") -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        old_stdin = sys.stdin
        sys.stdin = io.StringIO(input)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                code = run([str(a) for a in args])
        finally:
            sys.stdin = old_stdin
        return CliResult(code, out.getvalue(), err.getvalue())

    return invoke


# --- the sandbox (presencectl.sandbox) ----------------------------------------------------------


@pytest.fixture
def sandbox() -> Iterator[Any]:
    """A fresh sandbox (25 people, seed 1) served over HTTPS on loopback for one test."""
    from presencectl.sandbox import running_sandbox

    with running_sandbox() as sb:
        yield sb


@pytest.fixture
def sandbox_profile(sandbox: Any) -> Any:
    """The profile ``sandbox`` written for the running sandbox (Connect secret in the keyring)."""
    return sandbox.write_profile("sandbox")


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port this test holds bound and never listens on: a connection to it is
    refused, and no other process can take the port while the test runs (a port bound and
    closed again could be anyone's by the time it is used)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
