"""The results store: one SQLite file, and the only module that writes SQL for it.

Writes open with BEGIN IMMEDIATE and stay short; the file is in WAL mode with a busy
timeout so a report can read while a run writes. A point is claimed by a process (pid
plus start time) before it runs and is recorded in one transaction when it ends, so a
killed run leaves a claim that the next run can tell is dead and take over, and nothing
is ever recorded twice.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any

from simpletvm import sqlite

from . import SuperbError
from .inputs import file_kind
from .outcome import PointOutcome


class PointStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class RunStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"


MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001_initial",
        [
            """CREATE TABLE runs (
            id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL,
            status TEXT NOT NULL, file TEXT, experiments TEXT, pid INTEGER,
            environment TEXT)""",
            """CREATE TABLE points (
            key TEXT PRIMARY KEY, experiment TEXT NOT NULL, params TEXT NOT NULL,
            kind TEXT NOT NULL, strategy TEXT, jobs INTEGER, target TEXT,
            trials_budget INTEGER, per_round INTEGER, seed INTEGER, repeat INTEGER,
            status TEXT NOT NULL, run_id INTEGER REFERENCES runs(id),
            owner_pid INTEGER, owner_started REAL, work_dir TEXT,
            attempts INTEGER NOT NULL DEFAULT 0, error TEXT, started REAL, finished REAL,
            wall_s REAL, tuning_s REAL, makespan_s REAL, trials INTEGER,
            stage_seconds TEXT, detail TEXT)""",
            "CREATE INDEX points_experiment ON points(experiment)",
            """CREATE TABLE job_results (
            point_key TEXT NOT NULL REFERENCES points(key), job_index INTEGER NOT NULL,
            model TEXT, status TEXT, error TEXT, tuned_ms REAL, untuned_ms REAL,
            onnxruntime_ms REAL, trials INTEGER, tuning_s REAL, stage_seconds TEXT,
            PRIMARY KEY (point_key, job_index))""",
            """CREATE TABLE resources (
            point_key TEXT NOT NULL REFERENCES points(key), resource TEXT NOT NULL,
            busy REAL, idle REAL, PRIMARY KEY (point_key, resource))""",
            """CREATE TABLE events (
            id INTEGER PRIMARY KEY, point_key TEXT NOT NULL REFERENCES points(key),
            job_index INTEGER, kind TEXT, resource TEXT, start REAL, end REAL)""",
            "CREATE INDEX events_point ON events(point_key)",
            """CREATE TABLE convergence (
            id INTEGER PRIMARY KEY, point_key TEXT NOT NULL REFERENCES points(key),
            job_index INTEGER, trials INTEGER, seconds REAL, best_ms REAL)""",
            "CREATE INDEX convergence_point ON convergence(point_key)",
        ],
    ),
    (
        "0002_tuned_std",
        ["ALTER TABLE job_results ADD COLUMN tuned_std_ms REAL"],
    ),
    (  # the units an event held (cpu slots): NULL in older files, read as 1
        "0003_event_amount",
        ["ALTER TABLE events ADD COLUMN amount INTEGER"],
    ),
]
_CHILD_TABLES = ("job_results", "resources", "events", "convergence")
_CHUNK = 500
_MAGIC = b"SQLite format 3\x00"
_WHAT_TO_DO = "pass --db with superb's results file (or a new path)"


class LostClaimError(RuntimeError):
    """Another process owns this point now; recording it here would record it twice."""


# (pid, resolved path) -> SQLite connections this process holds to that file. Reading the
# file through another descriptor and closing it would drop the process's POSIX locks on
# it, SQLite's included (another process could then checkpoint under our reader), so
# check_file reads nothing of a file this process already has open.
_HELD: dict[tuple[int, str], int] = {}


def _hold(path: Path, delta: int) -> None:
    key = (os.getpid(), str(path.resolve()))
    _HELD[key] = _HELD.get(key, 0) + delta


class ResultsDB:
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        check_file(self.path)
        try:
            self.migrate()
        except (OSError, sqlite3.OperationalError) as exc:
            self.close()
            raise SuperbError(
                f"cannot open results database {self.path}: {exc}; choose a writable path with --db"
            ) from None

    # -- connection ------------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        """One connection per process: never reuse one across fork."""
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite.connect(self.path, timeout=self.busy_timeout_ms / 1000)
            conn.row_factory = sqlite3.Row
            sqlite.use_wal(conn)
            conn.execute("PRAGMA foreign_keys = ON")
            self._conn, self._pid = conn, os.getpid()
            _hold(self.path, +1)
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
            _hold(self.path, -1)
        self._conn = None

    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with sqlite.immediate(self.conn) as conn:
            return work(conn)

    def migrate(self) -> list[str]:
        """Apply the migrations this file lacks; returns their names."""
        return sqlite.migrate(self.conn, MIGRATIONS)

    def migrations(self) -> list[str]:
        return [r["name"] for r in self.conn.execute("SELECT name FROM migrations ORDER BY name")]

    # -- runs ------------------------------------------------------------------------
    def start_run(self, *, file: str, experiments: list[str], environment: dict, now: float) -> int:
        return self._write(
            lambda c: (
                c.execute(
                    "INSERT INTO runs (started, status, file, experiments, pid, environment) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        now,
                        RunStatus.RUNNING.value,
                        file,
                        json.dumps(experiments),
                        os.getpid(),
                        json.dumps(environment),
                    ),
                ).lastrowid
            )
        )

    def finish_run(self, run_id: int, status: RunStatus, *, now: float) -> None:
        self._write(
            lambda c: c.execute(
                "UPDATE runs SET finished = ?, status = ? WHERE id = ?", (now, status.value, run_id)
            )
        )

    def runs(self) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM runs ORDER BY id").fetchall()
        return [_decode(r, "experiments", "environment") for r in rows]

    # -- points ----------------------------------------------------------------------
    def register_points(self, points: Iterable[Any]) -> int:
        """Add points not seen before as pending; returns how many were new."""
        rows = [
            (
                p.key,
                p.experiment,
                json.dumps(p.params(), sort_keys=True),
                p.kind.value,
                p.strategy,
                p.jobs,
                p.target,
                p.trials,
                p.per_round,
                p.seed,
                p.repeat,
                PointStatus.PENDING.value,
            )
            for p in points
        ]
        return self._write(
            lambda c: sum(
                c.execute(
                    "INSERT OR IGNORE INTO points (key, experiment, params, kind, strategy, jobs, "
                    "target, trials_budget, per_round, seed, repeat, status) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                ).rowcount
                for row in rows
            )
        )

    def statuses(self, keys: Iterable[str]) -> dict[str, PointStatus]:
        return {
            r["key"]: PointStatus(r["status"])
            for r in self._select_in("SELECT key, status FROM points WHERE key IN ({})", list(keys))
        }

    def claim(
        self,
        key: str,
        *,
        run_id: int,
        owner: tuple[int, float],
        work_dir: str,
        now: float,
        retry_failed: bool = False,
        owner_alive: Callable[[int, float], bool],
    ) -> tuple[bool, str | None]:
        """Take a point to run: (claimed, the work dir of a dead earlier attempt)."""

        def take(conn: sqlite3.Connection) -> tuple[bool, str | None]:
            row = conn.execute(
                "SELECT status, owner_pid, owner_started, work_dir FROM points WHERE key = ?",
                (key,),
            ).fetchone()
            if row is None:
                return False, None
            status = PointStatus(row["status"])
            if status is PointStatus.DONE:
                return False, None
            if status is PointStatus.FAILED and not retry_failed:
                return False, None
            previous = None
            if status is PointStatus.RUNNING:
                if owner_alive(row["owner_pid"], row["owner_started"]):
                    return False, None
                previous = row["work_dir"]
            conn.execute(
                "UPDATE points SET status = ?, run_id = ?, owner_pid = ?, owner_started = ?, "
                "work_dir = ?, attempts = attempts + 1, started = ?, error = NULL "
                "WHERE key = ?",
                (PointStatus.RUNNING.value, run_id, owner[0], owner[1], work_dir, now, key),
            )
            return True, previous

        return self._write(take)

    def release(self, key: str, *, owner: tuple[int, float]) -> None:
        """Give an interrupted point back so the next run starts it again."""
        self._write(
            lambda c: c.execute(
                "UPDATE points SET status = ?, owner_pid = NULL, owner_started = NULL "
                "WHERE key = ? AND status = ? AND owner_pid = ? AND owner_started = ?",
                (PointStatus.PENDING.value, key, PointStatus.RUNNING.value, *owner),
            )
        )

    def finish_point(
        self,
        key: str,
        *,
        owner: tuple[int, float],
        outcome: PointOutcome,
        error: str | None,
        now: float,
    ) -> PointStatus:
        """Record a point, with everything it measured, in one transaction."""
        status = PointStatus.FAILED if error else PointStatus.DONE

        def record(conn: sqlite3.Connection) -> PointStatus:
            _update_point(conn, key, owner, status, error, outcome, now)
            for table in _CHILD_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE point_key = ?", (key,))
            _insert_measurements(conn, key, outcome)
            return status

        return self._write(record)

    # -- reading ---------------------------------------------------------------------
    def points(
        self, *, experiments: list[str] | None = None, statuses: list[PointStatus] | None = None
    ) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM points ORDER BY rowid").fetchall()
        wanted = {s.value for s in statuses} if statuses else None
        return [
            _decode(r, "params", "stage_seconds", "detail")
            for r in rows
            if (not experiments or r["experiment"] in experiments)
            and (wanted is None or r["status"] in wanted)
        ]

    def job_results(self, keys: list[str]) -> list[dict]:
        return [
            _decode(r, "stage_seconds")
            for r in self._select_in(
                "SELECT * FROM job_results WHERE point_key IN ({}) ORDER BY point_key, job_index",
                keys,
            )
        ]

    def resources(self, keys: list[str]) -> list[dict]:
        return [
            dict(r)
            for r in self._select_in(
                "SELECT * FROM resources WHERE point_key IN ({}) ORDER BY point_key, resource", keys
            )
        ]

    def events(self, keys: list[str]) -> list[dict]:
        return [
            dict(r)
            for r in self._select_in(
                "SELECT * FROM events WHERE point_key IN ({}) ORDER BY point_key, start, id", keys
            )
        ]

    def convergence(self, keys: list[str]) -> list[dict]:
        return [
            dict(r)
            for r in self._select_in(
                "SELECT * FROM convergence WHERE point_key IN ({}) "
                "ORDER BY point_key, job_index, trials, id",
                keys,
            )
        ]

    def counts(self, key: str) -> dict[str, int]:
        """Rows per table for one point: what tests use to prove nothing doubled."""
        return {
            table: self.conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE point_key = ?", (key,)
            ).fetchone()[0]
            for table in _CHILD_TABLES
        }

    def _select_in(self, sql: str, keys: list[str]) -> list[sqlite3.Row]:
        rows: list[sqlite3.Row] = []
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            rows.extend(self.conn.execute(sql.format(",".join("?" * len(chunk))), chunk))
        return rows


def check_file(path: Path) -> None:
    """Refuse, before SQLite writes a byte, a file that is not superb's results: not a
    regular file, not SQLite, truncated, damaged, or another program's database. A
    missing or empty file is fine: it becomes a new results database. A file this
    process already holds a connection to was checked when it was opened (see _HELD)."""
    if _HELD.get((os.getpid(), str(path.resolve())), 0) > 0:
        return
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SuperbError(f"cannot read results database {path}: {exc.strerror}") from None
    kind = file_kind(info.st_mode)
    if kind:
        raise SuperbError(f"results database {path} is {kind}, not a file; {_WHAT_TO_DO}")
    if info.st_size == 0:
        return
    _check_header(path, info.st_size)
    _check_contents(path)


def _check_header(path: Path, size: int) -> None:
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        raise SuperbError(f"cannot read results database {path}: {exc.strerror}") from None
    if len(header) < 100 or not header.startswith(_MAGIC):
        raise SuperbError(f"results database {path} is not an SQLite file; {_WHAT_TO_DO}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid = pages and header[24:28] == header[92:96]  # SQLite's rule for this field
    # with a -wal file a writer may be checkpointing (page 1 lands before the file grows):
    # then SQLite's own check (_check_contents) decides
    wal = os.path.lexists(f"{path}-wal")
    if valid and not wal and size < pages * page_size:
        raise SuperbError(
            f"results database {path} is truncated ({size:,} bytes of {pages * page_size:,}); "
            f"restore it from a backup, or {_WHAT_TO_DO}"
        )


def _check_contents(path: Path) -> None:
    """SQLite's quick check, and a ``points`` table, through a read-only connection."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:  # locked, or not readable: not its contents
        raise SuperbError(
            f"cannot open results database {path} (SQLite: {exc}); check its permissions, "
            f"or {_WHAT_TO_DO}"
        ) from None
    except sqlite3.DatabaseError as exc:
        check, tables = str(exc), set()
    if check != "ok":
        raise damaged(path, check)
    if tables and "points" not in tables:
        raise SuperbError(
            f"{path} is an SQLite database but not superb's results (it has no 'points' "
            f"table); {_WHAT_TO_DO}"
        )


