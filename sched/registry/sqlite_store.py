"""The SQLite backend of the registry: one file in WAL mode, writers queued on flocks.

A store opens connections (checked and migrated once per process) and runs write
transactions; ``RegistryBase`` keeps one connection per process and thread and holds
every SQL statement. The PostgreSQL twin is ``postgres.PostgresStore``.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simpletvm import sqlite

from .health import RegistryError, check_file, damaged
from .schema import MIGRATIONS

# (pid, file) -> this process's open connections to it: while there is one, the file's
# header is not read (closing that descriptor would drop the connection's locks)
_OPEN_HERE: dict[tuple[int, str], int] = {}
_OPENING = threading.Lock()


class SQLiteStore:
    """One registry file; lock descriptors per process and thread, never reused across fork."""

    kind = "sqlite"
    READ_BEFORE_COMMIT = True  # a write statement not read to its end stops the commit
    READ_EARLY = False  # a read costs no round trip: a write reads under its lock
    NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"  # one host: its clock

    def __init__(self, path: Path, *, timeout: float) -> None:
        self.path = path
        self.location = str(path)
        self.timeout = timeout
        self._migrated: int | None = None  # the pid that has checked the migrations
        self._local = threading.local()
        self._local.lock_fd = None

    def connect(self) -> sqlite3.Connection:
        """A new connection, once the file is checked (``health.check_file``); a SQLite
        error that means the file is damaged becomes a ``RegistryError``."""
        key = (os.getpid(), str(self.path))
        with _OPENING:
            check_file(self.path, header=not _OPEN_HERE.get(key))
            try:
                conn = self._open()
            except sqlite3.DatabaseError as exc:
                problem = damaged(self.path, exc)
                if problem is None:
                    raise
                raise problem from exc
            _OPEN_HERE[key] = _OPEN_HERE.get(key, 0) + 1
        return conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite.connect(self.path, timeout=self.timeout, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        if self._migrated != os.getpid():  # once per process: WAL mode persists in the file
            self._check_ours(conn)
            sqlite.use_wal(conn)
            sqlite.migrate(
                conn, MIGRATIONS, transaction=lambda: self.write(conn, gate=True, priority=False)
            )
            self._migrated = os.getpid()
        return conn

    def _check_ours(self, conn: sqlite3.Connection) -> None:
        """Refuse another program's SQLite file rather than add sched's tables to it."""
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables - {"sqlite_sequence"} and "jobs" not in tables:
            raise RegistryError(
                f"{self.path} is a SQLite database but not a sched registry (it has no jobs "
                f"table); give sched's registry with --db or SCHED_DB"
            )

    def disconnect(self, conn: sqlite3.Connection) -> None:
        conn.close()
        key = (os.getpid(), str(self.path))
        with _OPENING:
            _OPEN_HERE[key] = max(0, _OPEN_HERE.get(key, 0) - 1)

    def close_locks(self) -> None:
        """Close this thread's lock descriptors (if this process opened them)."""
        local = self._local
        if getattr(local, "lock_pid", None) == os.getpid():
            for fd in getattr(local, "lock_fd", None) or ():
                os.close(fd)
        local.lock_fd = None

    def lock_fds(self) -> tuple[int, int]:
        """This process's and thread's descriptors of the gate and write-lock files."""
        local = self._local
        if getattr(local, "lock_pid", None) != os.getpid() or local.lock_fd is None:
            local.lock_fd = (self._open_lock("-gate"), self._open_lock("-writelock"))
            local.lock_pid = os.getpid()
        return local.lock_fd

    def _open_lock(self, suffix: str) -> int:
        path = self.path.with_name(self.path.name + suffix)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def gate_ready(self, timeout: float, conn: sqlite3.Connection) -> bool:
        """Take the writers' gate within ``timeout`` seconds (the next ``write(gate=True)``
        of this thread keeps and then releases it); False if it stayed held."""
        gate_fd, _ = self.lock_fds()
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(gate_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.001)

    @contextmanager
    def write(
        self, conn: sqlite3.Connection, *, gate: bool, priority: bool
    ) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), queued on a ``flock`` first.

        SQLite's busy handler polls a held lock by sleeping 1, 2, 5, 10 ... 100 ms, so with
        64 runners a write often waited tens of milliseconds for a lock freed long before.
        Writers queue on an exclusive ``flock`` instead, which the kernel hands over the
        moment it is released (and releases when a holder dies). The busy timeout stays as
        the fallback for any writer outside this class.

        A ``priority`` writer (the daemon) goes straight to the write lock; every other
        writer first passes a gate that admits one at a time. So the daemon's grants wait
        behind at most one runner's write, not behind all of them. ``gate=True`` makes even
        the daemon pass the gate: it must hold both locks when it suspends runners, so that
        none is stopped while holding one.

        Each thread has its own descriptors, and a forked child opens its own: a
        ``flock`` belongs to the open file, so an inherited one would share the parent's.
        """
        gate_fd, lock = self.lock_fds()
        use_gate = gate or not priority
        if use_gate:
            fcntl.flock(gate_fd, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with sqlite.immediate(conn):
                    yield conn
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            if use_gate:
                fcntl.flock(gate_fd, fcntl.LOCK_UN)

    @staticmethod
    def read_many(conn: sqlite3.Connection, queries) -> list[list[sqlite3.Row]]:
        """The rows of each ``(sql, params)``, from one snapshot: a read transaction (WAL
        readers see the last commit before it began, whatever commits meanwhile)."""
        begin = not conn.in_transaction  # inside a write: that write's snapshot
        if begin:
            conn.execute("BEGIN")
        try:
            return [conn.execute(sql, params).fetchall() for sql, params in queries]
        finally:
            if begin:
                conn.execute("COMMIT")

    @staticmethod
    def clock(conn: sqlite3.Connection) -> float:
        """The time stamped on a write: this process's clock (one host)."""
        return time.time()

    stamp = clock  # what a write stamps (``PostgresStore.stamp``'s twin): the same clock

    @staticmethod
    def read_clock(conn: sqlite3.Connection) -> float:
        return time.time()

    def notify(self, conn: sqlite3.Connection, channel: str, payload: str = "") -> None:
        """Nothing: on one host the daemon and its runners wake each other by pipes."""

    def listener(self, channels) -> None:
        return None

    def unblock(self, conn: sqlite3.Connection, pids) -> int:
        """Nothing to clear: a stopped process never acquires a flock."""
        return 0

    def applied_migrations(self, conn: sqlite3.Connection) -> list[str]:
        return sqlite.applied_migrations(conn)
