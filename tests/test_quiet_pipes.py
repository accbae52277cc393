"""A reader that leaves: every command stops quietly and exits 0 when its stdout closes.

Issue 24 item 5: `presencectl demo | head -1` printed a traceback per event and exited 1;
`mapping show | head -1`, `status | head -1` and `config show | head -1` exited 1 (typer turns a
closed pipe into exit 1, rich into SystemExit(1)) — breaking `set -o pipefail` scripts. The
pipe here is closed before the command writes its first byte, so every run meets it (a `head`
that leaves later is the same case, met at a later write). The exit status is presencectl's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_into_closed_pipe(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[int, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PRESENCECTL_")},
        "PRESENCECTL_CONFIG_DIR": str(tmp_path / "cfg"),
        "PRESENCECTL_STATE_DIR": str(tmp_path / "state"),
        "PRESENCECTL_SECRETS_BACKEND": "file",
    }
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        done = subprocess.run(
            [sys.executable, "-m", "presencectl", *args],
            stdout=write_end, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, env=env, timeout=timeout,
        )  # fmt: skip
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


def _quiet(stderr: str) -> None:
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr


@pytest.mark.parametrize(
    "args",
    [
        ("mapping", "show"),  # a rich table
        ("mapping", "show", "-o", "json"),  # one JSON document
        ("mapping", "show", "-o", "csv"),
        ("mapping", "show", "-o", "md"),
        ("config", "show"),  # settings table (no profile yet: the defaults)
        ("config", "path"),
        ("status",),
    ],
    ids=lambda a: " ".join(a),
)
def test_a_closed_stdout_ends_a_command_quietly_with_exit_0(
    tmp_path: Path, args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    if args[0] in ("status", "config") and args[-1] != "path":
        # status and config show need a profile: a sandbox-shaped one, written as the CLI does.
        from presencectl.config import Profile, save_profile

        monkeypatch.setenv("PRESENCECTL_CONFIG_DIR", str(tmp_path / "cfg"))
        save_profile(Profile(name="default", tenant_id="contoso.example"))
    code, stderr = run_into_closed_pipe(tmp_path, *args)
    _quiet(stderr)
    assert code == 0, stderr


def test_the_demo_stops_quietly_when_its_plain_lines_reader_leaves(tmp_path: Path) -> None:
    code, stderr = run_into_closed_pipe(tmp_path, "demo", "--duration", "5", "--users", "4")
    _quiet(stderr)
    assert code == 0, stderr


def test_the_demo_stops_quietly_when_its_ndjson_reader_leaves(tmp_path: Path) -> None:
    code, stderr = run_into_closed_pipe(
        tmp_path, "demo", "--duration", "5", "--users", "4", "-o", "json"
    )
    _quiet(stderr)
    assert code == 0, stderr
    assert "sync --watch" not in stderr  # it stopped at the first event, long before the watch
