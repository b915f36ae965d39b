"""The MetaSchedule tuning database, a SQLite file or (the same class on a
``postgresql://`` URL) a PostgreSQL database that many hosts share: round trips,
permissions and concurrent writers, on both backends."""

import multiprocessing as mp
import os
import stat

import pytest

from simpletvm.database import SQLiteDatabase, connect, database_stats

from .tvm_helpers import tiny_task


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    """A fresh tuning database on each backend: a file path, or a new database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "db.sqlite")
    return request.getfixturevalue("pg_server").database()


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


def test_round_trip_and_top_k(location):
    from tvm.s_tir.meta_schedule.database import TuningRecord

    spec, mod, sch = _tiny_workload_and_record()
    path = location
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


@pytest.mark.parametrize("writers", [2, 4])
def test_processes_write_at_once_and_commit_the_workload_once(location, writers):
    spec, _, _ = _tiny_workload_and_record()
    path = location
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), spec.key, 40, f"p{i}"))
             for i in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * writers
    conn = connect(path)
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 40 * writers
    # every process found the same workload: it was committed once
    assert conn.execute("SELECT COUNT(*) FROM workloads").fetchone()[0] == 1
    tags = dict(conn.execute("SELECT job_tag, COUNT(*) FROM records GROUP BY job_tag"))
    assert tags == {f"p{i}": 40 for i in range(writers)}


def test_empty_traces_and_nan_times_are_never_the_best(location):
    from tvm.s_tir import Schedule
    from tvm.s_tir.meta_schedule.database import TuningRecord

    spec, mod, sch = _tiny_workload_and_record()
    db = SQLiteDatabase(location, target_key=spec.key)
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



def test_the_metaschedule_database_cases_hold_on_both_backends(location):
    """The cases of TVM's own database tests that apply to a shared database
    (tests/python/s_tir/meta_schedule/test_meta_schedule_database.py in TVM): a committed
    workload is found and another is not; a record comes back as committed; the top k
    are sorted by mean run time; a new database object on the same storage (a reload,
    or another host) sees the same."""
    from tvm.s_tir.meta_schedule.database import TuningRecord

    tiny = tiny_task()
    spec, mod, sch, other = tiny.spec, tiny.task_mod, tiny.schedule, tiny.relax_mod
    target = spec.tvm_target()
    db = SQLiteDatabase(location, target_key=spec.key)
    workload = db.commit_workload(mod)
    assert db.has_workload(mod) and not db.has_workload(other)
    assert db.get_top_k(db.commit_workload(other), 3) == []  # a workload with no records
    runs = [[7.0, 8.0, 9.0], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [1.1, 1.2, 600.0],
            [1.0, 100.0, 6.0], [4.0, 9.0, 8.0]]  # fmt: skip
    for run_secs in runs:
        db.commit_tuning_record(TuningRecord(sch.trace, workload, run_secs, target, None))
    assert len(db) == len(runs)
    for seen in (db, SQLiteDatabase(location, target_key=spec.key)):
        top = seen.get_top_k(seen.commit_workload(mod), 2)
        assert [[float(s) for s in r.run_secs] for r in top] == [runs[1], runs[2]]
        assert str(top[0].trace) == str(sch.trace)
        assert str(top[0].target) == str(target)
        assert seen.query_ir_module(mod, target, "main") is not None


def test_a_registry_database_is_not_taken_for_a_tuning_database(pg_server):
    from simpletvm.errors import UserInputError
    from tvmsched.registry import Registry

    url = pg_server.database()
    Registry(url).check()  # sched's tables
    with pytest.raises(UserInputError, match="not a tuning database"):
        connect(url)