def damaged(path: Path, detail: str) -> SuperbError:
    """The error for a results database SQLite finds damaged (``detail``: its words)."""
    return SuperbError(
        f"results database {path} is damaged (SQLite: {' '.join(detail.split())}); "
        f"restore it from a backup, or {_WHAT_TO_DO}"
    )


def _update_point(
    conn: sqlite3.Connection,
    key: str,
    owner: tuple[int, float],
    status: PointStatus,
    error: str | None,
    outcome: PointOutcome,
    now: float,
) -> None:
    """The point's own row, only while ``owner`` still holds its claim."""
    updated = conn.execute(
        "UPDATE points SET status = ?, error = ?, finished = ?, wall_s = ?, "
        "tuning_s = ?, makespan_s = ?, trials = ?, stage_seconds = ?, detail = ?, "
        "owner_pid = NULL, owner_started = NULL "
        "WHERE key = ? AND status = ? AND owner_pid = ? AND owner_started = ?",
        (
            status.value,
            error,
            now,
            outcome.wall_s,
            outcome.tuning_s,
            outcome.makespan_s,
            outcome.trials,
            json.dumps(outcome.stage_seconds),
            json.dumps(outcome.detail, default=str),
            key,
            PointStatus.RUNNING.value,
            *owner,
        ),
    ).rowcount
    if updated != 1:
        raise LostClaimError(f"point {key} is no longer claimed by this process")


