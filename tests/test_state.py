"""The state database: schema, transactions, crash safety, speed."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from presencectl.errors import ConfigError
from presencectl.sync.state import (
    SCHEMA_VERSION,
    AuditEntry,
    HeldSession,
    PairRow,
    PendingRow,
    RunCounts,
    SideValue,
    StateStore,
    SubscriptionRow,
    database_path,
)


def _pairs(n: int) -> list[PairRow]:
    return [
        PairRow(f"k{i}", f"u{i}@contoso.example", f"a{i}", f"c{i}", f"User {i}") for i in range(n)
    ]


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


def test_pairs_replace_keeps_sessions_of_dropped_pairs(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        store.replace_pairs(_pairs(3), now=1.0)
        store.commit_cycle(
            observations=[("k0", "teams", SideValue("Busy/InACall", 1.0))],
            sessions_set=[HeldSession("k0", "teams", "a0", "Busy/InACall", 1.0, 301.0)],
        )
        store.replace_pairs(_pairs(3)[1:], now=2.0)
        assert [p.key for p in store.pairs()] == ["k1", "k2"]
        assert store.observations() == {}
        assert [s.key for s in store.sessions()] == ["k0"]


def test_intent_then_outcome(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        store.record_intents([PendingRow("k0", "connect", "c0", "onphone", 5.0, None, "intent")])
        assert store.sessions("connect")[0].value == "onphone"
        assert store.pending_writes()[0].stage == "intent"
        store.commit_cycle(
            pending_set=[PendingRow("k0", "connect", "c0", "onphone", 5.0, None, "sent")],
            audit=[
                AuditEntry(5.0, "connect", "set", "onphone", "ok", key="k0", reason="teams InACall")
            ],
        )
        assert store.pending_writes()[0].stage == "sent"
        assert store.audit_tail()[0].to_value == "onphone"
        store.commit_cycle(pending_done=[("k0", "connect")], sessions_cleared=[("k0", "connect")])
        assert store.pending_writes() == [] and store.sessions() == []


def test_audit_is_append_only(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        store.append_audit([AuditEntry(1.0, "teams", "set", "Available/Available", "ok")])
        with pytest.raises(sqlite3.DatabaseError):
            store._db.execute("DELETE FROM audit")
        assert store.audit_count() == 1


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        bad = SideValue("x", 1.0)
        with pytest.raises(sqlite3.IntegrityError):
            store.commit_cycle(
                observations=[("k0", "teams", bad), ("k0", "nowhere", bad)],
                audit=[AuditEntry(1.0, "teams", "set", "x", "ok")],
            )
        assert store.observations() == {} and store.audit_count() == 0


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


def test_fifty_thousand_pairs_are_fast(tmp_path: Path) -> None:
    pairs = _pairs(50_000)
    with StateStore(tmp_path / "s.db") as store:
        start = time.perf_counter()
        store.replace_pairs(pairs, now=1.0)
        store.commit_cycle(
            observations=[(p.key, "teams", SideValue("Available/Available", 1.0)) for p in pairs],
            genuine=[(p.key, "connect", SideValue("available", 1.0)) for p in pairs],
            sessions_set=[
                HeldSession(p.key, "teams", p.azure_id, "Available/Available", 1.0, 300.0)
                for p in pairs
            ],
        )
        elapsed = time.perf_counter() - start
        assert store.pair_count() == 50_000
        assert len(store.observations()) == 50_000
    assert elapsed < 5.0, elapsed


_CRASHER = """
import os, sys
from pathlib import Path
from presencectl.sync.state import StateStore, SideValue, AuditEntry, HeldSession
store = StateStore(Path(sys.argv[1]))
i = 0
while True:
    i += 1
    store.commit_cycle(
        observations=[(f"k{j}", "teams", SideValue(str(i), float(i))) for j in range(200)],
        sessions_set=[HeldSession(f"k{j}", "teams", "a", str(i), 1.0, None) for j in range(200)],
        audit=[AuditEntry(float(i), "teams", "set", str(i), "ok", key=f"k{j}") for j in range(200)],
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
            values = {v.value for v in store.observations().values()}
            assert len(values) == 1  # all 200 rows from the same committed cycle
            assert store.audit_count() % 200 == 0
