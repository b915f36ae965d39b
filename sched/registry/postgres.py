"""The PostgreSQL backend of the registry: the same tables and statements as on SQLite.

``--db postgresql://...`` (or ``SCHED_DB``) selects it; psycopg 3 (the ``[postgres]``
extra) is imported only then. What differs from SQLite, and how it is kept equivalent:

- placeholders: the registry's statements use ``?``; ``translate`` turns them into
  psycopg's ``%s`` (a literal ``%`` is doubled);
- rows: ``Row`` reads by index, by column name and as ``dict(row)``, as ``sqlite3.Row``;
- the schema: the same migrations, with SQLite's types mapped by ``postgres_ddl``
  (``REAL`` is a 4-byte float in PostgreSQL, so it becomes ``DOUBLE PRECISION``) and a
  ``rowid`` identity column in every table, which SQLite has implicitly;
- writes: SQLite runs one write transaction at a time, and the registry's logic
  (capacity checks, fencing) relies on that. Every write transaction here first takes
  one transaction-level advisory lock, so writes are serialised in the same way, while
  reads run beside them on committed data, like WAL readers. Runners first pass a gate
  (a second advisory lock) that the daemon's writes skip, as the flocks do on SQLite.
  Runners wait for the gate in the server's queue. Unlike a flock, which a stopped
  process never acquires, the server grants a queued lock even to a client that is
  stopped (SIGSTOP for preemption), and a stopped runner holding the gate would block
  every runner's write, the measuring one's too. So the daemon clears the way
  (``unblock``): once it has stopped runners, and again on each housekeeping pass while
  any stays suspended, it cancels their queued gate waits and ends the session of one
  that holds the gate. The resumed runner sees the error and asks for the gate again;
- a transaction runs in pipeline mode (see ``write``), and the write lock's time stays
  on the server (``SERVER_NOW``), so a body that reads nothing (what it relies on read
  before the lock and checked under it, ``EXPECT``) costs one round trip with its lock
  and commit;
- a lock wait is bounded by ``lock_timeout`` (the busy timeout's twin).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from simpletvm.pg import postgres_ddl, reason, translate
from simpletvm.pg import row_factory as _row_factory

from ..paths import local_base, redact
from .health import RegistryError
from .schema import MIGRATIONS

PG_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION"  # the server's clock

# advisory lock keys (per database): the writers' gate and the write lock
GATE_KEY = 0x5C4ED_0001
WRITE_KEY = 0x5C4ED_0002
DAEMON_KEY = 0x5C4ED_0003  # held by the serving daemon's session: one daemon per registry
# The write lock, then the server's clock, kept for the rest of the transaction in a
# setting of its own (``STAMP_SQL`` reads it), so a statement stamped with the lock's
# time needs no value from the client. The subquery is evaluated first (OFFSET 0 keeps
# the planner from folding it), so the clock is read once the lock is held.
LOCK_AND_CLOCK = (
    "SELECT set_config('sched.now', EXTRACT(EPOCH FROM clock_timestamp())::TEXT, true)"
    "::DOUBLE PRECISION FROM (SELECT pg_advisory_xact_lock(?) OFFSET 0) AS locked"
)
STAMP_SQL = "current_setting('sched.now')::DOUBLE PRECISION"
# ``EXPECT.format(cond)`` fails its transaction unless ``cond`` holds: the cast of the
# marker text to an integer is the error (there is no RAISE outside PL/pgSQL), and a
# write in pipeline mode sends the rest of its body without waiting for it (``Changed``)
EXPECTED = "sched: a row this write read before its write lock has changed"
EXPECT = f"SELECT CAST(CASE WHEN {{}} THEN '1' ELSE '{EXPECTED}' END AS INTEGER)"
GATE_POLL_S = 0.0005  # the daemon's wait between tries for the gate (gate_ready)
CONNECT_TIMEOUT_S = 10
IDLE_IN_TRANSACTION_S = 5.0  # the server ends a session silent this long inside a write


class _ServerNow:
    """The write lock's time on the server (``STAMP_SQL``), as a statement's parameter."""

    def __repr__(self) -> str:
        return "SERVER_NOW"


SERVER_NOW = _ServerNow()


class Changed(Exception):
    """A row that a write read before taking the write lock changed before the lock was
    held (its ``EXPECT`` failed); nothing of the write was written, and the caller runs
    it again reading under the lock."""


class SessionLost(Exception):
    """The server ended this session before the transaction committed (nothing of it
    was written); the connection is reopened, and the caller may run it again."""


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise RegistryError(
            "a postgresql:// registry needs psycopg 3, which is not installed; install the "
            "extra: pip install 'simpletvm-toolkit[postgres]'"
        ) from None
    return psycopg


class PgConnection:
    """A psycopg connection in autocommit mode that takes the registry's statements;
    ``reopen`` replaces a session that the server ended."""

    def __init__(self, raw, opener) -> None:
        self.raw = raw
        self._opener = opener
        self._clock = 0.0
        self._clock_cursor = None  # the write lock's statement, its result not read yet
        self.pipeline = None  # the write's pipeline, while one runs

    @property
    def clock(self) -> float:
        """The server's time when the current write took the write lock. Read when first
        asked for, so that what a write sends before asking (its reads) travels with the
        lock in one round trip."""
        if self._clock_cursor is not None:
            cursor, self._clock_cursor = self._clock_cursor, None
            if self.pipeline is not None:  # a Sync, not a flush: the server then counts
                self.pipeline.sync()  # the client's silence (idle_in_transaction_...)
            self._clock = float(cursor.fetchone()[0])
        return self._clock

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)

    def reopen(self) -> None:
        if not self.raw.closed:
            self.raw.close()
        self.raw = self._opener()

    def execute(self, sql: str, params: Sequence[Any] = ()):
        params = tuple(params)
        if any(p is SERVER_NOW for p in params):  # the server's stamp, not a value sent
            sql = _stamped(sql, tuple(p is SERVER_NOW for p in params))
            params = tuple(p for p in params if p is not SERVER_NOW)
        return self.raw.execute(translate(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.raw.cursor() as cur:
            cur.executemany(translate(sql), [tuple(r) for r in rows])

    def close(self) -> None:
        self.raw.close()


class PostgresStore:
    """One PostgreSQL database as the registry; a connection per process and thread."""

    kind = "postgresql"
    READ_BEFORE_COMMIT = False  # the results of a write come back with its commit
    # a read is a round trip: one made before the write lock (then checked under it
    # with ``EXPECT``) keeps the lock from being held across it
    READ_EARLY = True
    NOW_SQL = PG_NOW  # the server's clock

    @staticmethod
    def clock(conn: PgConnection) -> float:
        """The server's time when this write transaction took the write lock."""
        return conn.clock

    @staticmethod
    def stamp(conn: PgConnection) -> Any:
        """What a write stamps with the write lock's time without asking the server for
        it (``SERVER_NOW``): the body then needs no round trip before its commit."""
        return SERVER_NOW

    @staticmethod
    def read_clock(conn: PgConnection) -> float:
        return float(conn.execute(f"SELECT {PG_NOW}").fetchone()[0])

    @staticmethod
    def read_many(conn: PgConnection, queries) -> list[list[Any]]:
        """The rows of each ``(sql, params)``, from one snapshot (a read-only repeatable
        read transaction), sent in one pipeline: one round trip for all of them."""
        raw = conn.raw
        if raw.info.transaction_status != _idle():  # inside a write: its own snapshot
            return [conn.execute(sql, params).fetchall() for sql, params in queries]
        try:
            with raw.pipeline():
                raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cursors = [conn.execute(sql, params) for sql, params in queries]
                raw.execute("COMMIT")
        except BaseException:
            if not raw.closed and raw.info.transaction_status != _idle():
                raw.execute("ROLLBACK")
            raise
        return [cursor.fetchall() for cursor in cursors]

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.location = redact(url)
        self.path: Path = local_base(url)  # where the pid file, logs and job folders go
        self.timeout = timeout
        self._migrated: int | None = None
        self._local = threading.local()

    def connect(self) -> PgConnection:
        conn = PgConnection(self._open(), self._open)
        if self._migrated != os.getpid():
            self._check_ours(conn)
            self._migrate(conn)
            self._migrated = os.getpid()
        return conn

    def _open(self):
        """A new session, set up as the registry's writers expect."""
        psycopg = _psycopg()
        try:
            raw = psycopg.connect(
                self.url,
                autocommit=True,
                row_factory=_row_factory,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=f"sched-{os.getpid()}",
            )
        except psycopg.Error as exc:
            raise RegistryError(
                f"cannot connect to the registry {self.location}: {reason(exc)}; check that the "
                f"server runs and the URL is right (a password belongs in ~/.pgpass or "
                f"PGPASSFILE, not in the URL)"
            ) from None
        # SQLite's synchronous=NORMAL in WAL mode: a commit does not wait for its WAL
        # flush, so a crash of the server may lose the last commits (never corrupt).
        # A session that stops talking inside a transaction (its host partitioned, or
        # stopped) is ended by the server, which frees the locks it held: every write
        # of the registry lasts milliseconds, a suspension inside one at most STOP_WAIT_S
        raw.execute(
            f"SET lock_timeout = {int(self.timeout * 1000)}; SET synchronous_commit = off;"
            f" SET idle_in_transaction_session_timeout = {int(IDLE_IN_TRANSACTION_S * 1000)}"
        )
        return raw

    def _tables(self, conn: PgConnection) -> set[str]:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        return {r[0] for r in rows}

    def _check_ours(self, conn: PgConnection) -> None:
        """Refuse another program's database rather than add sched's tables to it."""
        tables = self._tables(conn)
        if tables and "jobs" not in tables:
            raise RegistryError(
                f"{self.location} is a PostgreSQL database but not a sched registry (it has "
                f"tables and no jobs table); give sched its own database"
            )

    def _migrate(self, conn: PgConnection) -> list[str]:
        """Apply the missing migrations in one write transaction (a read first)."""
        if {name for name, _ in MIGRATIONS} <= set(self.applied_migrations(conn)):
            return []
        applied = []
        with self.write(conn, gate=True, priority=False):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS migrations (rowid BIGINT GENERATED ALWAYS AS "
                "IDENTITY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            done = set(self.applied_migrations(conn))  # another process may have been first
            for name, statements in MIGRATIONS:
                if name in done:
                    continue
                for statement in statements:
                    conn.execute(postgres_ddl(statement))
                conn.execute(
                    "INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, time.time())
                )
                applied.append(name)
        return applied

    def applied_migrations(self, conn: PgConnection) -> list[str]:
        if "migrations" not in self._tables(conn):
            return []
        return [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY rowid")]

    def disconnect(self, conn: PgConnection) -> None:
        conn.close()

    def close_locks(self) -> None:
        self._local.gate_held = False  # session locks end with the connection

    def gate_ready(self, timeout: float, conn: PgConnection) -> bool:
        """Take the writers' gate (a session-level advisory lock) within ``timeout``
        seconds; the next ``write(gate=True)`` of this thread releases it."""
        deadline = time.monotonic() + timeout
        while True:
            if conn.execute("SELECT pg_try_advisory_lock(?)", (GATE_KEY,)).fetchone()[0]:
                self._local.gate_held = True
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(GATE_POLL_S)

    @contextmanager
    def write(self, conn: PgConnection, *, gate: bool, priority: bool) -> Iterator[PgConnection]:
        """One write transaction, serialised with every other by the write lock; a runner
        (not ``priority``), or any writer with ``gate``, passes the gate first.

        Once the locks are held, the transaction runs in psycopg's pipeline mode: a
        statement whose result is not read (an INSERT into the log, an UPDATE) is sent
        without waiting for the server, so the body costs a round trip per result read,
        not per statement, and the write lock is held that much shorter.
        """
        held = getattr(self._local, "gate_held", False)
        committing = False
        try:
            if (gate or not priority) and not held:
                self._pass_gate(conn)
                # a round trip of its own: a runner stopped at the gate must not also
                # queue for the write lock, which the daemon's own writes need
                begin = False
            else:
                begin = True
            with conn.raw.pipeline() as conn.pipeline:
                if begin:
                    conn.execute("BEGIN")
                # the write lock, and the server's clock once it is held: what the
                # caller stamps (RegistryBase._now) is stamped under the lock. Its result
                # is read with the body's first one (``PgConnection.clock``)
                conn._clock_cursor = conn.execute(LOCK_AND_CLOCK, (WRITE_KEY,))
                yield conn
                # a body that read nothing (``SERVER_NOW`` stamps) goes to the server
                # with its lock and its commit in one round trip: the write lock is held
                # only while the server runs it. An error of any statement (the lock's
                # timeout, an ``EXPECT``) skips the rest, the commit included
                committing = True
                conn.execute("COMMIT")
        except _psycopg().errors.InvalidTextRepresentation as exc:
            if not conn.closed and conn.raw.info.transaction_status != _idle():
                conn.execute("ROLLBACK")
            if EXPECTED in str(exc):
                raise Changed(reason(exc)) from None
            raise
        except _psycopg().OperationalError as exc:
            if not conn.closed:
                if conn.raw.info.transaction_status != _idle():
                    conn.execute("ROLLBACK")
                raise
            if committing:  # it may have committed: never run it twice
                raise
            conn.reopen()
            raise SessionLost(reason(exc)) from None
        except BaseException:
            if not conn.closed and conn.raw.info.transaction_status != _idle():
                conn.execute("ROLLBACK")
            raise
        finally:
            conn._clock_cursor = conn.pipeline = None
            if held:
                self._local.gate_held = False
                if not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(?)", (GATE_KEY,))

    def _pass_gate(self, conn: PgConnection) -> None:
        """Begin a transaction and wait in the server's queue for the gate; a wait the
        daemon cancelled, or a session it ended (``unblock``), is asked again."""
        psycopg = _psycopg()
        while True:
            try:
                conn.raw.execute(f"BEGIN; SELECT pg_advisory_xact_lock({GATE_KEY})")
                return
            except (psycopg.errors.QueryCanceled, psycopg.OperationalError):
                if conn.closed:
                    conn.reopen()
                else:
                    conn.execute("ROLLBACK")

    def session(self) -> PgConnection:
        """A session of its own (for the daemon lock, which lasts as long as it)."""
        return PgConnection(self._open(), self._open)

    def try_daemon_lock(self, session: PgConnection) -> bool:
        """Take the daemon lock in ``session`` unless another daemon's session holds it.
        A daemon that dies, or whose session the server drops, frees it for a standby."""
        return bool(
            session.execute("SELECT pg_try_advisory_lock(?)", (DAEMON_KEY,)).fetchone()[0]
        )

    def daemon_lock_held(self, conn: PgConnection) -> bool:
        """Does some session (a daemon, on any host) hold the daemon lock now?"""
        row = conn.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid::bigint = ? AND objid::bigint = ?",
            (DAEMON_KEY >> 32, DAEMON_KEY & 0xFFFFFFFF),
        ).fetchone()
        return row is not None

    @staticmethod
    def touch(session: PgConnection) -> None:
        """A statement on the daemon lock's session: what shows a standby it is alive."""
        session.execute("SELECT 1").fetchone()

    def end_silent_daemon(self, session: PgConnection, timeout: float) -> float | None:
        """End the daemon's sessions if the one holding the daemon lock ran its last
        statement ``timeout`` seconds ago or more (the server's clock); how long it had
        been silent, or None."""
        row = session.execute(
            "SELECT a.pid, EXTRACT(EPOCH FROM clock_timestamp() - a.state_change)"
            " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND a.state = 'idle'"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND l.classid::bigint = ? AND l.objid::bigint = ?",
            (DAEMON_KEY >> 32, DAEMON_KEY & 0xFFFFFFFF),
        ).fetchone()
        if row is None or row[1] is None or float(row[1]) < timeout:
            return None
        # every session of that daemon (its process's name, from the same client address):
        # stopped inside a write, its main session holds the write lock
        session.execute(
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a, pg_stat_activity d"
            " WHERE d.pid = ? AND a.application_name = d.application_name"
            " AND a.client_addr IS NOT DISTINCT FROM d.client_addr AND a.datid = d.datid",
            (row[0],),
        ).fetchall()
        return float(row[1])

    def holds_daemon_lock(self, session: PgConnection) -> bool:
        """Is ``session`` still open and holding the daemon lock?"""
        try:
            row = session.execute(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND classid::bigint = ? AND objid::bigint = ?",
                (DAEMON_KEY >> 32, DAEMON_KEY & 0xFFFFFFFF),
            ).fetchone()
        except _psycopg().Error:
            return False
        return row is not None

    def notify(self, conn: PgConnection, channel: str, payload: str = "") -> None:
        """Wake the listeners of ``channel`` when this transaction commits (not before:
        PostgreSQL delivers a NOTIFY at commit, and drops it on rollback)."""
        conn.execute("SELECT pg_notify(?, ?)", (channel, payload))

    def listener(self, channels: Sequence[str]) -> Listener:
        return Listener(self._open(), channels)

    def unblock(self, conn: PgConnection, pids: Iterable[int]) -> int:
        """Clear the gate of the stopped runners ``pids``: cancel their queued waits for
        it and end the session of one that holds it; how many were cleared."""
        names = [f"sched-{pid}" for pid in pids if pid]
        if not names:
            return 0
        rows = conn.execute(
            "SELECT l.pid, l.granted FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.classid::bigint = ? AND l.objid::bigint = ?"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND a.application_name = ANY(?)",
            (GATE_KEY >> 32, GATE_KEY & 0xFFFFFFFF, names),
        ).fetchall()
        for pid, granted in rows:
            ender = "pg_terminate_backend" if granted else "pg_cancel_backend"
            conn.execute(f"SELECT {ender}(?)", (pid,)).fetchone()
        return len(rows)


@lru_cache(maxsize=256)
def _stamped(sql: str, server: tuple[bool, ...]) -> str:
    """``sql`` with each ``?`` whose parameter is ``SERVER_NOW`` replaced by
    ``STAMP_SQL`` (the registry's statements have no literal ``?``)."""
    parts = sql.split("?")
    if len(parts) != len(server) + 1:
        raise ValueError(f"{len(server)} parameters for {len(parts) - 1} placeholders: {sql}")
    out = [parts[0]]
    for is_server, part in zip(server, parts[1:]):
        out.append(STAMP_SQL if is_server else "?")
        out.append(part)
    return "".join(out)


def _idle():
    return _psycopg().pq.TransactionStatus.IDLE


class Listener:
    """A session that LISTENs: its socket becomes readable when a notification arrives,
    so a process can ``select`` on it beside its own pipes."""

    def __init__(self, raw, channels: Sequence[str]) -> None:
        self.raw = raw
        for channel in channels:  # names are sched's own ("sched_wake", "sched_grant")
            raw.execute(f'LISTEN "{channel}"')

    def fileno(self) -> int:
        return self.raw.pgconn.socket

    def drain(self) -> list[tuple[str, str]]:
        """The (channel, payload) pairs received so far, without waiting."""
        pgconn = self.raw.pgconn
        pgconn.consume_input()
        heard = []
        while (note := pgconn.notifies()) is not None:
            heard.append((note.relname.decode(), note.extra.decode()))
        return heard

    def close(self) -> None:
        self.raw.close()
