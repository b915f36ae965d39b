"""The runner: failures recorded and skipped past, resume after SIGKILL, crash isolation.

Executors are injected (chosen by object, like MetaSchedule's pluggable parts) so these
tests exercise the runner's own logic without TVM or a sched daemon.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from superb import SuperbError
from superb.direct import run_in_child
from superb.matrix import PointKind, expand_all
from superb.outcome import Event, JobOutcome, PointFailed, PointOutcome
from superb.results import PointStatus, ResultsDB
from superb.runner import Runner
from superb.schema import parse

TOML = """
[[experiment]]
name = "e"
mock = "rounds=1"
jobs = [2]
strategy = ["sequential", "synchronous", "interleaved", "predictive"]
seed = [0, 1]
"""


def points_of(text: str = TOML):
    return expand_all(parse(textwrap.dedent(text), source="b.toml").experiments)


def fake_outcome(point) -> PointOutcome:
    return PointOutcome(
        makespan_s=1.0,
        jobs=[JobOutcome(i, "mock", tuned_ms=0.5, trials=16) for i in range(point.jobs)],
        events=[Event(0, "measure", "gpu0", 0.0, 0.5)],
        resources={"gpu0": {"busy": 0.5, "idle": 0.5}},
    )


class FakeExecutor:
    def __init__(self, fail=()):
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, point, work_dir, *, progress, should_stop):
        assert work_dir.is_dir()
        self.calls.append(point.key)
        progress(0.5, "half way")
        if point.strategy == "synchronous" and "pointfailed" in self.fail:
            raise PointFailed("job 1 failed: out of memory", fake_outcome(point))
        if point.strategy == "predictive" and "crash" in self.fail:
            raise RuntimeError("unexpected")
        return fake_outcome(point)


@pytest.fixture
def db(tmp_path):
    results = ResultsDB(tmp_path / "results.db")
    yield results
    results.close()


def runner_for(db, tmp_path, executor, **kwargs) -> Runner:
    return Runner(db, work_root=tmp_path / "work", executors={PointKind.SCHED: executor}, **kwargs)


def test_failed_point_recorded_and_run_goes_on(db, tmp_path):
    points = points_of()
    executor = FakeExecutor(fail=("pointfailed", "crash"))
    summary = runner_for(db, tmp_path, executor).run(points)
    assert len(executor.calls) == len(points) == 8
    assert (summary.done, summary.failed) == (4, 4)
    failed = {p["strategy"]: p["error"] for p in db.points(statuses=[PointStatus.FAILED])}
    assert set(failed) == {"synchronous", "predictive"}
    assert "out of memory" in failed["synchronous"]
    assert failed["predictive"] == "RuntimeError: unexpected"
    # the partial outcome of a failed point is kept
    synchronous = next(p for p in db.points() if p["strategy"] == "synchronous")
    assert db.counts(synchronous["key"])["job_results"] == 2
    # finished work dirs are removed; failed ones are kept for inspection
    assert len(list((tmp_path / "work").iterdir())) == 4


def test_resume_skips_done_and_failed_and_retries_on_request(db, tmp_path):
    points = points_of()
    runner_for(db, tmp_path, FakeExecutor(fail=("pointfailed",))).run(points)
    again = FakeExecutor()
    with pytest.raises(SuperbError, match="--resume"):
        runner_for(db, tmp_path, again).run(points)
    summary = runner_for(db, tmp_path, again).run(points, resume=True)
    assert again.calls == [] and summary.skipped == 8
    retry = FakeExecutor()
    summary = runner_for(db, tmp_path, retry, retry_failed=True).run(points, resume=True)
    assert len(retry.calls) == 2 and summary.done == 2
    assert {p["status"] for p in db.points()} == {"done"}
    assert all(db.counts(p.key)["job_results"] == 2 for p in points)


def test_stop_request_releases_the_running_point(db, tmp_path):
    points = points_of()
    holder = {}

    def stopping(point, work_dir, *, progress, should_stop):
        if len(holder) == 2:
            holder["runner"].stop_requested = True
            from superb.direct import Interrupted

            raise Interrupted()
        holder[point.key] = True
        return fake_outcome(point)

    runner = runner_for(db, tmp_path, stopping)
    holder["runner"] = runner
    summary = runner.run(points)
    assert summary.interrupted and summary.done == 1
    statuses = [p["status"] for p in db.points()]
    assert statuses.count("done") == 1 and statuses.count("pending") == 7
    assert db.runs()[-1]["status"] == "interrupted"


# module-level: children are spawned, so their targets must be importable by name
def _segfault(conn):
    os.kill(os.getpid(), signal.SIGSEGV)


def _talk_then_fail(conn, value):
    conn.send(("stage", value))
    raise ValueError("bad model")


def _hang(conn):
    time.sleep(60)


def test_child_crash_is_a_failure(tmp_path):
    with pytest.raises(PointFailed, match="signal 11"):
        run_in_child(
            _segfault,
            (),
            on_message=lambda m: None,
            should_stop=lambda: False,
            timeout=30,
            log_path=tmp_path / "child.log",
        )


def test_child_error_and_messages(tmp_path):
    seen = []

    with pytest.raises(PointFailed, match="ValueError: bad model"):
        run_in_child(
            _talk_then_fail,
            (7,),
            on_message=seen.append,
            should_stop=lambda: False,
            timeout=30,
            log_path=tmp_path / "child.log",
        )
    assert seen == [("stage", 7)]
    assert "bad model" in (tmp_path / "child.log").read_text()  # the traceback is logged


def test_child_timeout(tmp_path):
    started = time.monotonic()
    with pytest.raises(PointFailed, match="timeout"):
        run_in_child(
            _hang,
            (),
            on_message=lambda m: None,
            should_stop=lambda: False,
            timeout=1,
            log_path=tmp_path / "child.log",
        )
    assert time.monotonic() - started < 10


SCRIPT = """
import sys, time
from pathlib import Path
from superb.matrix import PointKind, expand_all
from superb.outcome import JobOutcome, PointOutcome
from superb.results import ResultsDB
from superb.runner import Runner
from superb.schema import load

