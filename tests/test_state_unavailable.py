"""State problems are clear: a damaged, misplaced, read-only or full state database is
``state_unavailable`` (exit 3) naming the path and the remedy — for sync, disable, status and
doctor — never an "unexpected DatabaseError"."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_engine_sandbox import ADMIN, Org

from presencectl.sync.state import StateStore, database_path

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def org(cli: Any) -> Iterator[Org]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=12, seed=5, auto_approve=ADMIN) as sb:
        o = Org(sb, cli)
        assert o.run("enable").exit_code == 0
        yield o
    # The in-process CLI leaves msal's HTTP sessions to the collector; collect them here, not
    # inside a later test that turns warnings into errors (tests/test_sandbox_serve.py).
    gc.collect()


def _refused(result: Any, path: Path | str) -> dict[str, str]:
    assert result.exit_code == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "unexpected" not in result.stdout
    error: dict[str, str] = result.json()["error"]
    assert error["code"] == "state_unavailable", error
    assert str(path) in error["message"], error
    return error


def test_a_damaged_database_is_named_with_its_remedy_everywhere(org: Org) -> None:
    assert org.sync().exit_code == 0
    path = database_path("sandbox")
    path.write_bytes(b"this is not SQLite at all " * 400)  # a damaged file
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)

    for command in (["sync"], ["sync", "--watch", "--max-cycles", "1"], ["disable", "--yes"],
                    ["status"]):  # fmt: skip
        error = _refused(org.run("-o", "json", *command), path)
        assert "damaged" in error["hint"] and "mv " in error["hint"], error

    doctor = org.run("-o", "json", "doctor")
    assert doctor.exit_code == 3, doctor.stdout
    check = next(c for c in doctor.json()["checks"] if c["name"] == "State database")
    assert check["status"] == "fail" and check["code"] == "state_unavailable"
    assert str(path) in check["detail"] and "damaged" in check["remedy"]

    path.rename(path.with_name("sandbox.db.damaged"))  # the remedy, followed literally
    assert org.run("-o", "json", "sync").exit_code == 0
    doctor = org.run("-o", "json", "doctor")
    check = next(c for c in doctor.json()["checks"] if c["name"] == "State database")
    assert check["status"] == "ok", check


def test_a_state_dir_that_is_a_file_is_refused(
    org: Org, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state dir should be")
    monkeypatch.setenv("PRESENCECTL_STATE_DIR", str(blocker))
    error = _refused(org.run("-o", "json", "sync"), blocker)
    assert "not a directory" in error["hint"]
    doctor = org.run("-o", "json", "doctor")
    check = next(c for c in doctor.json()["checks"] if c["name"] == "State database")
    assert check["status"] == "fail" and doctor.exit_code == 3


def test_a_database_in_a_non_directory_fails_to_open_clearly(tmp_path: Path) -> None:
    from presencectl.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as caught:
        StateStore(blocker / "p.db")
    assert caught.value.code == "state_unavailable" and str(blocker) in caught.value.message


def test_a_read_only_state_dir_is_refused(org: Org, cli: Any, tmp_path: Path) -> None:
    """A state dir its user cannot write. File modes do not bind root (CI runs as root), so as
    root the sync runs as a child process that gave up the capabilities letting root write
    through them: the kernel refuses it exactly as it refuses any service user."""
    assert org.sync().exit_code == 0
    path = database_path("sandbox")
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    run = _without_root_overrides(tmp_path) if as_root else cli
    os.chmod(path, 0o400)
    os.chmod(path.parent, 0o500)
    try:
        error = _refused(run("-o", "json", "sync"), path.parent)
        assert "writable" in error["hint"]
    finally:
        os.chmod(path.parent, 0o700)
        os.chmod(path, 0o600)


# Linux capabilities (linux/capability.h) that let root ignore file modes and ownership, and
# prctl's PR_CAPBSET_DROP: once dropped from the bounding set, the next exec cannot have them.
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 1, 2, 3
_PR_CAPBSET_DROP = 24


def _without_root_overrides(tmp_path: Path) -> Any:
    """A ``cli``-like runner: ``presencectl ARGS…`` as a child process of root that file modes
    bind (the capabilities above dropped before exec), its secrets in the environment as CI
    passes them (the test keyring lives in this process only)."""
    import ctypes
    import subprocess
    import sys

    from conftest import CliResult

    from presencectl import secrets

    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:  # in the child, between fork and exec
        for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER):
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    env = {**os.environ, "PRESENCECTL_SECRETS_BACKEND": "file"}
    for name, var in secrets.ENV_VARS.items():
        value = secrets.get_secret("sandbox", name)
        if value:
            env[var] = value

    def spawn(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, env=env,
            preexec_fn=drop, timeout=120,
        )  # fmt: skip

    # The child really is bound by file modes: it cannot create a file in a 0500 directory.
    guarded = tmp_path / "guarded"
    guarded.mkdir(mode=0o500)
    probe = spawn("-c", f"open({str(guarded / 'x')!r}, 'w')")
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr
    guarded.chmod(0o700)

    def invoke(*args: str) -> Any:
        done = spawn("-m", "presencectl", "--profile", "sandbox", "--no-input", *args)
        return CliResult(done.returncode, done.stdout, done.stderr)

    return invoke


def test_a_full_disk_while_writing_is_state_unavailable(tmp_path: Path) -> None:
    """SQLITE_FULL, as a full disk gives it: the database may not grow past its page limit."""
    from presencectl.errors import ConfigError
    from presencectl.sync.model import UserPair

    path = tmp_path / "full.db"
    store = StateStore(path)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    pairs = [UserPair(f"a{i}:c{i}", f"a{i}", f"c{i}", f"user{i}@example.com") for i in range(5000)]
    with pytest.raises(ConfigError) as caught:
        store.replace_pairs(pairs, now=1.0)
    assert caught.value.code == "state_unavailable"
    assert str(path) in caught.value.message and "free space" in caught.value.hint
    assert store.pair_count() == 0  # the transaction rolled back: nothing half-written
    store.close()
