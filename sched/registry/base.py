"""Connections, transactions, migrations, settings and resources of the registry."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simpletvm import sqlite

from ..models import (
    EventKind,
    JobRecord,
    JobState,
    Resource,
    ResourceKind,
)
from .health import RegistryError, check_file, damaged
from .schema import MIGRATIONS

BUSY_TIMEOUT_S = 60.0
# (pid, file) -> this process's open connections to it: while there is one, the file's
# header is not read (closing that descriptor would drop the connection's locks)
_OPEN_HERE: dict[tuple[int, str], int] = {}
_OPENING = threading.Lock()
_JOB_COLUMNS = (
    "id, name, kind, spec, priority, device_kind, state, submitted_at, started_at, "
    "finished_at, stage, wait_reason, progress, best_latency_ms, result, error, retries, "
    "attempt, stages_done, runner_pid, runner_started, cancel_requested, parent_id"
)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _job_dict(row: sqlite3.Row) -> JobRecord:
    job: Any = dict(row)
    for key in ("spec", "progress", "result"):
        job[key] = json.loads(job[key]) if job[key] else ({} if key != "result" else None)
    job["state"] = JobState(job["state"])
    job["cancel_requested"] = bool(job["cancel_requested"])
    return job


class RegistryBase:
    """One SQLite file; a connection per process and thread, never reused across fork."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = BUSY_TIMEOUT_S,
        priority: bool = False,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.priority = priority  # the daemon's: its writes skip the writers' gate
        self._migrated: int | None = None  # the pid that has checked the migrations
        self._local = threading.local()
        self._local.conn = self._local.lock_fd = None

    # -- connection and transactions -------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        """This process's and thread's connection; a forked child never reuses its parent's."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid() or local.conn is None:
            local.conn = self._connect()
            local.pid = os.getpid()
        return local.conn

    def _connect(self) -> sqlite3.Connection:
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
            sqlite.migrate(conn, MIGRATIONS, transaction=lambda: self._write(conn))
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

    def check(self) -> None:
        """Open the registry now: a ``RegistryError`` if it cannot be used."""
        self.conn  # noqa: B018 - opening is the check

    def close(self) -> None:
        local = self._local
        if getattr(local, "pid", None) == os.getpid():
            if getattr(local, "conn", None) is not None:
                local.conn.close()
                key = (os.getpid(), str(self.path))
                with _OPENING:
                    _OPEN_HERE[key] = max(0, _OPEN_HERE.get(key, 0) - 1)
            for fd in getattr(local, "lock_fd", None) or ():
                os.close(fd)
        local.conn = None
        local.lock_fd = None

    def _lock_fds(self) -> tuple[int, int]:
        """This process's and thread's descriptors of the gate and write-lock files."""
        local = self._local
        if getattr(local, "lock_pid", None) != os.getpid() or local.lock_fd is None:
            local.lock_fd = (self._open_lock("-gate"), self._open_lock("-writelock"))
            local.lock_pid = os.getpid()
        return local.lock_fd

    def _open_lock(self, suffix: str) -> int:
        path = self.path.with_name(self.path.name + suffix)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _gate_ready(self, timeout: float) -> bool:
        """Take the writers' gate within ``timeout`` seconds (the next ``_write(gate=True)``
        of this thread keeps and then releases it); False if it stayed held."""
        gate_fd, _ = self._lock_fds()
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
    def _write(
        self, conn: sqlite3.Connection | None = None, *, gate: bool = False
    ) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), queued on a ``flock`` first.

        SQLite's busy handler polls a held lock by sleeping 1, 2, 5, 10 ... 100 ms, so with
        64 runners a write often waited tens of milliseconds for a lock freed long before.
        Writers queue on an exclusive ``flock`` instead, which the kernel hands over the
        moment it is released (and releases when a holder dies). The busy timeout stays as
        the fallback for any writer outside this class.

        A registry opened with ``priority=True`` (the daemon's) goes straight to the write
        lock; every other writer first passes a gate that admits one at a time. So the
        daemon's grants wait behind at most one runner's write, not behind all of them.

        ``gate=True`` makes even the daemon pass the gate: it must hold both locks when it
        suspends runners, so that none is stopped while holding one.

        Each thread has its own descriptors, and a forked child opens its own: a
        ``flock`` belongs to the open file, so an inherited one would share the parent's.
        """
        conn = conn or self.conn
        gate_fd, lock = self._lock_fds()
        use_gate = gate or not self.priority
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

    def migrations(self) -> list[str]:
        return sqlite.applied_migrations(self.conn)

    @staticmethod
    def _event(
        conn, now, kind: EventKind, job_id=None, stage=None, epoch=None, resources=None, detail=None
    ) -> None:
        conn.execute(
            "INSERT INTO events (ts, kind, job_id, stage, epoch, resources, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                now,
                kind.value,
                job_id,
                stage,
                epoch,
                _dumps(resources) if resources is not None else None,
                _dumps(detail) if detail is not None else None,
            ),
        )

    # -- settings and resources --------------------------------------------------------
    def get_setting(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_setting(self, key: str, value: str, *, now: float | None = None) -> None:
        with self._write() as conn:
            now = time.time() if now is None else now  # stamped under the write lock
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            if key == "strategy":
                self._event(conn, now, EventKind.STRATEGY, detail={"strategy": value})

    def mark_daemon(self, pid: int | None, *, now: float | None = None) -> None:
        """Record that a daemon started (pid) or stopped (None), in settings and the log."""
        with self._write() as conn:
            now = time.time() if now is None else now  # stamped under the write lock
            conn.execute(
                "INSERT INTO settings (key, value) VALUES ('daemon_pid', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                ("" if pid is None else str(pid),),
            )
            kind = EventKind.DAEMON_STOP if pid is None else EventKind.DAEMON_START
            self._event(conn, now, kind, detail={"pid": pid or os.getpid()})

    def replace_resources(self, resources: list[Resource]) -> None:
        """Replace the local resources; remote devices (``sched device``) are kept."""
        with self._write() as conn:
            conn.execute("DELETE FROM resources WHERE kind != ?", (ResourceKind.REMOTE.value,))
            conn.executemany(
                "INSERT INTO resources (name, kind, capacity, exclusive) VALUES (?, ?, ?, ?)",
                [(r.name, r.kind.value, r.capacity, int(r.exclusive)) for r in resources],
            )

    def resources(self) -> dict[str, Resource]:
        rows = self.conn.execute(
            "SELECT name, kind, capacity, exclusive, device_group, rpc, down_reason"
            " FROM resources ORDER BY rowid"
        )
        return {
            r[0]: Resource(
                r[0],
                ResourceKind(r[1]),
                int(r[2]),
                bool(r[3]),
                group=r[4],
                rpc=json.loads(r[5]) if r[5] else None,
                down=r[6],
            )
            for r in rows
        }
