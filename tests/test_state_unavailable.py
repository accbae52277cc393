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


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through file modes"
)
def test_a_read_only_state_dir_is_refused(org: Org) -> None:
    assert org.sync().exit_code == 0
    path = database_path("sandbox")
    os.chmod(path, 0o400)
    os.chmod(path.parent, 0o500)
    try:
        error = _refused(org.run("-o", "json", "sync"), path.parent)
        assert "writable" in error["hint"]
    finally:
        os.chmod(path.parent, 0o700)
        os.chmod(path, 0o600)


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
