"""The Windows branch of the one-instance lock (sync/lock.py, ``msvcrt.locking``), run on any OS
against a fake ``msvcrt`` that keeps the semantics the Microsoft CRT documents for ``_locking``:
the region starts at the file's current position and may lie past its end; ``LK_NBLCK`` fails
at once when another handle holds an overlapping region (Python raises ``OSError``); a lock dies
with the handle that holds it. This proves the branch's logic only: it is NOT run on real Windows
(no Windows runner in CI).
"""

from __future__ import annotations

import errno
import os
import sys
import types
from pathlib import Path

import pytest

from presencectl.errors import ConfigError
from presencectl.sync import lock


class FakeMsvcrt(types.ModuleType):
    """msvcrt.locking over byte ranges of a file, held by file descriptors."""

    LK_UNLCK, LK_LOCK, LK_NBLCK, LK_RLCK, LK_NBRLCK = 0, 1, 2, 3, 4

    def __init__(self) -> None:
        super().__init__("msvcrt")
        # (device, inode, offset, nbytes) -> the descriptor holding it, and that file's identity
        self.held: dict[tuple[int, int, int, int], int] = {}
        self.calls: list[tuple[int, int, int]] = []  # (mode, offset, nbytes)

    def closed(self, fd: int) -> None:
        """Windows drops the locks of a handle when it closes (wired to ``os.close``)."""
        for key, holder in list(self.held.items()):
            if holder == fd:
                del self.held[key]

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        st = os.fstat(fd)
        file = (st.st_dev, st.st_ino)
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        self.calls.append((mode, offset, nbytes))
        region = (*file, offset, nbytes)
        if mode == self.LK_UNLCK:
            if self.held.get(region) != fd:
                raise OSError(errno.EACCES, "Permission denied")
            del self.held[region]
            return
        if mode not in (self.LK_NBLCK, self.LK_NBRLCK):
            raise AssertionError("the lock must never wait (LK_LOCK retries for 10 s)")
        for (dev, ino, start, size), _holder in self.held.items():
            overlaps = start < offset + nbytes and offset < start + size
            if (dev, ino) == file and overlaps:
                raise OSError(errno.EACCES, "Permission denied")  # the CRT's locking violation
        self.held[region] = fd


@pytest.fixture
def msvcrt(monkeypatch: pytest.MonkeyPatch) -> FakeMsvcrt:
    import fcntl

    fake = FakeMsvcrt()
    real_close = os.close

    def close(fd: int) -> None:
        fake.closed(fd)
        real_close(fd)

    def no_flock(*_: object) -> None:
        raise AssertionError("the POSIX branch ran")

    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    monkeypatch.setattr(lock.sys, "platform", "win32")
    monkeypatch.setattr(lock.os, "close", close)
    monkeypatch.setattr(fcntl, "flock", no_flock)  # no POSIX lock may stand in
    return fake


def test_a_second_holder_is_refused_and_named_on_windows(
    msvcrt: FakeMsvcrt, tmp_path: Path
) -> None:
    with lock.profile_lock("p", "presencectl sync --watch", tmp_path) as path:
        assert msvcrt.calls == [(msvcrt.LK_NBLCK, lock._WINDOWS_LOCK_OFFSET, 1)]
        # The region lies far past the holder's text, so another process can still read it.
        assert lock.read_holder(path).pid == os.getpid()
        with pytest.raises(ConfigError) as caught, lock.profile_lock("p", "disable", tmp_path):
            pass
        assert caught.value.code == "already_running"
        assert f"PID {os.getpid()}" in caught.value.message
        assert "presencectl sync --watch" in caught.value.message
        assert str(path) in caught.value.hint
        assert lock.read_holder(path).command == "presencectl sync --watch"  # not overwritten
    # The holder's handle closed: the lock went with it, the next one gets it.
    with lock.profile_lock("p", "presencectl sync", tmp_path) as path:
        assert lock.read_holder(path).command == "presencectl sync"
    assert len(msvcrt.calls) == 3


def test_another_profile_is_not_blocked_on_windows(msvcrt: FakeMsvcrt, tmp_path: Path) -> None:
    with lock.profile_lock("a", "sync", tmp_path), lock.profile_lock("b", "sync", tmp_path) as b:
        assert lock.read_holder(b).command == "sync"
