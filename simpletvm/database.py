"""A MetaSchedule ``Database`` stored in one SQLite file, shared by many processes.

Workloads are keyed by their structural hash (checked with structural equality), and
records by workload and target, so one file can serve several targets and several jobs
at once. Every write is a short ``BEGIN IMMEDIATE`` transaction in WAL mode, so
concurrent writers queue on the busy timeout instead of failing. Each record also
carries the tag of the job that measured it: a restarted job counts its own records to
resume its budget from what the database holds.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from pathlib import Path

import tvm
import tvm_ffi
from tvm.ir import IRModule
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.database import PyDatabase, TuningRecord, Workload

from . import sqlite
from .errors import UserInputError
from .pg import CompatConnection, is_url, redact
from .transfer import structure_key

FAILED_RUN_SECS = 1e10  # what MetaSchedule stores for a candidate that failed

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS workloads (
        id INTEGER PRIMARY KEY,
        shash TEXT NOT NULL,
        mod_json TEXT NOT NULL,
        task_name TEXT,
        created REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS workloads_shash ON workloads(shash)",
    """CREATE TABLE IF NOT EXISTS records (
        id INTEGER PRIMARY KEY,
        workload_id INTEGER NOT NULL REFERENCES workloads(id),
        target TEXT NOT NULL,
        record_json TEXT NOT NULL,
        mean_secs REAL NOT NULL,
        job_tag TEXT,
        created REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS records_lookup ON records(workload_id, target, mean_secs)",
    "CREATE INDEX IF NOT EXISTS records_tag ON records(job_tag)",
    # each task's default (unscheduled) kernel time: a record is applied only if faster
    """CREATE TABLE IF NOT EXISTS defaults (
        workload_id INTEGER NOT NULL REFERENCES workloads(id),
        target TEXT NOT NULL,
        mean_secs REAL NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (workload_id, target))""",
]

