"""What goes wrong with the state database, said clearly: ``state_unavailable`` (exit 3).

Owns :func:`state_unavailable` (an OS or SQLite failure to open, read, write or migrate the
database → one error naming the path, what happened and the remedy that fits: a damaged file,
a path that is not a directory, no permission or a read-only file system, a full disk) and
:func:`inspect` (``doctor``'s check: opens the database read-only and runs ``PRAGMA
quick_check``, changing nothing).

Also owns :func:`open_private` (issue 26): the lock and the database are opened without
following a symlink (``O_NOFOLLOW``), checked with ``fstat`` to be a regular file of the
effective user, in a state directory of the effective user — a command run as root against a
directory another account can write is refused (``state_unavailable``), never redirected.

A damaged database is never repaired or replaced behind the admin's back: it may still tell
``disable`` which sessions are ours. Moving it away is safe since the engine adopts pairs
without state (``sync/adopt.py``) and ``disable`` sweeps from the directory when it has none.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from presencectl.errors import ConfigError

MOVE_AWAY = (
    "move it away (`mv {path} {path}.damaged`) and run again: the next sync clears our sessions "
    "before it reads (every user adopted), and `disable` sweeps every matched user"
)


def remedy(path: Path, exc: BaseException) -> str:
    """What to do about ``exc`` hitting the state file ``path`` (or the lock file next to it)."""
    text = str(exc).lower()
    code = getattr(exc, "errno", None)
    if "not a database" in text or "malformed" in text or "file is encrypted" in text:
        return "the file is damaged: " + MOVE_AWAY.format(path=path)
    if "disk is full" in text or code == errno.ENOSPC:
        return f"free space on the file system of {path.parent}, then run again"
    if code in (errno.ENOTDIR, errno.EEXIST) or "not a directory" in text:
        return (
            f"{path.parent} (or a parent of it) is not a directory: remove or rename that file, "
            "or point PRESENCECTL_STATE_DIR at a directory"
        )
    return (
        f"make {path.parent} and the files in it writable by this user (or the file system "
        "read-write), or point PRESENCECTL_STATE_DIR at a directory that is"
    )


def state_unavailable(path: Path, exc: BaseException, doing: str = "use") -> ConfigError:
    """The one error for a state database the tool cannot ``doing`` (open, read, write…)."""
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return ConfigError(
        f"cannot {doing} the state database {path}: {detail}",
        hint=remedy(path, exc),
        code="state_unavailable",
    )


def _refuse(path: Path, what: str, hint: str) -> ConfigError:
    return ConfigError(f"refusing to use {path}: {what}", hint=hint, code="state_unavailable")


def check_state_dir(directory: Path) -> None:
    """The state directory must belong to the effective user (POSIX; nothing to check on
    Windows): another account that owns it could swap our files for links to anything."""
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None:
        return
    st = os.stat(directory)
    if st.st_uid != geteuid():
        raise _refuse(
            directory,
            f"the state directory is owned by uid {st.st_uid}, not by this user (uid {geteuid()})",
            "run the command as the account that owns it, or point PRESENCECTL_STATE_DIR at a "
            "directory of this user",
        )


def open_private(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """A descriptor of ``path`` (created 0600), never through a symlink, checked by fstat to be a
    regular file of the effective user, in a directory of the effective user. OSError when the
    system refuses (the caller words it); ConfigError (state_unavailable) for a link, a file that
    is not ours, or a directory that is not ours."""
    check_state_dir(path.parent)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | nofollow | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (nofollow and path.is_symlink()):
            raise _refuse(
                path, "it is a symbolic link", f"remove the link ({path}) and run again"
            ) from exc
        raise
    try:
        st = os.fstat(fd)
        geteuid = getattr(os, "geteuid", None)
        import stat

        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "it is not a regular file", f"remove {path} and run again")
        if geteuid is not None and st.st_uid != geteuid():
            raise _refuse(
                path,
                f"it is owned by uid {st.st_uid}, not by this user (uid {geteuid()})",
                "run the command as the account that owns it, or remove the file",
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def inspect(path: Path, schema_version: int) -> tuple[str | None, str]:
    """``(problem, remedy)`` of the database at ``path`` (``problem`` None: healthy or absent).

    Read-only: opens with ``mode=ro``, runs ``PRAGMA quick_check``, reads the schema version, and
    checks that the file and its directory are writable for the sync."""
    directory = path.parent
    probe = _existing_ancestor(path)
    if not probe.is_dir():
        exc = OSError(errno.ENOTDIR, "not a directory")
        return f"{probe} is not a directory", remedy(path, exc)
    if not path.exists():
        if not os.access(probe, os.W_OK | os.X_OK):
            return f"{probe} is not writable: the first sync cannot create {path}", remedy(
                path, PermissionError(errno.EACCES, "permission denied")
            )
        return None, ""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error as exc:
        return f"{path}: {exc}", remedy(path, exc)
    if verdict != "ok":
        return f"{path}: quick_check says {verdict}", "the file is damaged: " + MOVE_AWAY.format(
            path=path
        )
    if version > schema_version:
        return (
            f"{path} has schema version {version}, newer than this presencectl understands",
            "upgrade presencectl",
        )
    if not os.access(path, os.W_OK) or not os.access(directory, os.W_OK | os.X_OK):
        return f"{path} is not writable", remedy(
            path, PermissionError(errno.EACCES, "permission denied")
        )
    return None, ""


def _existing_ancestor(path: Path) -> Path:
    """The nearest parent of ``path`` that exists (a directory, or the file in the way)."""
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(path.anchor or ".")


__all__ = ["inspect", "remedy", "state_unavailable"]
