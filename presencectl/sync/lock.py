"""One instance per profile: an exclusive OS file lock next to the profile's state database.

Owns ``state_dir()/<profile>.lock`` and :func:`profile_lock`. ``sync`` (one-shot and ``--watch``)
and ``disable`` hold it for their whole life; a second one fails at once with
``already_running`` (exit 3) naming the PID and the command of the holder, which the holder
writes into the file right after it got the lock.

The lock is the operating system's (``flock`` on POSIX, ``msvcrt.locking`` on Windows), not the
file's existence or its PID: the kernel drops it when the holding process ends, however it ends
(``kill -9``, a crash, a container stop), so a lock left behind never blocks. The file itself
stays (deleting it would race with a newcomer locking it) and holds the last holder's details.
``flock`` locks belong to the open file, so two opens in one process exclude each other too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from presencectl.errors import ConfigError

_WINDOWS_LOCK_OFFSET = 1 << 30  # lock a byte far past the text so that others can still read it


@dataclass(frozen=True)
class Holder:
    """Who holds a profile's lock, as it wrote itself into the lock file."""

    pid: int | None
    command: str | None
    since: str | None

    def describe(self) -> str:
        pid = f"PID {self.pid}" if self.pid is not None else "a process (PID not yet written)"
        parts = [pid]
        if self.command:
            parts.append(f"`{self.command}`")
        if self.since:
            parts.append(f"since {self.since}")
        return ", ".join(parts)


def lock_path(profile_name: str, directory: Path | None = None) -> Path:
    """The lock file of a profile: next to its state database, same name, ``.lock``."""
    from presencectl.sync.state import database_path

    return database_path(profile_name, directory).with_suffix(".lock")


def read_holder(path: Path) -> Holder:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    pid = data.get("pid")
    return Holder(
        pid if isinstance(pid, int) else None,
        str(data["command"]) if data.get("command") else None,
        str(data["since"]) if data.get("since") else None,
    )


@contextlib.contextmanager
def profile_lock(profile_name: str, command: str, directory: Path | None = None) -> Iterator[Path]:
    """Hold the profile's lock for the ``with`` block, or raise ``already_running`` (exit 3)."""
    path = lock_path(profile_name, directory)
    from presencectl.sync.state_health import open_private

    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Never through a symlink, and only a file of ours (issue 26): the holder JSON written
        # below must not land in a file someone pointed the lock at.
        fd = open_private(path)
    except OSError as exc:
        from presencectl.sync.state_health import remedy

        raise ConfigError(
            f"cannot create the lock file {path}: {exc.strerror or exc}",
            hint=remedy(path, exc),
            code="state_unavailable",
        ) from exc
    try:
        if not _try_lock(fd):
            holder = read_holder(path)
            raise ConfigError(
                f"profile '{profile_name}' is already in use by {holder.describe()}",
                hint="only one sync or disable may run per profile: stop the other one first "
                f"(e.g. `kill {holder.pid or 'PID'}`) or wait for it to end; the lock "
                f"({path}) is released when that process exits, however it exits",
                code="already_running",
            )
        _write_holder(fd, command)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # tests/test_lock_windows.py: a fake msvcrt; not run on Windows
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_holder(fd: int, command: str) -> None:
    text = json.dumps(
        {
            "pid": os.getpid(),
            "command": command,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, text.encode("utf-8"))


__all__ = ["Holder", "lock_path", "profile_lock", "read_holder"]
