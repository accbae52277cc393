"""The sync engine's memory: one SQLite database per profile, in the user state dir.

Owns ``state_dir()/<profile>.db`` (dir 0700, file 0600): the matched pairs, the last observation
and the genuine state of each side, the sessions we hold on each side (with their expiry), the
writes of ours still pending (not yet seen echoed), the change-feed subscriptions, run metadata
(last sync, counts) and an append-only audit log of every write we attempted.

Crash safety: the database runs in WAL mode with ``synchronous=NORMAL``; every method that
changes more than one row does it in one transaction, so a ``kill -9`` at any point leaves either
the state before or the state after. The engine saves the *planned* pair states (our sessions and
pending writes as if every write succeeded) before it sends a batch, and the real outcome after;
a restart after a crash between the two treats those writes as possibly applied: their echo is
recognised, ``disable`` finds the sessions, and a write that never landed is re-asserted by the
planner (the side shows less than our session forces) — nothing lost, nothing repeated blindly.

Schema versions are numbered by ``PRAGMA user_version``; ``_MIGRATIONS[i]`` takes version ``i``
to ``i + 1``. Bulk paths use ``executemany`` (50,000 pairs save in well under a second).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from presencectl.errors import ConfigError
from presencectl.sync.model import (
    Observation,
    PairState,
    PendingWrite,
    SessionRecord,
    Side,
    UserPair,
    decode_value,
    encode_value,
)
from presencectl.sync.state_health import open_private, state_unavailable

log = logging.getLogger(__name__)

SIDES = ("teams", "connect")

_MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the first schema.
    """
    CREATE TABLE pairs (
        key TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        azure_id TEXT NOT NULL,
        connect_id TEXT NOT NULL,
        display_name TEXT,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE TABLE observations (
        key TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('teams', 'connect')),
        value TEXT NOT NULL,
        observed_at REAL NOT NULL,
        PRIMARY KEY (key, side)
    ) WITHOUT ROWID;
    CREATE TABLE genuine (
        key TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('teams', 'connect')),
        value TEXT,
        since REAL,
        PRIMARY KEY (key, side)
    ) WITHOUT ROWID;
    CREATE TABLE sessions (
        key TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('teams', 'connect')),
        user_id TEXT NOT NULL,
        value TEXT NOT NULL,
        written_at REAL NOT NULL,
        expires_at REAL,
        masked_by TEXT,
        PRIMARY KEY (key, side)
    ) WITHOUT ROWID;
    CREATE INDEX sessions_expiry ON sessions (expires_at);
    CREATE TABLE pending_writes (
        key TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('teams', 'connect')),
        seq INTEGER NOT NULL,
        value TEXT,
        previous TEXT,
        written_at REAL NOT NULL,
        PRIMARY KEY (key, side, seq)
    ) WITHOUT ROWID;
    CREATE TABLE subscriptions (
        id TEXT PRIMARY KEY,
        side TEXT NOT NULL,
        resource TEXT,
        created_at REAL NOT NULL,
        expires_at REAL,
        detail TEXT
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at REAL NOT NULL,
        finished_at REAL,
        mode TEXT NOT NULL,
        direction TEXT NOT NULL,
        dry_run INTEGER NOT NULL DEFAULT 0,
        cycles INTEGER NOT NULL DEFAULT 0,
        matched INTEGER NOT NULL DEFAULT 0,
        read INTEGER NOT NULL DEFAULT 0,
        written INTEGER NOT NULL DEFAULT 0,
        cleared INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        throttle_wait REAL NOT NULL DEFAULT 0,
        outcome TEXT
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        key TEXT,
        user TEXT,
        side TEXT NOT NULL,
        user_id TEXT,
        action TEXT NOT NULL,
        from_value TEXT,
        to_value TEXT,
        reason TEXT,
        outcome TEXT NOT NULL,
        error TEXT
    );
    CREATE INDEX audit_at ON audit (at);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    """,
    # 1 -> 2: pairs the planner found settled (its steady-state fast path), by decision context.
    """
    CREATE TABLE settled (key TEXT PRIMARY KEY, context TEXT NOT NULL);
    """,
    # 2 -> 3: which sync user of the pool owns a Graph presence subscription (NULL: a database
    # from before the pool, whose one sync user owned them all).
    """
    ALTER TABLE subscriptions ADD COLUMN owner TEXT;
    """,
)

SCHEMA_VERSION = len(_MIGRATIONS)
_PER_PAIR_TABLES = ("observations", "genuine", "sessions", "pending_writes", "settled")
_CONTEXT_SEP = "\x1f"


@dataclass(frozen=True)
class HeldSession:
    """A session of ours on one side, as ``disable`` and ``status`` need it."""

    key: str
    side: Side
    user_id: str
    value: str
    written_at: float
    expires_at: float | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One attempted write, as the audit log keeps it."""

    at: float
    side: str
    action: str  # "set" | "clear"
    to_value: str | None
    outcome: str  # "ok" | "failed" | "gone"
    key: str | None = None
    user: str | None = None
    user_id: str | None = None
    from_value: str | None = None
    reason: str | None = None
    error: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class SubscriptionRow:
    id: str
    side: str
    created_at: float
    expires_at: float | None = None
    resource: str | None = None
    detail: dict[str, Any] | None = None
    owner: str | None = None  # the sync user whose token created it (Graph side)


