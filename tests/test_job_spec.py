"""The options, the job specification and the plan: validation, JSON and budgets."""

from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simpletvm.errors import UserInputError
from simpletvm.options import TuningOptions, conv_layout_for, normal_conv_layout, parse_duration
from simpletvm.plan import default_trials, make_plan
from simpletvm.spec import JobSpec
from simpletvm.taskalloc import TaskState

from .tvm_helpers import options_away_from_default


@pytest.mark.parametrize("field,value,words", [
    ("number", 0, "number must be >= 1"),
    ("search_threads", 0, "search-threads must be >= 1"),
    ("evaluate_every", 0, "evaluate-every must be >= 1"),
    ("population_size", 32.5, "population-size must be a whole number"),
    ("population_size", float("inf"), "population-size must be a whole number"),
    ("runner_timeout", float("nan"), "runner-timeout must be finite"),
    ("time_budget_seconds", -5.0, "time-budget-seconds must be positive"),
    ("trials", -1, "trials must be >= 0"),
    ("trials", 2**40, "trials is too large"),
    ("builder_workers", True, "builder-workers must be a number"),
    ("layout_rewrite", 1, "layout-rewrite must be true or false"),
    ("cost_model", "gbm", "unknown cost model"),
    ("conv_layout", "NCWH", "unknown conv layout"),
    ("winograd", "8", "unknown winograd mode"),
    ("winograd", 4, "unknown winograd mode"),
])
def test_invalid_options_are_refused_with_their_name(field, value, words):
    with pytest.raises(UserInputError, match=words):
        TuningOptions(**{field: value}).validate()


@pytest.mark.parametrize("written, layout", [("nhwc", "NHWC"), ("Nchw", "NCHW"),
                                              ("AUTO", "auto"), ("NHWC", "NHWC")])
def test_conv_layout_and_winograd_in_any_case_from_every_entry_point(written, layout):
    assert TuningOptions(conv_layout=written).validate().conv_layout == layout
    spec = JobSpec.from_json({"model": "m.onnx", "options": {"conv_layout": written,
                                                             "winograd": "OFF"}})
    assert spec.options.conv_layout == layout
    assert spec.options.winograd == "off"
    assert JobSpec.from_json(spec.to_json()) == spec


def test_conv_layout_auto_is_nhwc_on_a_cpu_and_nchw_on_a_gpu():
    assert TuningOptions().conv_layout == "auto"
    assert conv_layout_for("auto", gpu=False) == "NHWC"
    assert conv_layout_for("auto", gpu=True) == "NCHW"
    assert conv_layout_for("NCHW", gpu=False) == "NCHW"
    assert conv_layout_for("NHWC", gpu=True) == "NHWC"  # what the user asked for
    assert [normal_conv_layout(v) for v in ("Auto", "nhwc", "nchw")] == ["auto", "NHWC",
                                                                          "NCHW"]
    for value in ("NWHC", "hwc", ""):  # any case, but only a known layout
        with pytest.raises(UserInputError, match="use auto, NCHW, NHWC"):
            TuningOptions(conv_layout=value).validate()
        with pytest.raises(UserInputError, match="use auto, NCHW, NHWC"):
            conv_layout_for(value, gpu=False)  # what prepare_module resolves with
    assert conv_layout_for("nhwc", gpu=True) == "NHWC"


def test_resolved_fills_only_unset_threads():
    opts = TuningOptions(search_threads=1).resolved(cores=8)
    assert opts.search_threads == 1 and opts.builder_workers == 8


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("1h30m", 5400),
                                          ("2.5", 2.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "0", "-5m", "inf"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def _full_spec() -> JobSpec:
    return JobSpec(model="m.onnx", target='{"kind": "llvm", "num-cores": 1}',
                   options=TuningOptions(**options_away_from_default()),
                   input_shapes={"x": (1, 3, 8, 8)}, baselines=False, output="m.so",
                   tuning_db="t.db")


def test_every_field_round_trips_through_json():
    import json

    spec = _full_spec().validate()
    again = JobSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec
    for f in fields(TuningOptions):
        assert getattr(again.options, f.name) != getattr(TuningOptions(), f.name), f.name


def test_unknown_fields_are_refused():
    data = _full_spec().to_json()
    with pytest.raises(UserInputError, match="unknown job field"):
        JobSpec.from_json({**data, "colour": "red"})
    data["options"]["speed"] = 11
    with pytest.raises(UserInputError, match="unknown tuning option"):
        JobSpec.from_json(data)


@given(st.dictionaries(st.text(min_size=1, max_size=5),
                       st.lists(st.integers(1, 4096), min_size=1, max_size=4).map(tuple),
                       max_size=3),
       st.integers(0, 10_000), st.booleans())
def test_shapes_and_budgets_round_trip(shapes, trials, baselines):
    spec = JobSpec(model="a.onnx", options=TuningOptions(trials=trials), input_shapes=shapes,
                   baselines=baselines).validate()
    assert JobSpec.from_json(spec.to_json()) == spec


def _tasks() -> list[TaskState]:
    return [TaskState(0, "conv_big", 1.0, max_trials=10**6, flops=1e9),
            TaskState(1, "conv_small", 2.0, max_trials=10**6, flops=1e8),
            TaskState(2, "reshape", 1.0, max_trials=10**6, flops=0.0)]


def test_plan_gives_every_task_the_coverage_floor_and_the_rest_by_share():
    opts = TuningOptions(per_round=16, coverage_measured=4)
    plan = make_plan(_tasks(), opts, trials=112)
    by_name = {t.task: t for t in plan.tasks}
    assert plan.coverage_trials == 12
    assert all(t.planned_trials >= 4 for t in plan.tasks)
    assert by_name["reshape"].planned_trials == 4 and not by_name["reshape"].significant
    # the 100 trials left go by weight x FLOPs: 1e9 against 2e8
    assert by_name["conv_big"].planned_trials == 4 + round(100 * 1e9 / 1.2e9)
    assert plan.significant == 2


def test_default_budget_grows_with_the_task_count():
    opts = TuningOptions(per_round=16, coverage_measured=4)
    few = default_trials(_tasks(), opts)
    many = default_trials(_tasks() * 10, opts)
    assert few >= 64 and many > few


def test_a_time_budget_plans_only_the_rounds_that_fit():
    opts = TuningOptions(per_round=16, coverage_measured=4, time_budget_seconds=60)
    plan = make_plan(_tasks(), opts, trials=2**31 - 1)
    assert plan.estimated_seconds <= 60
    assert sum(t.planned_trials for t in plan.tasks) < 16 * 60