log = Path(sys.argv[2])

def slow(point, work_dir, *, progress, should_stop):
    with log.open("a") as f:
        f.write(f"start {point.key}\\n")
    time.sleep(0.3)
    return PointOutcome(jobs=[JobOutcome(i, "mock", tuned_ms=1.0) for i in range(point.jobs)])

points = expand_all(load(sys.argv[1]).experiments)
runner = Runner(ResultsDB(sys.argv[3]), work_root=sys.argv[4],
                executors={PointKind.SCHED: slow})
runner.run(points, resume=True)
"""


def test_resume_after_sigkill_records_nothing_twice_and_loses_nothing(tmp_path):
    bench = tmp_path / "bench.toml"
    bench.write_text(TOML.replace("seed = [0, 1]", "seed = [0, 1, 2]"))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    log, db_path = tmp_path / "calls.log", tmp_path / "results.db"
    args = [sys.executable, str(script), str(bench), str(log), str(db_path), str(tmp_path / "work")]
    proc = subprocess.Popen(args)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if (
                db_path.exists()
                and sum(p["status"] == "done" for p in ResultsDB(db_path).points()) >= 3
            ):
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    db = ResultsDB(db_path)
    before = {p["key"]: p["status"] for p in db.points()}
    done_before = {k for k, s in before.items() if s == "done"}
    assert 3 <= len(done_before) < 12 and "running" in before.values()
    subprocess.run(args, check=True, timeout=120)
    after = db.points()
    assert len(after) == 12 and {p["status"] for p in after} == {"done"}
    for point in after:
        assert db.counts(point["key"])["job_results"] == 2
    starts = log.read_text().split()[1::2]
    assert not done_before & {k for k in starts if starts.count(k) > 1}  # no rerun of done
    assert set(starts) == {p["key"] for p in after}  # nothing lost
    killed = [p for p in after if p["attempts"] == 2]
    assert len(killed) == 1  # only the point that was running when killed ran again


def test_job_outcome_keeps_only_the_baselines_asked_for():
    from superb.outcome import job_outcome

    result = {
        "tuned_ms": 1.0, "tuned": {"std_ms": 0.1}, "untuned_ms": 9.0, "onnxruntime_ms": 0.5,
        "trials": 16, "tuning_seconds": 3.0,
        "convergence": [{"trials": 8, "seconds": 1.5, "best_ms": 2.0}],
    }  # fmt: skip
    job, convergence = job_outcome(2, "cnn", result, ("untuned",), stage_seconds={"search": 1})
    assert (job.index, job.model, job.tuned_ms, job.tuned_std_ms) == (2, "cnn", 1.0, 0.1)
    assert job.untuned_ms == 9.0 and job.onnxruntime_ms is None
    assert job.stage_seconds == {"search": 1}  # the result had none: the fallback
    assert [(c.job_index, c.trials, c.best_ms) for c in convergence] == [(2, 8, 2.0)]
    failed, nothing = job_outcome(0, "mlp", {}, (), status="failed", error="boom")
    assert (failed.status, failed.error, failed.tuned_ms, nothing) == ("failed", "boom", None, [])
