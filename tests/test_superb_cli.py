"""The superb CLI: help everywhere, one-line errors with exit 2, report formats, plots."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from superb.cli import app
from superb.matrix import expand_all
from superb.outcome import ConvergencePoint, Event, JobOutcome, PointOutcome
from superb.results import ResultsDB
from superb.schema import parse

REPO = Path(__file__).resolve().parent.parent
SUPERB = [sys.executable, "-m", "superb.cli"]
BENCH = """
[[experiment]]
name = "demo"
models = ["tiny", "mlp"]
jobs = [2, 3]
strategy = ["sequential", "interleaved"]
repeats = 2
"""


@pytest.fixture
def cli():
    return CliRunner()


@pytest.fixture
def bench_file(tmp_path):
    path = tmp_path / "bench.toml"
    path.write_text(BENCH)
    return path


@pytest.fixture
def filled_db(tmp_path):
    """A results store with every point of BENCH recorded, one of them failed."""
    db = ResultsDB(tmp_path / "results.db")
    points = expand_all(parse(textwrap.dedent(BENCH), source="b").experiments)
    run = db.start_run(file="b", experiments=["demo"], environment={}, now=0.0)
    db.register_points(points)
    owner = (os.getpid(), 1.0)
    for number, point in enumerate(points):
        db.claim(
            point.key,
            run_id=run,
            owner=owner,
            work_dir="/w",
            now=0.0,
            owner_alive=lambda pid, started: False,
        )
        slow = 2.0 if point.strategy == "sequential" else 1.0
        events, convergence, jobs = [], [], []
        for i, model in enumerate(point.job_labels()):
            start = i * slow
            events += [
                Event(i, "search", "cpu", start, start + 0.5),
                Event(i, "measure", "cpu-device", start + 0.5, start + 0.8),
            ]
            convergence += [ConvergencePoint(i, 8, 1.0, 2.0), ConvergencePoint(i, 16, 2.0, 1.0)]
            jobs.append(
                JobOutcome(
                    i,
                    model,
                    tuned_ms=0.4 + number / 100,
                    untuned_ms=1.7,
                    onnxruntime_ms=0.05,
                    trials=16,
                )
            )
        outcome = PointOutcome(
            wall_s=slow * point.jobs + 1,
            makespan_s=slow * point.jobs,
            jobs=jobs,
            events=events,
            convergence=convergence,
            resources={"cpu": {"busy": 0.6, "idle": 0.4}, "cpu-device": {"busy": 0.2, "idle": 0.8}},
        )
        failed = point.strategy == "interleaved" and point.jobs == 3 and point.repeat == 1
        db.finish_point(
            point.key,
            owner=owner,
            outcome=outcome,
            error="job 2 failed: boom" if failed else None,
            now=1.0,
        )
    db.close()
    return tmp_path / "results.db"


def test_every_command_has_help(cli):
    result = cli.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("validate", "run", "report", "plot"):
        assert command in result.output
        sub = cli.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and len(sub.output) > 100, command


def test_validate(cli, bench_file):
    result = cli.invoke(app, ["validate", str(bench_file), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["points"] == {"demo": 8}


def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[experiment]]\nname = "x"\nmock = "rounds=1"\ntrials = -1\n')
    for args in (
        ["validate", str(bad)],
        ["run", str(bad)],
        ["validate", str(tmp_path / "no")],
        ["report", "--db", str(tmp_path / "none.db")],
    ):
        done = subprocess.run(SUPERB + args, capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
        assert "Traceback" not in done.stderr
    done = subprocess.run(SUPERB + ["validate", str(bad)], capture_output=True, text=True)
    assert "bad.toml:4:" in done.stderr and "'trials'" in done.stderr


def test_dry_run_lists_points_and_estimate(cli, bench_file, tmp_path):
    result = cli.invoke(
        app, ["run", str(bench_file), "--dry-run", "--json", "--db", str(tmp_path / "r.db")]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert len(data["points"]) == 8 and data["estimate_s"] > 0
    assert not (tmp_path / "r.db").exists()  # a dry run writes nothing
    result = cli.invoke(app, ["run", str(bench_file), "--dry-run", "--only", "nope"])
    assert result.exit_code == 2


def test_run_refuses_existing_results_without_resume(cli, bench_file, filled_db):
    result = cli.invoke(app, ["run", str(bench_file), "--db", str(filled_db)])
    assert result.exit_code == 2 and "--resume" in result.output


def test_report_formats(cli, filled_db):
    table = cli.invoke(app, ["report", "--db", str(filled_db)], terminal_width=250)
    assert table.exit_code == 0, table.output
    assert "interleaved" in table.output and "device idle" in table.output
    assert "1 point(s) failed" in table.output
    data = json.loads(cli.invoke(app, ["report", "--db", str(filled_db), "--json"]).output)
    assert data["group_by"] == ["experiment", "strategy", "jobs"]
    rows = {(r["strategy"], r["jobs"]): r for r in data["rows"]}
    assert rows[("sequential", 2)]["makespan_s"] == 4.0  # median over 2 repeats
    assert rows[("interleaved", 3)]["points"] == 1 and rows[("interleaved", 3)]["failed"] == 1
    assert rows[("sequential", 2)]["device_idle_pct"] == pytest.approx(80.0)
    assert rows[("sequential", 2)]["tiny untuned_ms"] == 1.7
    assert [f["strategy"] for f in data["failures"]] == ["interleaved"]
    text = cli.invoke(app, ["report", "--db", str(filled_db), "--format", "csv"]).output
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == 4 and "mlp ms" in parsed[0]
    markdown = cli.invoke(app, ["report", "--db", str(filled_db), "--format", "markdown"])
    assert markdown.output.startswith("| experiment | strategy | jobs |")
    grouped = json.loads(
        cli.invoke(
            app, ["report", "--db", str(filled_db), "--json", "--group-by", "strategy"]
        ).output
    )
    assert [r["strategy"] for r in grouped["rows"]] == ["sequential", "interleaved"]
    for bad in (["--format", "xml"], ["--group-by", "colour"]):
        result = cli.invoke(app, ["report", "--db", str(filled_db), *bad])
        assert result.exit_code == 2 and "Error:" in result.output


def test_plot_writes_the_three_kinds_of_figure(cli, filled_db, tmp_path):
    out = tmp_path / "figures"
    result = cli.invoke(app, ["plot", "--db", str(filled_db), "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    files = [Path(f) for f in json.loads(result.output)["files"]]
    assert all(f.is_file() and f.stat().st_size > 1000 for f in files)
    kinds = {f.name.split("-")[0] for f in files}
    assert kinds == {"gantt", "convergence", "bars"}
    assert {f.suffix for f in files} == {".png", ".svg"}
