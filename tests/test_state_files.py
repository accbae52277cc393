"""The lock and the state database cannot be redirected (issue 26): opened without following a
symlink (O_NOFOLLOW), checked with fstat to be a regular file of the effective user, in a state
directory of the effective user — otherwise ``state_unavailable`` (exit 3), nothing written.

The ownership tests need root to give a file or directory to another uid (CI runs as root)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from presencectl import config
from presencectl.errors import ConfigError
from presencectl.sync.lock import lock_path, profile_lock
from presencectl.sync.state import StateStore, database_path

as_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another uid needs root"
)
OTHER_UID = 54321


def _state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "st"
    directory.mkdir(mode=0o700)
    return directory


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    directory = _state_dir(tmp_path)
    victim = tmp_path / "victim.conf"
    victim.write_text("precious\n")
    lock_path("p", directory).symlink_to(victim)
    with pytest.raises(ConfigError) as caught, profile_lock("p", "sync", directory):
        pass
    assert caught.value.code == "state_unavailable" and caught.value.exit_code == 3
    assert "symbolic link" in caught.value.message
    assert victim.read_text() == "precious\n"  # main wrote the holder JSON over it


def test_a_database_through_a_dangling_symlink_is_not_created(tmp_path: Path) -> None:
    directory = _state_dir(tmp_path)
    target = tmp_path / "elsewhere.db"
    database_path("p", directory).symlink_to(target)
    with pytest.raises(ConfigError) as caught:
        StateStore.for_profile("p", directory)
    assert caught.value.code == "state_unavailable" and "symbolic link" in caught.value.message
    assert not target.exists()  # main created it through the link


def test_a_database_symlinked_to_a_file_leaves_the_file_alone(tmp_path: Path) -> None:
    directory = _state_dir(tmp_path)
    target = tmp_path / "shadow"
    target.write_bytes(b"")  # empty: SQLite would happily make it a database
    os.chmod(target, 0o644)
    database_path("p", directory).symlink_to(target)
    with pytest.raises(ConfigError):
        StateStore.for_profile("p", directory)
    assert target.read_bytes() == b"" and stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_wal_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    directory = _state_dir(tmp_path)
    StateStore.for_profile("p", directory).close()
    wal = database_path("p", directory).with_name("p.db-wal")
    wal.unlink(missing_ok=True)
    wal.symlink_to(tmp_path / "elsewhere-wal")
    with pytest.raises(ConfigError, match="symbolic link"):
        StateStore.for_profile("p", directory)
    assert not (tmp_path / "elsewhere-wal").exists()


def test_own_files_still_open(tmp_path: Path) -> None:
    directory = _state_dir(tmp_path)
    with StateStore.for_profile("p", directory):
        pass
    path = database_path("p", directory)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with profile_lock("p", "sync", directory) as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()


@as_root
def test_a_state_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    directory = _state_dir(tmp_path)
    os.chown(directory, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError) as caught:
        StateStore.for_profile("p", directory)
    assert caught.value.code == "state_unavailable" and caught.value.exit_code == 3
    assert f"owned by uid {OTHER_UID}" in caught.value.message
    assert "PRESENCECTL_STATE_DIR" in (caught.value.hint or "")
    with pytest.raises(ConfigError, match=f"uid {OTHER_UID}"), profile_lock("p", "x", directory):
        pass
    assert list(directory.iterdir()) == []  # nothing created in it


@as_root
def test_a_database_file_of_another_user_is_refused(tmp_path: Path) -> None:
    directory = _state_dir(tmp_path)
    StateStore.for_profile("p", directory).close()
    os.chown(database_path("p", directory), OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match=f"owned by uid {OTHER_UID}"):
        StateStore.for_profile("p", directory)


@as_root
def test_the_cli_says_so_with_exit_3(cli: Any) -> None:
    config.save_profile(config.Profile(name="p", tenant_id="contoso.onmicrosoft.com"))
    StateStore.for_profile("p").close()  # a state `status` reads
    directory = config.state_dir()
    os.chown(directory, OTHER_UID, OTHER_UID)
    result = cli("--profile", "p", "-o", "json", "status")
    assert result.exit_code == 3, result.stdout + result.stderr
    error = result.json()["error"]
    assert error["code"] == "state_unavailable" and f"uid {OTHER_UID}" in error["message"]
    assert "Traceback" not in result.stderr
