"""The SQLite MetaSchedule database: round trips, permissions and concurrent writers."""

import multiprocessing as mp
import os
import stat

import pytest

from simpletvm.database import SQLiteDatabase, connect, database_stats

from .tvm_helpers import tiny_task


def _tiny_workload_and_record():
    """A real workload and a real trace from the tiny model's matmul task."""
    tiny = tiny_task()
    return tiny.spec, tiny.task_mod, tiny.schedule


def _writer(path, target_key, n, tag):
    from tvm.s_tir.meta_schedule.database import TuningRecord

    spec, mod, sch = _tiny_workload_and_record()
    db = SQLiteDatabase(path, target_key=target_key, job_tag=tag)
    workload = db.commit_workload(mod)
    for i in range(n):
        db.commit_tuning_record(
            TuningRecord(sch.trace, workload, [1e-3 * (i + 1)], spec.tvm_target(), None)
        )


def test_round_trip_and_top_k(tmp_path):
    from tvm.s_tir.meta_schedule.database import TuningRecord

    spec, mod, sch = _tiny_workload_and_record()
    path = tmp_path / "db.sqlite"
    db = SQLiteDatabase(path, target_key=spec.key)
    assert not db.has_workload(mod)
    workload = db.commit_workload(mod)
    assert db.has_workload(mod)
    for secs in (3e-3, 1e-3, 2e-3, 1e10):
        db.commit_tuning_record(TuningRecord(sch.trace, workload, [secs], spec.tvm_target(), None))
    top = db.get_top_k(workload, 2)
    assert [float(r.run_secs[0]) for r in top] == pytest.approx([1e-3, 2e-3])
    assert len(db) == 4
    # a fresh object (another process) sees the same, and another target sees nothing
    again = SQLiteDatabase(path, target_key=spec.key)
    assert again.count_records(mod) == 4
    assert again.query_ir_module(mod, spec.tvm_target(), "x") is not None
    other = SQLiteDatabase(path, target_key='{"kind":"cuda"}')
    assert other.get_top_k(workload, 5) == []
    stats = database_stats(path)
    assert stats[0]["records"] == 4
    assert stats[0]["best_ms"] == pytest.approx(1.0)


def test_file_is_private(tmp_path):
    path = tmp_path / "private.db"
    connect(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_two_processes_write_at_once(tmp_path):
    spec, _, _ = _tiny_workload_and_record()
    path = tmp_path / "concurrent.db"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), spec.key, 40, f"p{i}")) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    conn = connect(path)
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 80
    # both processes found the same workload: it was committed once
    assert conn.execute("SELECT COUNT(*) FROM workloads").fetchone()[0] == 1
    tags = dict(conn.execute("SELECT job_tag, COUNT(*) FROM records GROUP BY job_tag"))
    assert tags == {"p0": 40, "p1": 40}


def test_empty_traces_and_nan_times_are_never_the_best(tmp_path):
    from tvm.s_tir import Schedule
    from tvm.s_tir.meta_schedule.database import TuningRecord

    spec, mod, sch = _tiny_workload_and_record()
    db = SQLiteDatabase(tmp_path / "db.sqlite", target_key=spec.key)
    workload = db.commit_workload(mod)
    target = spec.tvm_target()
    db.commit_tuning_record(TuningRecord(sch.trace, workload, [2e-3], target, None))
    # faster, but schedules nothing: TVM's own databases skip it
    db.commit_tuning_record(TuningRecord(Schedule(mod).trace, workload, [1e-6], target, None))
    # a NaN time is a failed run, not a NULL that aborts the commit
    db.commit_tuning_record(TuningRecord(sch.trace, workload, [float("nan")], target, None))
    top = db.get_top_k(workload, 5)
    assert [float(r.run_secs[0]) for r in top] == [2e-3]
    assert db.best_seconds(mod) == pytest.approx(2e-3)

