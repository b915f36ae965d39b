"""Opening the project's SQLite files: one way, for the tuning database, sched's registry
and superb's results store (sched and superb may import simpletvm, not the reverse, so
it lives here).

- ``create_private``: the file is created 0600 (its directory 0700 when we create it)
  before SQLite opens it, so it is never readable by others;
- ``connect``: autocommit mode (callers open their own ``BEGIN IMMEDIATE``), a busy
  timeout, ``synchronous=NORMAL`` (safe with WAL: a power loss may lose the last
  commits, never corrupt the file);
- ``use_wal``: the WAL journal (it persists in the file: once per file is enough);
- ``migrate``: named migrations applied once each, in order, recorded in a
  ``migrations`` table; a read first, so a current file costs no write lock;
- ``immediate``: one write transaction (``BEGIN IMMEDIATE``), rolled back on error.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

Migration = tuple[str, Sequence[str]]  # (name, SQL statements)


def create_private(path: str | os.PathLike[str]) -> None:
    """Create the file 0600 if it is missing (its directory 0700 if that is missing too).

    An existing file is left alone: opening and closing a descriptor of it would drop
    every POSIX lock this process holds on it, the locks of its SQLite connections too.
    """
    path = Path(path)
    if path.exists():
        return
    if not path.parent.exists():  # ours: tighten it (never chmod a shared directory)
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def connect(
    path: str | os.PathLike[str], *, timeout: float, check_same_thread: bool = True
) -> sqlite3.Connection:
    """A connection to the file (created private if new) in autocommit mode, waiting up
    to ``timeout`` seconds for a lock, with ``synchronous=NORMAL``."""
    create_private(path)
    conn = sqlite3.connect(
        path, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread
    )
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def use_wal(conn: sqlite3.Connection, *, attempts: int = 200) -> None:
    """Switch the file to the WAL journal (it persists in the file).

    Two processes creating the same new file race for the journal-mode switch, which
    SQLite reports as "locked" without waiting on the busy timeout, so that one step is
    retried."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: ``BEGIN IMMEDIATE`` (the lock up front), COMMIT, or
    ROLLBACK if the body raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """The names of the migrations applied to this file, in the order applied."""
    try:
        return [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY rowid")]
    except sqlite3.OperationalError:  # a new file: no migrations table yet
        return []


def migrate(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration],
    *,
    transaction: Callable[[], AbstractContextManager] | None = None,
) -> list[str]:
    """Apply the migrations the file lacks, in order, in one write transaction, each
    recorded by name; returns the names applied. ``transaction`` opens the write
    transaction (default: ``immediate(conn)``); sched passes its own, queued on a flock.
    """
    if {name for name, _ in migrations} <= set(applied_migrations(conn)):
        return []  # a read only: a current file takes no write lock
    applied = []
    with (transaction or (lambda: immediate(conn)))():
        conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        done = set(applied_migrations(conn))  # another process may have been first
        when = _time_column(conn)
        for name, statements in migrations:
            if name in done:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO migrations (name, {when}) VALUES (?, ?)", (name, time.time())
            )
            applied.append(name)
    return applied


def _time_column(conn: sqlite3.Connection) -> str:
    """``applied_at``; superb's result files from before this helper call it ``applied``."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(migrations)")}
    return "applied_at" if "applied_at" in columns else "applied"
