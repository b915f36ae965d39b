"""End to end: MockJob points through real private sched daemons, and a tiny real-TVM point.

The TVM test skips only when ``simpletvm.engine`` cannot be imported.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from superb.direct import run_direct_point
from superb.matrix import expand_all
from superb.outcome import PointFailed
from superb.results import ResultsDB
from superb.runner import Runner
from superb.schema import ModelRef, parse

SUPERB = [sys.executable, "-m", "superb.cli"]
MOCK = """
[[experiment]]
name = "mock"
mock = "rounds=2,search=0.05,build=0.05,measure=0.1,update=0.02"
jobs = [2]
strategy = ["sequential", "synchronous", "interleaved", "predictive"]
timeout = 60
"""


def run_cli(*args, cwd: Path, check: bool = True, timeout: float = 180):
    return subprocess.run(
        SUPERB + list(args), capture_output=True, text=True, cwd=cwd, check=check, timeout=timeout
    )


@pytest.mark.slow
def test_mock_points_end_to_end(tmp_path):
    (tmp_path / "bench.toml").write_text(MOCK)
    run_cli("run", "bench.toml", "--db", "r.db", "--work-dir", "work", cwd=tmp_path)
    db = ResultsDB(tmp_path / "r.db")
    points = db.points()
    assert len(points) == 4 and {p["status"] for p in points} == {"done"}, points
    for point in points:
        assert point["makespan_s"] > 0 and point["trials"] > 0
        assert db.counts(point["key"])["job_results"] == 2
        for job in db.job_results([point["key"]]):  # a MockJob's latencies are not real
            assert job["tuned_ms"] is None and job["untuned_ms"] is None
        assert db.counts(point["key"])["events"] > 0
        assert {r["resource"] for r in db.resources([point["key"]])} >= {"cpu"}
    env = db.runs()[0]["environment"]
    assert env["python_version"] and env["cpu_cores"] >= 1
    report = json.loads(run_cli("report", "--db", "r.db", "--json", cwd=tmp_path).stdout)
    rows = {r["strategy"]: r for r in report["rows"]}
    assert set(rows) == {"sequential", "synchronous", "interleaved", "predictive"}
    # sequential runs the jobs one after the other: the slowest batch
    assert rows["sequential"]["makespan_s"] > rows["interleaved"]["makespan_s"]
    assert not list((tmp_path / "work").iterdir())  # finished points leave no scratch
    files = json.loads(run_cli("plot", "--db", "r.db", "-o", "fig", "--json", cwd=tmp_path).stdout)[
        "files"
    ]
    assert {Path(f).name.split("-")[0] for f in files} >= {"gantt", "bars"}


@pytest.mark.slow
def test_kill_mid_run_then_resume(tmp_path):
    (tmp_path / "bench.toml").write_text(MOCK)
    db_path = tmp_path / "r.db"
    proc = subprocess.Popen(
        SUPERB + ["run", "bench.toml", "--db", "r.db", "--work-dir", "work"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            if db_path.exists():
                points = ResultsDB(db_path).points()
                if any(p["status"] == "done" for p in points) and any(
                    p["status"] == "running" for p in points
                ):
                    break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    db = ResultsDB(db_path)
    running = [p for p in db.points() if p["status"] == "running"]
    done_before = {p["key"]: p["finished"] for p in db.points() if p["status"] == "done"}
    assert len(running) == 1 and done_before
    time.sleep(0.5)  # let the orphaned daemon write its pid file if it was starting
    pid_file = Path(running[0]["work_dir"]) / "sched.db.pid"
    text = pid_file.read_text().split() if pid_file.exists() else []
    orphan = int(text[0]) if text else None
    result = run_cli(
        "run", "bench.toml", "--db", "r.db", "--work-dir", "work", check=False, cwd=tmp_path
    )
    assert result.returncode == 2 and "--resume" in result.stderr
    run_cli("run", "bench.toml", "--db", "r.db", "--work-dir", "work", "--resume", cwd=tmp_path)
    after = db.points()
    assert {p["status"] for p in after} == {"done"} and len(after) == 4
    for point in after:
        assert db.counts(point["key"])["job_results"] == 2
        if point["key"] in done_before:  # finished points were not run again
            assert point["finished"] == done_before[point["key"]] and point["attempts"] == 1
    if orphan is not None:  # the killed run's daemon was stopped by the resume
        assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == "zombie"
    assert not Path(running[0]["work_dir"]).exists()


def _engine_available() -> bool:
    try:
        return importlib.util.find_spec("simpletvm.engine") is not None
    except ImportError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _engine_available(), reason="simpletvm.engine is not importable")
def test_tiny_real_tvm_point_and_a_failing_one(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model")
    (exp,) = parse(
        textwrap.dedent("""
        [[experiment]]
        name = "real"
        models = [["tiny"]]
        trials = [4]
        per_round = [4]
        jobs = [1]
        timeout = 300
    """),
        source="b",
    ).experiments
    points = expand_all([exp])
    db = ResultsDB(tmp_path / "r.db")
    summary = Runner(db, work_root=tmp_path / "work").run(points)
    assert summary.done == 1, summary.failures
    (point,) = db.points()
    (job,) = db.job_results([point["key"]])
    assert job["tuned_ms"] > 0 and job["untuned_ms"] > 0 and job["onnxruntime_ms"] > 0
    assert job["trials"] >= 1 and point["trials"] == job["trials"]
    assert {"prepare", "search", "build", "measure", "update"} <= set(point["stage_seconds"])
    assert {r["resource"] for r in db.resources([point["key"]])} == {"cpu", "device"}
    assert db.convergence([point["key"]])
    # a model the engine cannot load: a failure with the engine's error, no crash
    broken = dataclasses.replace(points[0], models=(ModelRef("broken", path=str(bad)),))
    work = tmp_path / "broken-work"
    work.mkdir()
    with pytest.raises(PointFailed) as failed:
        run_direct_point(broken, work, progress=lambda f, t: None, should_stop=lambda: False)
    assert "tuning.log" in str(failed.value)
