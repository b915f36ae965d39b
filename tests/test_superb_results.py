"""The results store: file mode, WAL, migrations, claims, one-transaction recording."""

from __future__ import annotations

import os
import stat
import textwrap

import pytest

from superb.matrix import expand
from superb.outcome import ConvergencePoint, Event, JobOutcome, PointOutcome
from superb.results import MIGRATIONS, LostClaimError, PointStatus, ResultsDB, RunStatus
from superb.schema import parse

OWNER = (os.getpid(), 123.0)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "results.db"


@pytest.fixture
def fresh_db(db_path):
    db = ResultsDB(db_path)
    yield db
    db.close()


@pytest.fixture
def points():
    (exp,) = parse(
        textwrap.dedent("""
        [[experiment]]
        name = "e"
        mock = "rounds=1"
        jobs = [2]
        strategy = ["sequential", "interleaved"]
    """),
        source="b.toml",
    ).experiments
    return expand(exp)


def outcome(jobs: int = 2) -> PointOutcome:
    return PointOutcome(
        wall_s=2.0,
        makespan_s=1.5,
        jobs=[
            JobOutcome(i, "m", tuned_ms=0.5, trials=16, stage_seconds={"search": 0.1})
            for i in range(jobs)
        ],
        resources={"cpu": {"busy": 0.8, "idle": 0.2}, "gpu0": {"busy": 0.5, "idle": 0.5}},
        events=[Event(i, "search", "cpu", 0.0, 0.1) for i in range(jobs)],
        convergence=[ConvergencePoint(i, 16, 0.1, 0.5) for i in range(jobs)],
    )


def test_file_is_private_wal_and_migrated(fresh_db, db_path):
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert fresh_db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert fresh_db.conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    assert fresh_db.migrations() == [name for name, _ in MIGRATIONS]
    assert ResultsDB(db_path).migrate() == []  # applied once only


def test_claim_finish_and_skip(fresh_db, points):
    run = fresh_db.start_run(file="b.toml", experiments=["e"], environment={}, now=1.0)
    assert fresh_db.register_points(points) == 2
    assert fresh_db.register_points(points) == 0
    key = points[0].key
    claimed, previous = fresh_db.claim(
        key, run_id=run, owner=OWNER, work_dir="/w", now=2.0, owner_alive=lambda pid, started: True
    )
    assert claimed and previous is None
    # a live owner keeps its claim
    assert fresh_db.claim(
        key,
        run_id=run,
        owner=(1, 1.0),
        work_dir="/x",
        now=3.0,
        owner_alive=lambda pid, started: True,
    ) == (False, None)
    status = fresh_db.finish_point(key, owner=OWNER, outcome=outcome(), error=None, now=4.0)
    assert status is PointStatus.DONE
    assert fresh_db.counts(key) == {"job_results": 2, "resources": 2, "events": 2, "convergence": 2}
    # done points are never claimed again
    assert fresh_db.claim(
        key, run_id=run, owner=OWNER, work_dir="/y", now=5.0, owner_alive=lambda pid, started: False
    ) == (False, None)
    fresh_db.finish_run(run, RunStatus.FINISHED, now=6.0)
    assert fresh_db.runs()[0]["status"] == "finished"


def test_dead_owner_is_taken_over_and_stale_owner_cannot_record(fresh_db, points):
    run = fresh_db.start_run(file="b.toml", experiments=["e"], environment={}, now=1.0)
    fresh_db.register_points(points)
    key = points[0].key
    dead = (999999, 1.0)
    fresh_db.claim(
        key, run_id=run, owner=dead, work_dir="/old", now=2.0, owner_alive=lambda pid, started: True
    )
    claimed, previous = fresh_db.claim(
        key,
        run_id=run,
        owner=OWNER,
        work_dir="/new",
        now=3.0,
        owner_alive=lambda pid, started: False,
    )
    assert claimed and previous == "/old"
    with pytest.raises(LostClaimError):
        fresh_db.finish_point(key, owner=dead, outcome=outcome(), error=None, now=4.0)
    assert fresh_db.counts(key)["job_results"] == 0
    fresh_db.finish_point(key, owner=OWNER, outcome=outcome(), error=None, now=5.0)
    assert fresh_db.points()[0]["attempts"] == 2


def test_failed_point_keeps_error_and_partial_data(fresh_db, points):
    run = fresh_db.start_run(file="b.toml", experiments=["e"], environment={}, now=1.0)
    fresh_db.register_points(points)
    key = points[1].key
    fresh_db.claim(
        key, run_id=run, owner=OWNER, work_dir="/w", now=2.0, owner_alive=lambda pid, started: False
    )
    status = fresh_db.finish_point(key, owner=OWNER, outcome=outcome(1), error="boom", now=3.0)
    assert status is PointStatus.FAILED
    row = fresh_db.points(statuses=[PointStatus.FAILED])[0]
    assert row["error"] == "boom" and row["key"] == key
    assert fresh_db.counts(key)["job_results"] == 1
    # not retried unless asked
    assert not fresh_db.claim(
        key, run_id=run, owner=OWNER, work_dir="/w", now=4.0, owner_alive=lambda pid, started: False
    )[0]
    assert fresh_db.claim(
        key,
        run_id=run,
        owner=OWNER,
        work_dir="/w",
        now=4.0,
        retry_failed=True,
        owner_alive=lambda pid, started: False,
    )[0]
    fresh_db.finish_point(key, owner=OWNER, outcome=outcome(2), error=None, now=5.0)
    assert fresh_db.counts(key)["job_results"] == 2  # replaced, not added


def test_release_returns_point_to_pending(fresh_db, points):
    run = fresh_db.start_run(file="b.toml", experiments=["e"], environment={}, now=1.0)
    fresh_db.register_points(points)
    key = points[0].key
    fresh_db.claim(
        key, run_id=run, owner=OWNER, work_dir="/w", now=2.0, owner_alive=lambda pid, started: True
    )
    fresh_db.release(key, owner=OWNER)
    assert fresh_db.statuses([key]) == {key: PointStatus.PENDING}


def test_connection_is_reopened_after_fork(fresh_db):
    first = fresh_db.conn
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's connection
        code = 0 if fresh_db.conn is not first else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