# Learning across jobs (costmodel.py, transfer.py): each workload's structure key, the
# cost model's features of every measured candidate, and the shared model per target.
_SHARED_SCHEMA = [
    "ALTER TABLE workloads ADD COLUMN structure TEXT",
    "CREATE INDEX IF NOT EXISTS workloads_structure ON workloads(structure)",
    """CREATE TABLE IF NOT EXISTS cost_features (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        group_hash TEXT NOT NULL,
        n_rows INTEGER NOT NULL,
        n_cols INTEGER NOT NULL,
        features BLOB NOT NULL,
        mean_secs REAL NOT NULL,
        created REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS cost_features_target ON cost_features(target, id)",
    """CREATE TABLE IF NOT EXISTS cost_models (
        target TEXT PRIMARY KEY,
        trained_on INTEGER NOT NULL,
        last_feature_id INTEGER NOT NULL,
        booster BLOB NOT NULL,
        train_seconds REAL NOT NULL,
        trained_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS cost_model_claims (
        target TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        until REAL NOT NULL)""",
]


MIGRATIONS = [("0001_tuning_schema", _SCHEMA), ("0002_shared_model", _SHARED_SCHEMA)]


def connect(path: str | Path) -> sqlite3.Connection:
    """Open the tuning database: a SQLite file (created 0600 if new) with WAL and a busy
    timeout, or a ``postgresql://`` URL (``pg.CompatConnection``: the same statements);
    the schema is migrated either way."""
    if is_url(path):
        try:
            conn = CompatConnection(path, timeout=30.0)
            tables = {r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()")}
            if tables and "workloads" not in tables:
                conn.close()
                raise UserInputError(
                    f"{redact(path)} holds another program's tables (a sched registry?), "
                    "not a tuning database; give the tuning database a database of its own "
                    "(createdb tuning)")
            sqlite.migrate(conn, MIGRATIONS)
        except sqlite3.Error as exc:
            raise UserInputError(f"cannot open tuning database {redact(path)}: {exc}; check "
                                 "that the server runs and the URL is right") from None
        return conn
    path = Path(path)
    try:
        conn = sqlite.connect(path, timeout=30.0)
        _set_up(conn)
    except (OSError, sqlite3.Error) as exc:
        raise UserInputError(f"cannot open tuning database '{path}': {exc}; "
                             "choose a writable path with --db") from None
    return conn


def _set_up(conn: sqlite3.Connection) -> None:
    """WAL mode and the schema (``simpletvm.sqlite``)."""
    sqlite.use_wal(conn)
    sqlite.migrate(conn, MIGRATIONS)


def record_json(record: TuningRecord):
    """The record as plain JSON, the way TVM's own JSON database writes it.

    ``TuningRecord.as_json`` cannot convert a trace that rewrites a weight layout: its
    ``TransformLayout`` step carries an ``IndexMap``, which TVM's C++ JSON writer stores as
    the string of ``tvm.ir.save_json`` and ``TuningRecord.from_json`` reads back so.
    """
    from tvm.s_tir.meta_schedule import _ffi_api

    return _plain(_ffi_api.TuningRecordAsJSON(record))


def _plain(obj):
    from tvm.ir import Array, Map
    from tvm.tirx import FloatImm, IntImm

    if obj is None or isinstance(obj, int | float):
        return obj
    if isinstance(obj, IntImm | FloatImm):
        return obj.value
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, Array):
        return [_plain(i) for i in obj]
    if isinstance(obj, Map):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    return tvm.ir.save_json(obj)  # an IndexMap, as TVM's JSON database stores it


def _mean(run_secs) -> float:
    """The mean run time; a run with no time or a NaN is a failed run."""
    values = [float(v) for v in run_secs] if run_secs else []
    if not values or any(math.isnan(v) for v in values):
        return FAILED_RUN_SECS
    return sum(values) / len(values)


# A record whose trace has no instruction schedules nothing: TVM's own databases skip it
# (Relax would mark the function scheduled while no schedule was applied).
_HAS_TRACE = "json_array_length(record_json, '$[0][0]') > 0"
_HAS_TRACE_PG = "json_array_length((record_json::json)->0->0) > 0"  # the same, PostgreSQL's


@derived_object
class SQLiteDatabase(PyDatabase):
    """See the module docstring. ``target_key`` restricts reads to one target. ``path``
    may be a ``postgresql://`` URL: the same class is then the PostgreSQL twin, with the
    same statements (``pg.CompatConnection``), which many hosts can share."""

    def __init__(self, path: str | Path, *, target_key: str | None = None,
                 job_tag: str | None = None) -> None:
        super().__init__()
        self.path = str(path)
        self.target_key = target_key
        self.job_tag = job_tag
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        # shash -> [(IRModule, Workload, id)]: avoids re-parsing workloads on every query
        self._workloads: dict[str, list[tuple[IRModule, Workload, int]]] = {}
        self._ids: dict[int, Workload] = {}
        self._has_trace = _HAS_TRACE_PG if is_url(self.path) else _HAS_TRACE
        self.conn()

    # -- connection, tied to the pid so a forked child never reuses its parent's
    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self._conn = connect(self.path)
            self._pid = os.getpid()
        return self._conn

    # -- workloads
    def _lookup(self, mod: IRModule) -> tuple[Workload, int] | None:
        shash = str(tvm_ffi.structural_hash(mod))
        for cached_mod, workload, wid in self._workloads.get(shash, []):
            if tvm_ffi.structural_equal(cached_mod, mod):
                return workload, wid
        rows = self.conn().execute(
            "SELECT id, mod_json FROM workloads WHERE shash = ?", (shash,)).fetchall()
        known = {wid for _, _, wid in self._workloads.get(shash, [])}
        for wid, mod_json in rows:
            if wid in known:
                continue
            stored = tvm.ir.load_json(mod_json)
            workload = Workload(stored)
            self._workloads.setdefault(shash, []).append((stored, workload, wid))
            self._ids[wid] = workload
            if tvm_ffi.structural_equal(stored, mod):
                return workload, wid
        return None

    def has_workload(self, mod: IRModule) -> bool:
        return self._lookup(mod) is not None

    def commit_workload(self, mod: IRModule) -> Workload:
        found = self._lookup(mod)
        if found is not None:
            return found[0]
        shash = str(tvm_ffi.structural_hash(mod))
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            # another process may have committed it since our read
            for wid, mod_json in conn.execute(
                    "SELECT id, mod_json FROM workloads WHERE shash = ?", (shash,)).fetchall():
                if tvm_ffi.structural_equal(tvm.ir.load_json(mod_json), mod):
                    conn.execute("COMMIT")
                    return self._remember(shash, mod, wid)
            (wid,) = conn.execute(
                "INSERT INTO workloads (shash, mod_json, structure, created) "
                "VALUES (?, ?, ?, ?) RETURNING id",
                (shash, tvm.ir.save_json(mod), structure_key(mod), time.time())).fetchone()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return self._remember(shash, mod, wid)

    def _remember(self, shash: str, mod: IRModule, wid: int) -> Workload:
        workload = Workload(mod)
        self._workloads.setdefault(shash, []).append((mod, workload, wid))
        self._ids[wid] = workload
        return workload

    def _workload_id(self, workload: Workload) -> int:
        found = self._lookup(workload.mod)
        if found is None:
            self.commit_workload(workload.mod)
            found = self._lookup(workload.mod)
        return found[1]

    # -- records
    def commit_tuning_record(self, record: TuningRecord) -> None:
        wid = self._workload_id(record.workload)
        # this database's target when it has one, else the record's own, canonicalised
        target_key = self.target_key
        if target_key is None:
            target_key = (json.dumps(json.loads(str(record.target)), sort_keys=True,
                                     separators=(",", ":")) if record.target is not None else "")
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO records (workload_id, target, record_json, mean_secs, job_tag, "
                "created) VALUES (?, ?, ?, ?, ?, ?)",
                (wid, target_key, json.dumps(record_json(record)), _mean(record.run_secs),
                 self.job_tag, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _records(self, sql_tail: str, params: tuple) -> list[TuningRecord]:
        sql = "SELECT workload_id, record_json FROM records " + sql_tail
        out = []
        for wid, record_json in self.conn().execute(sql, params).fetchall():
            workload = self._ids.get(wid) or self._load_workload(wid)
            out.append(TuningRecord.from_json(json.loads(record_json), workload))
        return out

    def _load_workload(self, wid: int) -> Workload:
        (mod_json,) = self.conn().execute(
            "SELECT mod_json FROM workloads WHERE id = ?", (wid,)).fetchone()
        mod = tvm.ir.load_json(mod_json)
        return self._remember(str(tvm_ffi.structural_hash(mod)), mod, wid)

    def get_top_k(self, workload: Workload, top_k: int) -> list[TuningRecord]:
        found = self._lookup(workload.mod)
        if found is None or top_k <= 0:
            return []
        if self.target_key is None:
            return self._records(f"WHERE workload_id = ? AND mean_secs < ? AND {self._has_trace} "
                                 "ORDER BY mean_secs, id LIMIT ?",
                                 (found[1], FAILED_RUN_SECS, int(top_k)))
        return self._records("WHERE workload_id = ? AND target = ? AND mean_secs < ? "
                             f"AND {self._has_trace} ORDER BY mean_secs, id LIMIT ?",
                             (found[1], self.target_key, FAILED_RUN_SECS, int(top_k)))

    def get_all_tuning_records(self) -> list[TuningRecord]:
        if self.target_key is None:
            return self._records("ORDER BY id", ())
        return self._records("WHERE target = ? ORDER BY id", (self.target_key,))

    def query_tuning_record(self, mod: IRModule, target, workload_name: str):
        found = self._lookup(mod)
        if found is None:
            return None
        records = self.get_top_k(found[0], 1)
        return records[0] if records else None

    def query_schedule(self, mod: IRModule, target, workload_name: str):
        record = self.query_tuning_record(mod, target, workload_name)
        if record is None:
            return None
        from tvm.s_tir.schedule import Schedule

        sch = Schedule(record.workload.mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        return sch

    def query_ir_module(self, mod: IRModule, target, workload_name: str):
        sch = self.query_schedule(mod, target, workload_name)
        return sch.mod if sch is not None else None

    def __len__(self) -> int:
        if self.target_key is None:
            return self.conn().execute("SELECT COUNT(*) FROM records").fetchone()[0]
        return self.conn().execute("SELECT COUNT(*) FROM records WHERE target = ?",
                                   (self.target_key,)).fetchone()[0]

    # -- helpers for the engine and `simpletvm db stats`, not part of MetaSchedule's API
    def count_records(self, mod: IRModule, *, job_tag: str | None = None) -> int:
        found = self._lookup(mod)
        if found is None:
            return 0
        sql = "SELECT COUNT(*) FROM records WHERE workload_id = ?"
        params: tuple = (found[1],)
        if self.target_key is not None:
            sql += " AND target = ?"
            params += (self.target_key,)
        if job_tag is not None:
            sql += " AND job_tag = ?"
            params += (job_tag,)
        return self.conn().execute(sql, params).fetchone()[0]

    def best_seconds(self, mod: IRModule) -> float | None:
        records = self.get_top_k(Workload(mod), 1) if self.has_workload(mod) else []
        return _mean(records[0].run_secs) if records else None

    def record_default_seconds(self, mod: IRModule, seconds: float) -> None:
        """Remember the task's default-schedule time for this target (the latest wins)."""
        wid = self._workload_id(Workload(mod))
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO defaults (workload_id, target, mean_secs, created) "
                     "VALUES (?, ?, ?, ?) ON CONFLICT (workload_id, target) DO UPDATE SET "
                     "mean_secs = excluded.mean_secs, created = excluded.created",
                     (wid, self.target_key or "", float(seconds), time.time()))
        conn.execute("COMMIT")

    def default_seconds(self, mod: IRModule) -> float | None:
        found = self._lookup(mod)
        if found is None:
            return None
        row = self.conn().execute(
            "SELECT mean_secs FROM defaults WHERE workload_id = ? AND target = ?",
            (found[1], self.target_key or "")).fetchone()
        return row[0] if row else None

    def similar_workloads(self, mod: IRModule, *, limit: int) -> list[Workload]:
        """Other workloads of ``mod``'s structure (``transfer.structure_key``) that have
        successful records for this target, the most measured first."""
        self._fill_structure_keys()
        found = self._lookup(mod)
        own = found[1] if found is not None else -1
        rows = self.conn().execute(
            "SELECT w.id FROM workloads w JOIN records r ON r.workload_id = w.id "
            "WHERE w.structure = ? AND w.id != ? AND r.target = ? AND r.mean_secs < ? "
            "GROUP BY w.id ORDER BY COUNT(r.id) DESC, w.id LIMIT ?",
            (structure_key(mod), own, self.target_key or "", FAILED_RUN_SECS,
             int(limit))).fetchall()
        return [self._ids.get(wid) or self._load_workload(wid) for (wid,) in rows]

    def _fill_structure_keys(self) -> None:
        """Workloads stored before structure keys existed get theirs (once)."""
        rows = self.conn().execute(
            "SELECT id, mod_json FROM workloads WHERE structure IS NULL").fetchall()
        if not rows:
            return
        keys = [(structure_key(tvm.ir.load_json(mod_json)), wid) for wid, mod_json in rows]
        with sqlite.immediate(self.conn()):
            self.conn().executemany(
                "UPDATE workloads SET structure = ? WHERE id = ? AND structure IS NULL", keys)

    def name_workload(self, mod: IRModule, task_name: str) -> None:
        """Remember a readable task name for `db stats` (first name wins)."""
        found = self._lookup(mod)
        if found is None:
            return
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE workloads SET task_name = ? WHERE id = ? AND task_name IS NULL",
                     (task_name, found[1]))
        conn.execute("COMMIT")


