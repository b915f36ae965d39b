"""Connections, transactions, migrations, settings and resources of the registry."""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from ..models import (
    EventKind,
    JobRecord,
    JobState,
    Resource,
    ResourceKind,
)
from ..paths import locator
from .postgres import PostgresStore, SessionLost
from .sqlite_store import SQLiteStore

BUSY_TIMEOUT_S = 60.0
SESSION_RETRIES = 3
T = TypeVar("T")
Connection = Any  # a sqlite3.Connection or a postgres.PgConnection: the same calls
_JOB_COLUMNS = (
    "id, name, kind, spec, priority, device_kind, state, submitted_at, started_at, "
    "finished_at, stage, wait_reason, progress, best_latency_ms, result, error, retries, "
    "attempt, stages_done, runner_pid, runner_started, cancel_requested, parent_id, host"
)


def retried(method: Callable[..., T]) -> Callable[..., T]:
    """Run a write again when the server ended its session before it committed (see
    ``postgres.SessionLost``: how the daemon frees a gate that a stopped runner took)."""

    @functools.wraps(method)
    def again(self, *args, **kwargs):
        for _ in range(SESSION_RETRIES):
            try:
                return method(self, *args, **kwargs)
            except SessionLost:
                continue
        return method(self, *args, **kwargs)

    return again


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@functools.lru_cache(maxsize=4096)
def _parsed_units(text: str) -> tuple[tuple[str, int], ...]:
    return tuple(json.loads(text).items())


def _units(text: str) -> dict[str, int]:
    """A lease's resources or a request's needs (``{"cpu": 1}``), parsed once per
    distinct text: a pass reads every active lease's, and the same few texts recur. A
    fresh dict each time, so a caller may change it."""
    return dict(_parsed_units(text))


def open_store(db: str | os.PathLike[str], *, timeout: float) -> SQLiteStore | PostgresStore:
    """The backend for ``db``: a ``postgresql://`` URL, else a SQLite file path."""
    db = locator(db)
    if isinstance(db, str):
        return PostgresStore(db, timeout=timeout)
    return SQLiteStore(db, timeout=timeout)


RESOURCES_SQL = (
    "SELECT name, kind, capacity, exclusive, device_group, rpc, down_reason, host"
    " FROM resources ORDER BY rowid"
)


def _resources(rows: Any) -> dict[str, Resource]:
    return {
        r[0]: Resource(
            r[0],
            ResourceKind(r[1]),
            int(r[2]),
            bool(r[3]),
            group=r[4],
            rpc=json.loads(r[5]) if r[5] else None,
            down=r[6],
            host=r[7],
        )
        for r in rows
    }


def _job_dict(row: Any) -> JobRecord:
    job: Any = dict(row)
    for key in ("spec", "progress", "result"):
        job[key] = json.loads(job[key]) if job[key] else ({} if key != "result" else None)
    job["state"] = JobState(job["state"])
    job["cancel_requested"] = bool(job["cancel_requested"])
    return job


