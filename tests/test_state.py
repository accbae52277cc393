"""The state database: schema, transactions, crash safety, speed."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from presencectl.errors import ConfigError
from presencectl.mapping import TeamsStatus
from presencectl.sync.model import (
    Observation,
    PairState,
    PendingWrite,
    SessionRecord,
    Side,
    UserPair,
    pair_key,
)
from presencectl.sync.state import (
    SCHEMA_VERSION,
    AuditEntry,
    RunCounts,
    StateStore,
    SubscriptionRow,
    database_path,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
IN_A_CALL = TeamsStatus.parse("Busy/InACall")


def _pairs(n: int) -> list[UserPair]:
    return [
        UserPair(pair_key(f"a{i}", f"c{i}"), f"a{i}", f"c{i}", f"u{i}@contoso.example", f"U {i}")
        for i in range(n)
    ]


def _full_state(key: str) -> PairState:
    return PairState(
        key=key,
        last_teams=Observation(Side.TEAMS, IN_A_CALL, T0),
        last_connect=Observation(Side.CONNECT, "agent_onphone", T0),
        genuine_teams=TeamsStatus.parse("Available/Available", out_of_office=True),
        genuine_connect="agent_onphone",
        genuine_connect_at=T0 - timedelta(minutes=3),
        genuine_teams_at=T0,
        our_teams_session=SessionRecord(
            Side.TEAMS, IN_A_CALL, T0, T0 + timedelta(hours=1), masked_by=None
        ),
        our_connect_session=None,
        pending_teams=(
            PendingWrite(Side.TEAMS, IN_A_CALL, None, T0),
            PendingWrite(Side.TEAMS, None, IN_A_CALL, T0 + timedelta(seconds=1)),
        ),
    )


def test_database_lives_in_the_state_dir_private(tmp_path: Path) -> None:
    path = database_path("sandbox")
    assert path.parent == tmp_path / "state"
    with StateStore.for_profile("sandbox") as store:
        assert store.schema_version == SCHEMA_VERSION
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    StateStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(ConfigError) as err:
        StateStore(path)
    assert err.value.code == "state_too_new"


def test_pair_state_round_trips(tmp_path: Path) -> None:
    key = pair_key("a0", "c0")
    state = _full_state(key)
    with StateStore(tmp_path / "s.db") as store:
        store.save_states([state, PairState(key="empty:x")])
    with StateStore(tmp_path / "s.db") as store:
        loaded = store.load_states()
        assert loaded[key] == state
        assert "empty:x" not in loaded  # nothing to remember
        (held,) = store.sessions()
        assert (held.side, held.user_id, held.value) == (Side.TEAMS, "a0", "Busy/InACall")
        assert held.expires_at == (T0 + timedelta(hours=1)).timestamp()


def test_the_planners_settled_mark_round_trips_and_is_dropped_with_the_state(
    tmp_path: Path,
) -> None:
    key = pair_key("a0", "c0")
    settled = PairState(key=key, genuine_connect="available").mark_settled(("defaults", "both"))
    with StateStore(tmp_path / "s.db") as store:
        store.save_states([settled])
    with StateStore(tmp_path / "s.db") as store:
        assert store.load_states()[key].settled == ("defaults", "both")
        store.save_states([PairState(key=key, genuine_connect="busy")])
        assert store.load_states()[key].settled is None


def test_a_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    from presencectl.sync import state as state_module

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(state_module._MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    key = pair_key("a0", "c0")
    with StateStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        store.save_states([_full_state(key).mark_settled(("defaults", "both"))])
        assert store.load_states()[key].settled == ("defaults", "both")


def test_a_version_2_database_keeps_its_subscriptions_and_gains_their_owner(
    tmp_path: Path,
) -> None:
    """Schema 3 (the pool of sync users): a subscription recorded before it has no owner (the one
    sync user of the time); new ones record theirs."""
    from presencectl.sync import state as state_module

    path = tmp_path / "v2.db"
    db = sqlite3.connect(path)
    db.executescript(state_module._MIGRATIONS[0] + state_module._MIGRATIONS[1])
    db.execute(
        "INSERT INTO subscriptions (id, side, resource, created_at, expires_at, detail)"
        " VALUES ('old', 'graph', 'r', 1.0, 2.0, '{\"user_ids\": [\"u1\"]}')"
    )
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    with StateStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 3
        (old,) = store.subscriptions()
        assert (old.id, old.owner, old.detail) == ("old", None, {"user_ids": ["u1"]})
        store.save_subscription(SubscriptionRow("new", "graph", 3.0, 4.0, "r", None, "b@x"))
        assert [(s.id, s.owner) for s in store.subscriptions()] == [("old", None), ("new", "b@x")]


def test_saving_a_state_replaces_the_old_one(tmp_path: Path) -> None:
    key = pair_key("a0", "c0")
    with StateStore(tmp_path / "s.db") as store:
        store.save_states([_full_state(key)])
        store.save_states([PairState(key=key, genuine_connect="available")])
        assert store.load_states() == {key: PairState(key=key, genuine_connect="available")}
        assert store.sessions() == []


def test_pairs_replace_keeps_sessions_of_dropped_pairs(tmp_path: Path) -> None:
    pairs = _pairs(3)
    with StateStore(tmp_path / "s.db") as store:
        store.replace_pairs(pairs, now=1.0)
        store.save_states([_full_state(pairs[0].key)])
        dropped = store.replace_pairs(pairs[1:], now=2.0)
        assert dropped == [pairs[0].key]
        assert [p.key for p in store.pairs()] == [p.key for p in pairs[1:]]
        left = store.load_states()[pairs[0].key]
        assert left.our_teams_session is not None and left.last_teams is None
        assert left.pending_teams == ()


def test_audit_is_append_only(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        store.append_audit([AuditEntry(1.0, "teams", "set", "Available/Available", "ok")])
        with pytest.raises(sqlite3.DatabaseError):
            store._db.execute("DELETE FROM audit")
        assert store.audit_count() == 1


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    key = pair_key("a0", "c0")
    with StateStore(tmp_path / "s.db") as store:
        store.save_states([_full_state(key)])
        with pytest.raises(RuntimeError), store.transaction() as db:
            db.execute("DELETE FROM sessions")
            db.execute("INSERT INTO meta VALUES ('half', 'done')")
            raise RuntimeError("killed half way")
        assert store.load_states() == {key: _full_state(key)}
        assert store.get_meta("half") is None


def test_runs_and_subscriptions(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        run = store.start_run(mode="once", direction="both", dry_run=False, now=10.0)
        store.finish_run(run, RunCounts(cycles=1, matched=3, written=2), outcome="ok", now=11.0)
        dry = store.start_run(mode="once", direction="both", dry_run=True, now=12.0)
        store.finish_run(dry, RunCounts(cycles=1), outcome="ok", now=12.5)
        last = store.last_run()
        assert last is not None and last.counts.written == 2 and last.finished_at == 11.0
        store.save_subscription(SubscriptionRow("s1", "connect", 1.0, 1801.0, "users/_all"))
        assert store.subscriptions()[0].expires_at == 1801.0
        store.delete_subscription("s1")
        assert store.subscriptions() == []


@pytest.mark.parametrize("count", [5_000, pytest.param(50_000, marks=pytest.mark.slow)])
def test_many_pairs_save_and_load(tmp_path: Path, count: int) -> None:
    # How long this takes is a benchmark row (bench/timings.py), not an assert here.
    pairs = _pairs(count)
    saved = [_full_state(p.key) for p in pairs]
    with StateStore(tmp_path / "s.db") as store:
        store.replace_pairs(pairs, now=1.0)
        store.save_states(saved)
        assert store.pair_count() == count
    with StateStore(tmp_path / "s.db") as store:  # a fresh process would see the same
        loaded = store.load_states()
    assert len(loaded) == count
    assert loaded == {s.key: s for s in saved}


_CRASHER = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from presencectl.sync.model import Observation, PairState, Side
from presencectl.sync.state import AuditEntry, StateStore
store = StateStore(Path(sys.argv[1]))
i = 0
while True:
    i += 1
    at = datetime.fromtimestamp(1_700_000_000 + i, UTC)
    store.save_states(
        [PairState(key=f"a{j}:c{j}", last_connect=Observation(Side.CONNECT, str(i), at))
         for j in range(200)],
        audit=[AuditEntry(float(i), "teams", "set", str(i), "ok", key=str(j)) for j in range(200)],
    )
    if i == 3:
        print("ready", flush=True)
"""


@pytest.mark.crash
def test_kill_9_mid_write_leaves_a_consistent_database(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _CRASHER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.05)
        proc.kill()
        proc.wait()
        with StateStore(path) as store:
            assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            states = store.load_states()
            values = {s.last_connect.value for s in states.values() if s.last_connect}
            assert len(states) == 200 and len(values) == 1  # one whole committed cycle
            assert store.audit_count() % 200 == 0
