"""superb's evaluation view: makespan against sequential and its lower bound, latency
against each model tuned alone, measurement noise."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
from typer.testing import CliRunner

from superb.cli import app
from superb.evaluation import build_evaluation, lower_bound
from superb.matrix import expand_all
from superb.outcome import Event, JobOutcome, PointOutcome
from superb.results import ResultsDB
from superb.schema import parse

BENCH = """
[[experiment]]
name = "pair"
models = ["tiny", "mlp"]
jobs = [2]
strategy = ["sequential", "interleaved"]
repeats = 2

[[experiment]]
name = "alone"
models = [["tiny"], ["mlp"]]
jobs = [1]
strategy = ["sequential"]
"""
ALONE_MS = {"tiny": 1.0, "mlp": 2.0}


def ev(job, kind, resource, start, end):
    return {"job_index": job, "kind": kind, "resource": resource, "start": start, "end": end}


def test_lower_bound_counts_a_stage_once_and_cpu_device_owns_the_cores():
    events = [
        ev(0, "search", "cpu", 0, 4),
        ev(1, "search", "cpu", 0, 4),
        ev(0, "measure", "cpu-device", 4, 5),
        ev(0, "measure", "cpu", 4, 5),  # the same stage on the cpu pool: counted once
    ]
    # device 1 + cpu work 8 / 2 slots = 5 > longest job 5? equal: 5
    assert lower_bound(events, slots=2) == pytest.approx(5.0)
    assert lower_bound(events, slots=8) == pytest.approx(5.0)  # the longest job: 4 + 1
    gpu = [ev(0, "search", "cpu", 0, 4), ev(1, "measure", "gpu0", 0, 6)]
    assert lower_bound(gpu, slots=2) == pytest.approx(6.0)  # a GPU works beside the cpus
    assert lower_bound([], slots=2) is None


@pytest.fixture
def db_path(tmp_path):
    db = ResultsDB(tmp_path / "results.db")
    points = expand_all(parse(textwrap.dedent(BENCH), source="b").experiments)
    run = db.start_run(file="b", experiments=["pair", "alone"],
                       environment={"usable_cores": 2}, now=0.0)
    db.register_points(points)
    owner = (os.getpid(), 1.0)
    for point in points:
        db.claim(point.key, run_id=run, owner=owner, work_dir="/w", now=0.0,
                 owner_alive=lambda pid, started: False)
        shared = point.jobs > 1 and point.strategy == "interleaved"
        span = (10.0 if point.strategy == "sequential" else 6.0) + point.repeat
        jobs, events = [], []
        for i, model in enumerate(point.job_labels()):
            # interleaved: tiny 10 % slower than alone; noise 2 % (sequential 1 %)
            factor = 1.1 if shared and model == "tiny" else 1.0
            tuned = ALONE_MS[model] * factor
            jobs.append(JobOutcome(i, model, tuned_ms=tuned,
                                   tuned_std_ms=tuned * (0.02 if shared else 0.01)))
            events += [Event(i, "search", "cpu", 0.0, 4.0),
                       Event(i, "measure", "cpu-device", 4.0, 5.0)]
        outcome = PointOutcome(wall_s=span + 1, makespan_s=span, jobs=jobs, events=events,
                               resources={"cpu": {"busy": 0.5, "idle": 0.5},
                                          "cpu-device": {"busy": 0.25, "idle": 0.75}})
        db.finish_point(point.key, owner=owner, outcome=outcome, error=None, now=1.0)
    db.close()
    return tmp_path / "results.db"


def test_evaluation_rows(db_path):
    report = build_evaluation(ResultsDB(db_path), experiments=["pair"])
    rows = {row["strategy"]: row for row in report.rows}
    seq, inter = rows["sequential"], rows["interleaved"]
    assert seq["points"] == inter["points"] == 2
    assert seq["makespan_s"] == pytest.approx(10.5)  # median of 10 and 11
    assert seq["makespan_spread_s"] == pytest.approx(1.0)
    assert seq["vs_sequential"] == pytest.approx(1.0)
    assert inter["vs_sequential"] == pytest.approx(6.5 / 10.5)
    # two jobs: device 2 s (measure holds both cores) + cpu 8 s / 2 slots = 6 s
    assert inter["lower_bound_s"] == pytest.approx(6.0)
    assert inter["vs_bound"] == pytest.approx(6.5 / 6.0)
    assert seq["latency_vs_alone"] == pytest.approx(1.0)
    assert inter["worst_vs_alone"] == pytest.approx(1.1)
    assert inter["latency_vs_alone"] == pytest.approx(1.05)  # median of 1.1 and 1.0
    assert seq["noise_pct"] == pytest.approx(1.0)
    assert inter["noise_pct"] == pytest.approx(2.0)
    assert inter["device_idle_pct"] == pytest.approx(75.0)


def test_evaluation_view_from_the_cli(db_path):
    result = CliRunner().invoke(app, ["report", "--db", str(db_path), "--view", "evaluation",
                                      "--only", "pair", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert "latency_vs_alone" in data["columns"]
    markdown = CliRunner().invoke(app, ["report", "--db", str(db_path), "--view", "evaluation",
                                        "--format", "markdown"])
    assert markdown.exit_code == 0 and "| vs sequential |" in markdown.output
    bad = CliRunner().invoke(app, ["report", "--db", str(db_path), "--view", "nope"])
    assert bad.exit_code == 2