class RegistryBase:
    """One registry (a SQLite file or a PostgreSQL database, see ``open_store``); a
    connection per process and thread, never reused across fork."""

    def __init__(
        self,
        db: str | os.PathLike[str],
        *,
        timeout: float = BUSY_TIMEOUT_S,
        priority: bool = False,
    ) -> None:
        self.store = open_store(db, timeout=timeout)
        self.path: Path = self.store.path  # the file, or where a URL's local files go
        self.location = self.store.location  # how messages name it (no password)
        self.timeout = timeout
        self.priority = priority  # the daemon's: its writes skip the writers' gate
        self._local = threading.local()
        self._local.conn = None

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.store.kind

    # -- connection and transactions -------------------------------------------------
    @property
    def conn(self) -> Any:
        """This process's and thread's connection; a forked child never reuses its parent's."""
        local = self._local
        if (
            getattr(local, "pid", None) != os.getpid()
            or local.conn is None
            or getattr(local.conn, "closed", False)  # a PostgreSQL session the server ended
        ):
            local.conn = self.store.connect()
            local.pid = os.getpid()
        return local.conn

    def check(self) -> None:
        """Open the registry now: a ``RegistryError`` if it cannot be used."""
        self.conn  # noqa: B018 - opening is the check

    def close(self) -> None:
        local = self._local
        if getattr(local, "pid", None) == os.getpid() and getattr(local, "conn", None):
            self.store.disconnect(local.conn)
        self.store.close_locks()
        local.conn = None

    def _lock_fds(self) -> tuple[int, int]:
        """This thread's flock descriptors (SQLite only)."""
        return self.store.lock_fds()

    def _gate_ready(self, timeout: float) -> bool:
        """Take the writers' gate within ``timeout`` seconds (the next ``_write(gate=True)``
        of this thread keeps and then releases it); False if it stayed held."""
        return self.store.gate_ready(timeout, self.conn)

    def _write(self, conn: Any = None, *, gate: bool = False) -> AbstractContextManager[Any]:
        """One write transaction: the store's (``SQLiteStore.write``, ``PostgresStore.write``)."""
        return self.store.write(conn or self.conn, gate=gate, priority=self.priority)

    def _touch(self, sql: str, params: tuple[Any, ...], now: float | None = None) -> bool:
        """A heartbeat: one UPDATE of one row, ``SET col = {now} ... RETURNING``, that
        needs no other write's order. On PostgreSQL it is one statement on its own,
        outside the gate and the write lock, stamped with the server's clock: the row's
        lock orders it against a write of the same row, whose condition the server checks
        again once that write commits, so a fenced lease or host is never renewed. Beats
        then never queue behind runners' writes (64 runners in their stages beat 64 times
        a second), and an agent's renewal is not delayed toward its T/2 self-fence. On
        SQLite, or with ``now`` given, it is an ordinary write. Whether a row was
        renewed."""
        if self.backend == "postgresql" and now is None:
            row = self.conn.execute(sql.format(now=self.store.NOW_SQL), params).fetchone()
            return row is not None
        with self._write() as conn:
            stamp = self._now(conn, now)  # stamped under the write lock
            return conn.execute(sql.format(now="?"), (stamp, *params)).fetchone() is not None

    def _now(self, conn: Any, now: float | None) -> float:
        """``now`` if given (tests inject a clock), else the time at which this write
        transaction took the write lock: the database's clock on PostgreSQL, so every
        host's events and heartbeats are stamped by one clock; this process's on SQLite
        (one host, one clock)."""
        return now if now is not None else self.store.clock(conn)

    def _stamp(self, conn: Any, now: float | None) -> Any:
        """What ``_now`` stamps, for a write that needs the time only as a statement's
        parameter: on PostgreSQL the server puts the write lock's time in itself
        (``postgres.SERVER_NOW``), so the body needs no round trip before its commit."""
        return now if now is not None else self.store.stamp(conn)

    def daemon_elsewhere(self) -> int | None:
        """PostgreSQL: the pid of the daemon serving this registry from any host (the
        holder of the daemon lock; its pid as it recorded it), else None."""
        if self.backend != "postgresql" or not self.store.daemon_lock_held(self.conn):
            return None
        pid = self.get_setting("daemon_pid") or ""
        return int(pid) if pid.isdigit() else 0

    def clock(self) -> float:
        """The registry's clock now (the database's on PostgreSQL), in Unix seconds."""
        return self.store.read_clock(self.conn)

    def migrations(self) -> list[str]:
        return self.store.applied_migrations(self.conn)

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

    @retried
    def set_setting(self, key: str, value: str, *, now: float | None = None) -> None:
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
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
            now = self._now(conn, now)  # stamped under the write lock
            conn.execute(
                "INSERT INTO settings (key, value) VALUES ('daemon_pid', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                ("" if pid is None else str(pid),),
            )
            kind = EventKind.DAEMON_STOP if pid is None else EventKind.DAEMON_START
            self._event(conn, now, kind, detail={"pid": pid or os.getpid()})

    def replace_resources(self, resources: list[Resource]) -> None:
        """Replace the daemon's own host's resources; remote devices (``sched device``)
        and agents' resources (``register_host``) are kept."""
        with self._write() as conn:
            conn.execute(
                "DELETE FROM resources WHERE kind != ? AND host IS NULL",
                (ResourceKind.REMOTE.value,),
            )
            self._insert_resources(conn, resources)

    @staticmethod
    def _insert_resources(conn, resources: list[Resource]) -> None:
        conn.executemany(
            "INSERT INTO resources (name, kind, capacity, exclusive, host) VALUES (?, ?, ?, ?, ?)",
            [(r.name, r.kind.value, r.capacity, int(r.exclusive), r.host) for r in resources],
        )

    def resources(self) -> dict[str, Resource]:
        return _resources(self.conn.execute(RESOURCES_SQL))

    def _read_many(self, queries: list[tuple[str, tuple[Any, ...]]]) -> list[list[Any]]:
        """The rows of several reads, all from one snapshot of the registry, in one round
        trip on PostgreSQL (``store.read_many``)."""
        return self.store.read_many(self.conn, queries)
