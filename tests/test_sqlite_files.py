"""One way to open the project's SQLite files (simpletvm.sqlite): the tuning database,
sched's registry and superb's results store are private, in WAL mode, and migrated once,
including files written before the helper existed."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from simpletvm import sqlite
from superb.results import MIGRATIONS as RESULT_MIGRATIONS
from superb.results import ResultsDB
from tvmsched.registry import MIGRATIONS as REGISTRY_MIGRATIONS
from tvmsched.registry import Registry


def _open_tuning_db(path):
    from simpletvm.database import connect

    connect(path).close()


OPENERS = {
    "tuning database": _open_tuning_db,
    "sched registry": lambda path: Registry(path).resources(),
    "superb results": lambda path: ResultsDB(path).points(),
}


@pytest.mark.parametrize("what", sorted(OPENERS))
def test_every_file_is_private_in_wal_mode_and_migrated_once(tmp_path, what):
    path = tmp_path / "new" / "file.db"
    OPENERS[what](path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = sqlite.applied_migrations(conn)
    assert names and len(names) == len(set(names))
    OPENERS[what](path)  # a second open applies nothing again
    assert sqlite.applied_migrations(conn) == names


def test_migrate_reads_first_and_applies_only_what_is_missing(tmp_path):
    conn = sqlite.connect(tmp_path / "m.db", timeout=5)
    first = [("one", ["CREATE TABLE a (x)"])]
    assert sqlite.migrate(conn, first) == ["one"]
    opened = []

    def transaction():  # the write transaction is not even opened for a current file
        opened.append(True)
        return sqlite.immediate(conn)

    assert sqlite.migrate(conn, first, transaction=transaction) == [] and not opened
    both = [*first, ("two", ["CREATE TABLE b (y)", "INSERT INTO b VALUES (1)"])]
    assert sqlite.migrate(conn, both, transaction=transaction) == ["two"] and opened
    with pytest.raises(sqlite3.OperationalError):  # a failing migration leaves nothing
        sqlite.migrate(conn, [*both, ("three", ["CREATE TABLE c (z)", "NOT SQL"])])
    assert sqlite.applied_migrations(conn) == ["one", "two"]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'c'").fetchone() is None


def test_files_written_before_the_helper_are_migrated_on(tmp_path):
    # superb's old bookkeeping: (name TEXT PRIMARY KEY, applied REAL), julian days
    old = tmp_path / "results.db"
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied REAL NOT NULL)")
    for name, statements in RESULT_MIGRATIONS[:2]:
        for statement in statements:
            conn.execute(statement)
        conn.execute("INSERT INTO migrations VALUES (?, julianday())", (name,))
    assert ResultsDB(old).migrations() == [name for name, _ in RESULT_MIGRATIONS]
    assert "amount" in {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    # sched's old bookkeeping: (id INTEGER PRIMARY KEY, name, applied_at)
    old = tmp_path / "sched.db"
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                 "applied_at REAL NOT NULL)")  # fmt: skip
    first, statements = REGISTRY_MIGRATIONS[0]
    for statement in statements:
        conn.execute(statement)
    conn.execute("INSERT INTO migrations VALUES (0, ?, 0)", (first,))
    assert Registry(old).migrations() == [name for name, _ in REGISTRY_MIGRATIONS]