@dataclass
class RunCounts:
    """What a run did; the CLI's summary and ``status`` read it."""

    cycles: int = 0
    matched: int = 0
    read: int = 0
    written: int = 0
    cleared: int = 0
    skipped: int = 0
    failed: int = 0
    throttle_wait: float = 0.0


@dataclass(frozen=True)
class RunRow:
    id: int
    started_at: float
    finished_at: float | None
    mode: str
    direction: str
    dry_run: bool
    counts: RunCounts = field(default_factory=RunCounts)
    outcome: str | None = None


def side_user_id(key: str, side: Side) -> str:
    """The user id on ``side`` encoded in a pair key (``azure_id:connect_id``)."""
    azure_id, _, connect_id = key.partition(":")
    return azure_id if side is Side.TEAMS else connect_id


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _dt_required(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def database_path(profile_name: str, directory: Path | None = None) -> Path:
    """Where the profile's state lives: ``state_dir()/<profile>.db``."""
    from presencectl.config import check_profile_name, state_dir

    if directory is None:
        directory = state_dir()
    # The name is the file name as it is: two profiles never share a database (issue 26).
    return directory / f"{check_profile_name(profile_name)}.db"


class StateStore:
    """The per-profile state database. Use as a context manager, or call ``close()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._open(path)
        except (OSError, sqlite3.Error) as exc:  # damaged, not a directory, read-only, full
            with suppress(Exception):
                self._db.close()
            raise state_unavailable(path, exc, "open") from exc

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with suppress(OSError):  # a shared dir we do not own: leave it
            os.chmod(path.parent, 0o700)
        # Created 0600 here, never through a symlink, and only a regular file of ours in a
        # directory of ours (state_health.open_private; issue 26). SQLite then opens the same
        # name: in a directory only we can write, nobody can swap it in between; its -wal and
        # -shm files must not be links either.
        os.close(open_private(path))
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.is_symlink():
                raise ConfigError(
                    f"refusing to use {side}: it is a symbolic link",
                    hint=f"remove the link ({side}) and run again",
                    code="state_unavailable",
                )
        self._db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    @classmethod
    def for_profile(cls, profile_name: str, directory: Path | None = None) -> StateStore:
        return cls(database_path(profile_name, directory))

    # -- plumbing -------------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit: everything inside commits together or not at all.

        A failure of SQLite itself (disk full, read-only, damaged) is ``state_unavailable``."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                with suppress(sqlite3.Error):  # a failed statement may have rolled back already
                    self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise state_unavailable(self.path, exc, "write") from exc

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"the state database {self.path} has schema version {version}, newer than this "
                f"presencectl understands ({SCHEMA_VERSION})",
                hint="upgrade presencectl, or move the file away to start from scratch",
                code="state_too_new",
            )
        for target in range(version, SCHEMA_VERSION):
            log.info("migrating state %s to schema %d", self.path, target + 1)
            with self.transaction() as db:
                for statement in _split_sql(_MIGRATIONS[target]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {target + 1}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # -- meta -----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        with self.transaction() as db:
            _set_meta(db, key, value)

    def meta_items(self, prefix: str) -> list[tuple[str, str]]:
        """Every (key, value) of the meta table whose key starts with ``prefix``."""
        rows = self._db.execute(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        )
        return [(str(k), str(v)) for k, v in rows]

    # -- pairs ----------------------------------------------------------------------------------

    def replace_pairs(self, pairs: Sequence[UserPair], now: float) -> list[str]:
        """Make the stored pairs exactly ``pairs``. Returns the keys that were dropped.

        A dropped pair loses its observations, genuine states and pending writes, but keeps
        its sessions: the engine clears those (and ``disable`` finds them meanwhile)."""
        with self.transaction() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (key TEXT PRIMARY KEY)")
            db.execute("DELETE FROM keep")
            db.executemany("INSERT OR IGNORE INTO keep VALUES (?)", ((p.key,) for p in pairs))
            dropped = [
                str(r[0])
                for r in db.execute("SELECT key FROM pairs WHERE key NOT IN (SELECT key FROM keep)")
            ]
            for table in ("pairs", "observations", "genuine", "pending_writes"):
                db.execute(f"DELETE FROM {table} WHERE key NOT IN (SELECT key FROM keep)")
            db.executemany(
                "INSERT INTO pairs (key, email, azure_id, connect_id, display_name, first_seen,"
                " last_seen) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET email=excluded.email, azure_id=excluded.azure_id,"
                " connect_id=excluded.connect_id, display_name=excluded.display_name,"
                " last_seen=excluded.last_seen",
                (
                    (p.key, p.email, p.azure_id, p.connect_id, p.display_name, now, now)
                    for p in pairs
                ),
            )
            db.execute("DELETE FROM keep")
        return dropped

    def pairs(self) -> list[UserPair]:
        rows = self._db.execute(
            "SELECT key, azure_id, connect_id, email, display_name FROM pairs ORDER BY email"
        )
        return [UserPair(k, a, c, e, d or "") for k, a, c, e, d in rows]

    def pair_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM pairs").fetchone()[0])

    # -- pair states ------------------------------------------------------------------------------

    def load_states(self) -> dict[str, PairState]:
        """Every remembered ``PairState`` by key (unmatched pairs still holding a session too)."""
        parts: dict[str, dict[str, Any]] = {}

        def part(key: str) -> dict[str, Any]:
            return parts.setdefault(key, {})

        for key, side_text, value, at in self._db.execute(
            "SELECT key, side, value, observed_at FROM observations"
        ):
            side = Side(side_text)
            decoded = decode_value(side, value)
            if decoded is not None:
                part(key)["last_" + side.value] = Observation(side, decoded, _dt_required(at))
        for key, side_text, value, since in self._db.execute(
            "SELECT key, side, value, since FROM genuine"
        ):
            side = Side(side_text)
            part(key)["genuine_" + side.value] = decode_value(side, value)
            part(key)[f"genuine_{side.value}_at"] = _dt(since)
        for key, side_text, value, written, expires, masked in self._db.execute(
            "SELECT key, side, value, written_at, expires_at, masked_by FROM sessions"
        ):
            side = Side(side_text)
            decoded = decode_value(side, value)
            if decoded is not None:
                part(key)[f"our_{side.value}_session"] = SessionRecord(
                    side, decoded, _dt_required(written), _dt(expires), decode_value(side, masked)
                )
        pending: dict[tuple[str, Side], list[PendingWrite]] = {}
        for key, side_text, value, previous, written in self._db.execute(
            "SELECT key, side, value, previous, written_at FROM pending_writes"
            " ORDER BY key, side, seq"
        ):
            side = Side(side_text)
            pending.setdefault((key, side), []).append(
                PendingWrite(
                    side,
                    decode_value(side, value),
                    decode_value(side, previous),
                    _dt_required(written),
                )
            )
        for (key, side), writes in pending.items():
            part(key)["pending_" + side.value] = tuple(writes)
        for key, context in self._db.execute("SELECT key, context FROM settled"):
            fingerprint, _, direction = context.partition(_CONTEXT_SEP)
            part(key)["settled"] = (fingerprint, direction)
        return {key: PairState(key=key, **fields_) for key, fields_ in parts.items()}

    def save_states(
        self,
        states: Iterable[PairState],
        *,
        audit: Iterable[AuditEntry] = (),
        run: tuple[int, RunCounts] | None = None,
        meta: Mapping[str, str | None] | None = None,
        forget: Iterable[str] = (),
    ) -> None:
        """Replace the stored state of each given pair, append ``audit``, update the run —
        all in one transaction. ``forget`` drops every row of those keys (sessions included)."""
        items = list(states)
        keys = [(s.key,) for s in items] + [(k,) for k in forget]
        with self.transaction() as db:
            for table in _PER_PAIR_TABLES:
                db.executemany(f"DELETE FROM {table} WHERE key = ?", keys)
            db.executemany(
                "INSERT INTO observations (key, side, value, observed_at) VALUES (?, ?, ?, ?)",
                (
                    (st.key, obs.side.value, encode_value(obs.value), obs.observed_at.timestamp())
                    for st in items
                    for obs in (st.last_teams, st.last_connect)
                    if obs is not None
                ),
            )
            db.executemany(
                "INSERT INTO genuine (key, side, value, since) VALUES (?, ?, ?, ?)",
                (
                    (st.key, side.value, encode_value(value), _ts(since))
                    for st in items
                    for side, value, since in (
                        (Side.TEAMS, st.genuine_teams, st.genuine_teams_at),
                        (Side.CONNECT, st.genuine_connect, st.genuine_connect_at),
                    )
                    if value is not None or since is not None
                ),
            )
            db.executemany(
                "INSERT INTO sessions"
                " (key, side, user_id, value, written_at, expires_at, masked_by)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        st.key,
                        ses.side.value,
                        side_user_id(st.key, ses.side),
                        encode_value(ses.value),
                        ses.written_at.timestamp(),
                        _ts(ses.expires_at),
                        encode_value(ses.masked_by),
                    )
                    for st in items
                    for ses in st.sessions()
                ),
            )
            db.executemany(
                "INSERT INTO pending_writes (key, side, seq, value, previous, written_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (
                        st.key,
                        pw.side.value,
                        seq,
                        encode_value(pw.value),
                        encode_value(pw.previous),
                        pw.written_at.timestamp(),
                    )
                    for st in items
                    for writes in (st.pending_teams, st.pending_connect)
                    for seq, pw in enumerate(writes)
                ),
            )
            db.executemany(
                "INSERT INTO settled (key, context) VALUES (?, ?)",
                ((st.key, _CONTEXT_SEP.join(st.settled)) for st in items if st.settled is not None),
            )
            _insert_audit(db, audit)
            if run is not None:
                _update_run(db, *run)
            for key, value in (meta or {}).items():
                _set_meta(db, key, value)

    # -- sessions -------------------------------------------------------------------------------

    def sessions(self, side: Side | None = None) -> list[HeldSession]:
        """Every session we hold (or may hold: written, outcome not yet recorded)."""
        sql = "SELECT key, side, user_id, value, written_at, expires_at FROM sessions"
        args: tuple[str, ...] = ()
        if side is not None:
            sql += " WHERE side = ?"
            args = (side.value,)
        return [
            HeldSession(k, Side(s), u, v, w, e)
            for k, s, u, v, w, e in self._db.execute(sql + " ORDER BY key, side", args)
        ]

    def session_count(self) -> dict[str, int]:
        counts = dict.fromkeys(SIDES, 0)
        for side, n in self._db.execute("SELECT side, count(*) FROM sessions GROUP BY side"):
            counts[side] = int(n)
        return counts

    def next_expiries(self, limit: int = 5) -> list[HeldSession]:
        rows = self._db.execute(
            "SELECT key, side, user_id, value, written_at, expires_at FROM sessions"
            " WHERE expires_at IS NOT NULL ORDER BY expires_at LIMIT ?",
            (limit,),
        )
        return [HeldSession(k, Side(s), u, v, w, e) for k, s, u, v, w, e in rows]

    def forget_sessions(self, keys: Iterable[tuple[str, Side]]) -> None:
        """Drop sessions (and pending writes) known to be gone from their side."""
        items = [(k, s.value) for k, s in keys]
        with self.transaction() as db:
            db.executemany("DELETE FROM sessions WHERE key = ? AND side = ?", items)
            db.executemany("DELETE FROM pending_writes WHERE key = ? AND side = ?", items)

    # -- subscriptions --------------------------------------------------------------------------

    def save_subscription(self, sub: SubscriptionRow) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO subscriptions"
                " (id, side, resource, created_at, expires_at, detail, owner)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    sub.id,
                    sub.side,
                    sub.resource,
                    sub.created_at,
                    sub.expires_at,
                    json.dumps(sub.detail) if sub.detail else None,
                    sub.owner,
                ),
            )

    def subscriptions(self) -> list[SubscriptionRow]:
        rows = self._db.execute(
            "SELECT id, side, created_at, expires_at, resource, detail, owner FROM subscriptions"
            " ORDER BY created_at"
        )
        return [
            SubscriptionRow(i, s, c, e, r, json.loads(d) if d else None, o)
            for i, s, c, e, r, d, o in rows
        ]

    def delete_subscription(self, sub_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))

    # -- runs -----------------------------------------------------------------------------------

    def start_run(self, *, mode: str, direction: str, dry_run: bool, now: float) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (started_at, mode, direction, dry_run) VALUES (?, ?, ?, ?)",
                (now, mode, direction, int(dry_run)),
            )
            return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, counts: RunCounts, *, outcome: str, now: float) -> None:
        with self.transaction() as db:
            _update_run(db, run_id, counts)
            db.execute(
                "UPDATE runs SET finished_at = ?, outcome = ? WHERE id = ?", (now, outcome, run_id)
            )

    def last_run(self, *, include_dry_run: bool = False) -> RunRow | None:
        sql = (
            "SELECT id, started_at, finished_at, mode, direction, dry_run, cycles, matched, read,"
            " written, cleared, skipped, failed, throttle_wait, outcome FROM runs"
        )
        if not include_dry_run:
            sql += " WHERE dry_run = 0"
        row = self._db.execute(sql + " ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        counts = RunCounts(*row[6:14])
        return RunRow(row[0], row[1], row[2], row[3], row[4], bool(row[5]), counts, row[14])

    # -- audit ----------------------------------------------------------------------------------

    def append_audit(self, entries: Iterable[AuditEntry]) -> None:
        with self.transaction() as db:
            _insert_audit(db, entries)

    def audit_tail(self, limit: int = 20) -> list[AuditEntry]:
        rows = self._db.execute(
            "SELECT at, side, action, to_value, outcome, key, user, user_id, from_value, reason,"
            " error, id"
            " FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [AuditEntry(*r) for r in reversed(rows)]

    def audit_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM audit").fetchone()[0])

    # -- wiping ---------------------------------------------------------------------------------

    def clear_sync_state(self) -> None:
        """After a successful disable: no sessions, pending writes, subscriptions or genuine
        states remain (pairs, runs and the audit log stay)."""
        with self.transaction() as db:
            for table in ("sessions", "pending_writes", "subscriptions", "observations", "genuine"):
                db.execute(f"DELETE FROM {table}")


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script; a trigger body's inner ';' stays with its statement."""
    statements: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements


def _set_meta(db: sqlite3.Connection, key: str, value: str | None) -> None:
    if value is None:
        db.execute("DELETE FROM meta WHERE key = ?", (key,))
    else:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _insert_audit(db: sqlite3.Connection, entries: Iterable[AuditEntry]) -> None:
    db.executemany(
        "INSERT INTO audit (at, key, user, side, user_id, action, from_value, to_value, reason,"
        " outcome, error)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            (
                e.at,
                e.key,
                e.user,
                e.side,
                e.user_id,
                e.action,
                e.from_value,
                e.to_value,
                e.reason,
                e.outcome,
                e.error,
            )
            for e in entries
        ),
    )


def _update_run(db: sqlite3.Connection, run_id: int, counts: RunCounts) -> None:
    db.execute(
        "UPDATE runs SET cycles=?, matched=?, read=?, written=?, cleared=?, skipped=?, failed=?,"
        " throttle_wait=? WHERE id = ?",
        (
            counts.cycles,
            counts.matched,
            counts.read,
            counts.written,
            counts.cleared,
            counts.skipped,
            counts.failed,
            counts.throttle_wait,
            run_id,
        ),
    )