def open_existing(path: str | Path) -> sqlite3.Connection:
    if is_url(path):
        return connect(path)
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"tuning database '{path}' does not exist; "
                             "pass the path given to `simpletvm tune --db`")
    return connect(path)


def shared_model_stats(path: str | Path) -> list[dict]:
    """Per target: the shared cost model (costmodel.py), for `simpletvm db stats`."""
    from .costmodel import model_stats

    conn = open_existing(path)
    try:
        rows = model_stats(conn)
    finally:
        conn.close()
    for row in rows:
        row["target"] = json.loads(row["target_config"]).get("kind", "?")
    return rows


def database_stats(path: str | Path) -> list[dict]:
    """Per workload and target: record count and best latency, for `simpletvm db stats`."""
    conn = open_existing(path)
    rows = conn.execute(
        "SELECT w.id, COALESCE(w.task_name, ?), r.target, COUNT(r.id), "
        "MIN(CASE WHEN r.mean_secs < ? THEN r.mean_secs END) "
        "FROM workloads w LEFT JOIN records r ON r.workload_id = w.id "
        "GROUP BY w.id, r.target ORDER BY w.id", ("?", FAILED_RUN_SECS)).fetchall()
    conn.close()
    out = []
    for wid, name, target, count, best in rows:
        kind = json.loads(target).get("kind", "?") if target else None
        out.append({"workload": wid, "task": name, "target": kind, "target_config": target,
                    "records": count, "best_ms": best * 1e3 if best is not None else None})
    return out
