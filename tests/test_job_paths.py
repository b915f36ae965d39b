"""One JobSpec through every path: sched submit, the registry, the runner's build_job, and
superb's direct and sched paths; the engine's validation words at every entry point."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simpletvm.cli import app as simpletvm_app
from simpletvm.errors import UserInputError
from simpletvm.options import TuningOptions
from simpletvm.spec import JobSpec
from simpletvm.targets import TargetSpec
from superb import direct
from superb.matrix import expand_all
from superb.outcome import PointFailed
from superb.runner import Runner
from superb.schedpoint import _submission
from superb.schema import SchemaError, parse
from tvmsched import api, report
from tvmsched.cli import main as sched_main
from tvmsched.jobs import SCHED_DEFAULTS, TUNING_OPTIONS, build_job, stage_info
from tvmsched.registry import Registry
from tvmsched.resources import device_kind_for_target

from .tvm_helpers import FAST_SEARCH, options_away_from_default, write_dynamic_model


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory) -> Path:
    return write_dynamic_model(tmp_path_factory.mktemp("dyn") / "dyn.onnx")


@pytest.fixture
def built(monkeypatch):
    """What ``build_job`` hands the engine: the JobSpec and the keyword arguments of its
    ``tuning_job`` call (TVM does not run)."""
    calls: list[tuple[JobSpec, dict]] = []

    def tuning_job(self, **kwargs):
        calls.append((self, kwargs))
        return "engine job"

    monkeypatch.setattr(JobSpec, "tuning_job", tuning_job)
    return calls


def full_spec(model: Path, tmp_path: Path) -> JobSpec:
    """Every field of JobSpec and TuningOptions away from its default."""
    options = options_away_from_default()
    return JobSpec(
        model=str(model), target='{"kind": "llvm", "num-cores": 1}',
        options=TuningOptions(**options), input_shapes={"x": (2, 8)}, baselines=False,
        output=str(tmp_path / "out.so"), tuning_db=str(tmp_path / "t.db"),
    ).validate()  # fmt: skip


def test_every_field_round_trips_through_submit_the_registry_and_build_job(
    tmp_path, dynamic_model, built
):
    spec = full_spec(dynamic_model, tmp_path)
    for f in fields(JobSpec):  # a field lost on the way would show
        assert getattr(spec, f.name) != getattr(JobSpec(model=""), f.name), f.name
    for f in fields(TuningOptions):
        assert getattr(spec.options, f.name) != getattr(TuningOptions(), f.name), f.name
    db = tmp_path / "sched.db"
    job_id = api.submit(db, spec, name="all")
    row = Registry(db).job(job_id)
    assert JobSpec.from_json(json.loads(json.dumps(row["spec"]["job"]))) == spec
    assert build_job(row, db_path=db) == "engine job"
    ((received, kwargs),) = built
    assert received == spec  # threads were set: no SCHED_DEFAULTS, only_tasks kept
    assert kwargs["db_path"] == spec.tuning_db and kwargs["output"] == spec.output
    assert kwargs["job_tag"].endswith(f"#job-{job_id}")


def test_sched_fills_only_the_threads_a_submission_left_unset(tmp_path, tiny_model, built):
    db = tmp_path / "sched.db"
    job_id = api.submit(db, model=str(tiny_model), options={"search_threads": 3})
    build_job(Registry(db).job(job_id), db_path=db)
    options = built[0][0].options
    assert options.search_threads == 3
    assert options.builder_workers == SCHED_DEFAULTS["builder_workers"]
    # where the runner puts what the submission did not place
    assert built[0][1]["db_path"].endswith(f"job-{job_id}/tuning.db")
    assert built[0][1]["output"].endswith(f"job-{job_id}/tiny.so")


def test_split_sub_jobs_share_the_parents_database_and_tune_their_tasks(
    tmp_path, tiny_model, built
):
    db = tmp_path / "sched.db"
    parent = api.submit(db, model=str(tiny_model), trials=9, split=3)
    registry = Registry(db)
    child = next(j for j in registry.list_jobs() if j["parent_id"] == parent and
                 j["spec"]["task_split"] == [1, 3])  # fmt: skip
    build_job(child, db_path=db)
    received, kwargs = built[0]
    assert received.options.trials == 3 and received.output is None
    assert list(received.options.only_tasks[:3]) == [1, 4, 7]
    assert kwargs["db_path"].endswith(f"job-{parent}/tuning.db")


def test_rows_written_before_the_job_spec_are_still_read(tmp_path, tiny_model, built):
    db = tmp_path / "sched.db"
    flat = {"model": str(tiny_model), "target": "llvm", "trials": 12, "per_round": 4,
            "seed": 5, "output": None, "tuning_db": None, "sla_ms": 2.5,
            "deadline_seconds": 60.0, "options": {"population_size": 32}}  # fmt: skip
    registry = Registry(db)
    job_id = registry.submit("tvm", flat, device_kind="remote:arm")
    row = registry.job(job_id)
    build_job(row, db_path=db)
    received = built[0][0]
    assert received.model == str(tiny_model) and received.target == "llvm"
    assert received.options == TuningOptions(
        trials=12, per_round=4, seed=5, sla_ms=2.5, deadline_seconds=60.0, population_size=32,
        **SCHED_DEFAULTS,
    )  # fmt: skip
    summary = report.job_summary(row)
    assert summary["name"] == "tiny" and summary["sla"]["sla_ms"] == 2.5
    # the local device of an old remote job's evaluate stage comes from its target
    from simpletvm.stages import StageKind, StageRequest

    request = StageRequest(StageKind.EVALUATE, {"cpu": 1, "device": 1}, {})
    assert stage_info(row, request)["device_kind"] == "cpu-device"


def test_a_dynamic_model_needs_its_input_shape_at_submit(capsys, tmp_path, dynamic_model):
    db = str(tmp_path / "sched.db")
    assert sched_main(["submit", str(dynamic_model), "--db", db]) == 2
    assert "--input-shape x=" in capsys.readouterr().err
    code = sched_main(["submit", str(dynamic_model), "--input-shape", "x=4,8", "--no-baselines",
                       "--option", "cost_model=random", "--json", "--db", db])  # fmt: skip
    assert code == 0
    spec = JobSpec.from_json(api.job(db, json.loads(capsys.readouterr().out)["id"])["spec"]["job"])
    assert spec.input_shapes == {"x": (4, 8)} and spec.baselines is False
    assert spec.options.cost_model == "random"


def test_a_tag_target_gets_its_device_kind():
    assert device_kind_for_target("nvidia/nvidia-a100") == "gpu"  # no GPU needed to map it
    assert device_kind_for_target('{"kind": "cuda", "arch": "sm_80"}') == "gpu"
    assert device_kind_for_target("llvm") == "cpu-device"
    assert device_kind_for_target("ext_dev") is None  # any device
    assert device_kind_for_target("no/such-tag") is None


# -- superb's two paths -------------------------------------------------------------------
def _superb_points(tmp_path: Path, model: Path, jobs: int):
    """A benchmark file setting every tuning option superb can set, away from its default."""
    away = options_away_from_default()
    options = {name: away[name] for name in TUNING_OPTIONS}
    table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
    bench = parse(textwrap.dedent(f"""
        [models.dyn]
        path = "{model}"
        input_shapes = {{ x = [3, 8] }}

        [[experiment]]
        name = "all"
        models = ["dyn"]
        trials = [11]
        per_round = [5]
        seed = [2]
        jobs = [{jobs}]
        baselines = []
        options = {{ {table} }}
    """), source="b.toml", base_dir=tmp_path)  # fmt: skip
    (point,) = expand_all(bench.experiments)
    expected = TuningOptions(trials=11, per_round=5, seed=2, **options)
    return point, expected


def test_every_option_reaches_the_engine_through_superbs_direct_path(
    tmp_path, dynamic_model, monkeypatch, built
):
    point, expected = _superb_points(tmp_path, dynamic_model, jobs=1)

    class Job:  # the engine's job, finished before it starts
        target = TargetSpec({"kind": "llvm", "num-cores": 2})

        def next_stage(self):
            return None

        def result(self):
            return {}

    def in_process(target, args, **_):
        target(type("Conn", (), {"send": lambda self, message: None})(), *args)

    monkeypatch.setattr(JobSpec, "tuning_job", lambda self, **kw: built.append((self, kw)) or Job())
    monkeypatch.setattr(direct, "run_in_child", in_process)
    with pytest.raises(PointFailed, match="without a result"):
        direct.run_direct_point(point, tmp_path, progress=lambda *a: None, should_stop=lambda: 0)
    (received, _), = built
    assert received.options == expected
    assert received.input_shapes == {"x": (3, 8)} and received.baselines is False
    assert received.output == str(tmp_path / "model.so")


def test_every_option_reaches_the_runner_through_superbs_sched_path(
    tmp_path, dynamic_model, built
):
    point, expected = _superb_points(tmp_path, dynamic_model, jobs=2)
    db = tmp_path / "sched.db"
    ids = [api.submit(db, **_submission(point, index, tmp_path)) for index in range(2)]
    for index, job_id in enumerate(ids):
        build_job(Registry(db).job(job_id), db_path=db)
        received = built[index][0]
        assert received.options == dataclasses.replace(expected, seed=2 + index)
        assert received.input_shapes == {"x": (3, 8)} and received.baselines is False
        assert received.tuning_db == str(tmp_path / f"job{index}.tuning.db")


# -- the same words at every entry point ----------------------------------------------------
# (field, value, simpletvm tune's flags, sched submit's flags, superb's TOML line)
INVALID = [
    ("number", 0, ["--number", "0"], ["--option", "number=0"], "options = { number = 0 }"),
    ("search_threads", 0, ["--search-threads", "0"], ["--option", "search_threads=0"],
     "options = { search_threads = 0 }"),
    ("trials", -1, ["--trials", "-1"], ["--trials", "-1"], "trials = -1"),
    ("per_round", 0, ["--per-round", "0"], ["--per-round", "0"], "per_round = 0"),
    # simpletvm tune's --population is an int option: typer refuses 32.5 itself
    ("population_size", 32.5, None, ["--option", "population_size=32.5"],
     "options = { population_size = 32.5 }"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "tune", "submit", "toml"), INVALID)
def test_invalid_values_get_the_engines_words_everywhere(
    capsys, tmp_path, tiny_model, field, value, tune, submit, toml
):
    with pytest.raises(UserInputError) as engine:
        TuningOptions(**{field: value}).validate()
    words = str(engine.value)
    seen = []
    if tune is not None:
        result = CliRunner().invoke(simpletvm_app, ["tune", str(tiny_model), *tune])
        seen.append((result.exit_code, result.stderr))
    code = sched_main(["submit", str(tiny_model), *submit, "--db", str(tmp_path / "s.db")])
    seen.append((code, capsys.readouterr().err))
    with pytest.raises(SchemaError) as schema:
        parse(f'[[experiment]]\nname = "a"\nmodels = ["tiny"]\n{toml}\n', source="b.toml")
    seen.append((2, str(schema.value)))
    for code, text in seen:
        assert code == 2 and words in text, (words, text)
    assert api.jobs(tmp_path / "s.db") == []


# -- a dynamic-shape model through superb's sched path, for real --------------------------------
@pytest.mark.slow
def test_a_dynamic_model_runs_through_superbs_sched_path(tmp_path, dynamic_model):
    from superb.results import ResultsDB

    options = {**FAST_SEARCH, "coverage_samples": 8, "coverage_measured": 1}
    table = ", ".join(f"{k} = {v}" for k, v in options.items())
    bench = parse(textwrap.dedent(f"""
        [models.dyn]
        path = "{dynamic_model}"
        input_shapes = {{ x = [4, 8] }}

        [[experiment]]
        name = "dynamic"
        models = ["dyn"]
        jobs = [2]
        strategy = ["interleaved"]
        trials = [4]
        per_round = [2]
        baselines = []
        timeout = 400
        options = {{ {table} }}
    """), source="b.toml", base_dir=tmp_path)  # fmt: skip
    points = expand_all(bench.experiments)
    db = ResultsDB(tmp_path / "r.db")
    summary = Runner(db, work_root=tmp_path / "work").run(points)
    assert summary.done == 1, summary.failures
    (point,) = db.points()
    jobs = db.job_results([point["key"]])
    assert len(jobs) == 2 and all(j["status"] == "done" and j["tuned_ms"] > 0 for j in jobs)