def _insert_measurements(conn: sqlite3.Connection, key: str, outcome: PointOutcome) -> None:
    """The point's jobs, resources, events and convergence."""
    conn.executemany(
        "INSERT INTO job_results (point_key, job_index, model, status, error, tuned_ms, "
        "untuned_ms, onnxruntime_ms, trials, tuning_s, stage_seconds, tuned_std_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (key, j.index, j.model, j.status, j.error, j.tuned_ms, j.untuned_ms,
             j.onnxruntime_ms, j.trials, j.tuning_s, json.dumps(j.stage_seconds),
             j.tuned_std_ms)
            for j in outcome.jobs
        ],
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO resources (point_key, resource, busy, idle) VALUES (?, ?, ?, ?)",
        [(key, name, use.get("busy"), use.get("idle")) for name, use in outcome.resources.items()],
    )
    conn.executemany(
        "INSERT INTO events (point_key, job_index, kind, resource, start, end, amount) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(key, e.job_index, e.kind, e.resource, e.start, e.end, e.amount) for e in outcome.events],
    )
    conn.executemany(
        "INSERT INTO convergence (point_key, job_index, trials, seconds, best_ms) "
        "VALUES (?, ?, ?, ?, ?)",
        [(key, c.job_index, c.trials, c.seconds, c.best_ms) for c in outcome.convergence],
    )


def _decode(row: sqlite3.Row, *json_columns: str) -> dict:
    data = dict(row)
    for column in json_columns:
        if data.get(column) is not None:
            data[column] = json.loads(data[column])
    return data
