"""benchmarks.toml validation: one case per kind of error, defaults inheritance, parsers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simpletvm.options import TuningOptions
from superb import SuperbError
from superb.schema import Baseline, SchemaError, Strategy, load, parse, parse_mock

REPO = Path(__file__).resolve().parent.parent


def parse_text(text: str, tmp_path: Path | None = None):
    return parse(textwrap.dedent(text), source="bench.toml", base_dir=tmp_path or ".")


def error_of(text: str, tmp_path: Path | None = None) -> SchemaError:
    with pytest.raises(SchemaError) as caught:
        parse_text(text, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    return caught.value


def test_shipped_benchmarks_file_is_valid():
    bench = load(REPO / "benchmarks.toml")
    names = [e.name for e in bench.experiments]
    assert {"quick", "evaluation", "cuda", "mock-demo"} <= set(names)
    quick = bench.select(["quick"])[0]
    assert set(quick.strategy) == set(Strategy) and quick.jobs == (2,)


def test_defaults_are_inherited_and_overridden():
    bench = parse_text("""
        [defaults]
        trials = [32]
        strategy = ["sequential", "interleaved"]
        baselines = ["untuned"]
        mock = "rounds=1"

        [[experiment]]
        name = "a"

        [[experiment]]
        name = "b"
        trials = 8
        models = ["tiny"]
    """)
    a, b = bench.experiments
    assert a.trials == (32,) and b.trials == (8,)
    assert a.strategy == b.strategy == (Strategy.SEQUENTIAL, Strategy.INTERLEAVED)
    assert a.baselines == (Baseline.UNTUNED,)
    assert a.mock == ("rounds=1",) and a.mixes == ()
    # b names its own workload, so the inherited mock does not apply to it
    assert b.mock == () and [m.label for m in b.mixes[0]] == ["tiny"]
    assert a.per_round == (16,) and a.repeats == 1  # built-in defaults


def test_syntax_error_names_the_line():
    err = error_of("""
        [[experiment]]
        name = "a"
        trials = 8 8
        mock = "rounds=1"
    """)
    assert err.line == 4 and "invalid TOML" in str(err) and str(err).startswith("bench.toml:4:")
    at_end = error_of("""
        [[experiment]]
        name = "a"
        trials = [8,
    """)
    assert at_end.line == 4


def test_unknown_key_names_key_line_and_suggestion():
    err = error_of("""
        [[experiment]]
        name = "a"
        mock = "rounds=1"
        strategies = ["sequential"]
    """)
    assert err.line == 5
    assert "unknown key 'strategies'" in str(err) and "did you mean 'strategy'" in str(err)


def test_unknown_top_level_table():
    err = error_of("""
        [[experiments]]
        name = "a"
    """)
    assert "unknown key 'experiments'" in str(err) and err.line == 2


def test_wrong_type():
    err = error_of("""
        [[experiment]]
        name = "a"
        mock = "rounds=1"
        trials = ["many"]
    """)
    assert "key 'trials'" in str(err) and "'many'" in str(err) and err.line == 5


@pytest.mark.parametrize(
    "key, value",
    [
        ("trials", "-1"),
        ("per_round", "-4"),
        ("jobs", "[2, 0]"),
        ("repeats", "0"),
        ("timeout", "-1"),
    ],
)
def test_zero_or_negative_budget(key, value):
    err = error_of(f"""
        [[experiment]]
        name = "a"
        mock = "rounds=1"
        {key} = {value}
    """)
    assert f"key '{key}'" in str(err) and err.line == 5


def test_boolean_is_not_an_integer():
    err = error_of("""
        [[experiment]]
        name = "a"
        mock = "rounds=1"
        jobs = true
    """)
    assert "key 'jobs'" in str(err)


def test_missing_model(tmp_path):
    err = error_of(
        """
        [[experiment]]
        name = "a"
        models = ["tiny", "models/nowhere.onnx"]
    """,
        tmp_path,
    )
    assert "models/nowhere.onnx" in str(err) and "not found" in str(err) and err.line == 4


def test_model_table_with_missing_path(tmp_path):
    err = error_of(
        """
        [models.mine]
        path = "mine.onnx"

        [[experiment]]
        name = "a"
        models = ["mine"]
    """,
        tmp_path,
    )
    assert "[models.mine]" in str(err) and "key 'path'" in str(err) and err.line == 3


def test_model_by_path_and_table(tmp_path):
    from simpletvm.samples import write_sample

    write_sample("tiny", tmp_path / "m" / "t.onnx")
    bench = parse_text(
        """
        [models.named]
        path = "m/t.onnx"

        [[experiment]]
        name = "a"
        models = [["named"], ["m/t.onnx"], ["cnn"]]
    """,
        tmp_path,
    )
    mixes = bench.experiments[0].mixes
    assert [m[0].label for m in mixes] == ["named", "m/t.onnx", "cnn"]
    assert mixes[0][0].path == str(tmp_path / "m" / "t.onnx") and mixes[2][0].sample == "cnn"


def test_dynamic_input_needs_input_shapes(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "dyn.onnx")
    err = error_of(
        """
        [models.dyn]
        path = "dyn.onnx"

        [[experiment]]
        name = "a"
        models = ["dyn"]
    """,
        tmp_path,
    )
    assert "dynamic" in str(err) and "input_shapes" in str(err)
    bench = parse_text(
        """
        [models.dyn]
        path = "dyn.onnx"
        input_shapes = { x = [1, 8] }

        [[experiment]]
        name = "a"
        models = ["dyn"]
    """,
        tmp_path,
    )
    assert bench.models["dyn"].input_shapes == {"x": (1, 8)}


def test_duplicate_experiment_names():
    err = error_of("""
        [[experiment]]
        name = "a"
        mock = "rounds=1"

        [[experiment]]
        name = "a"
        mock = "rounds=2"
    """)
    assert "duplicate experiment name" in str(err) and err.line == 7


@pytest.mark.parametrize("key", ["strategy", "seed", "target"])
def test_empty_matrix(key):
    err = error_of(f"""
        [[experiment]]
        name = "a"
        mock = "rounds=1"
        {key} = []
    """)
    assert f"key '{key}' is an empty list" in str(err) and err.line == 5


def test_empty_model_list_is_an_empty_matrix():
    err = error_of("""
        [[experiment]]
        name = "a"
        models = []
    """)
    assert "key 'models'" in str(err)


def test_unknown_strategy():
    err = error_of("""
        [[experiment]]
        name = "a"
        mock = "rounds=1"
        strategy = ["fastest"]
    """)
    assert "key 'strategy'" in str(err) and "interleaved" in str(err)


def test_workload_required_once():
    assert "exactly one of 'models'" in str(
        error_of("""
        [[experiment]]
        name = "a"
    """)
    )
    assert "exactly one of 'models'" in str(
        error_of("""
        [[experiment]]
        name = "a"
        models = ["tiny"]
        mock = "rounds=1"
    """)
    )


def test_bad_mock_spec():
    err = error_of("""
        [[experiment]]
        name = "a"
        mock = "rounds=2,serch=0.1"
    """)
    assert "key 'mock'" in str(err) and "serch" in str(err) and err.line == 4


def test_error_in_defaults_points_at_defaults():
    err = error_of("""
        [defaults]
        trials = [-1]

        [[experiment]]
        name = "a"
        mock = "rounds=1"
    """)
    assert err.line == 3 and "experiment 'a'" in str(err)


def test_select_unknown_experiment():
    bench = parse_text("""
        [[experiment]]
        name = "a"
        mock = "rounds=1"
    """)
    with pytest.raises(SuperbError, match="--only b: no such experiment"):
        bench.select(["b"])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="rounds=searchbuildmeasureupdate0123456789.,-x ", max_size=40))
def test_parse_mock_never_raises(text):
    result = parse_mock(text)
    assert isinstance(result, dict | str)
    if isinstance(result, dict):
        assert all(v >= 0 for v in result.values() if isinstance(v, int | float))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_parse_rejects_garbage_with_schema_error_only(text):
    try:
        parse(text, source="x.toml")
    except SchemaError as exc:
        assert "\n" not in str(exc)


def test_options_reach_every_point_and_only_set_options_change_a_key(tmp_path):
    from superb.matrix import expand_all
    from superb.schedpoint import _submission

    bench = parse_text("""
        [[experiment]]
        name = "a"
        models = ["mlp"]
        jobs = [1, 2]
        options = { population_size = 32, search_threads = 2 }

        [[experiment]]
        name = "b"
        models = ["mlp"]
    """)
    with_options, without = bench.experiments
    assert with_options.options == (("population_size", 32), ("search_threads", 2))
    points = expand_all(bench.experiments)
    direct, sched, plain = points
    assert direct.params()["options"] == {"population_size": 32, "search_threads": 2}
    assert "options" not in plain.params()  # keys recorded before options existed hold
    options = _submission(sched, 1, tmp_path)["job"].options
    assert (options.population_size, options.search_threads) == (32, 2)
    plain_options = TuningOptions(trials=64, per_round=16, seed=0)  # superb's built-in axes
    assert _submission(plain, 0, tmp_path)["job"].options == plain_options


@pytest.mark.parametrize(
    "options, words",
    [
        ("{ bogus = 1 }", "unknown tuning option 'bogus'"),
        ("{ population_size = -1 }", "population-size must be >= 1, got -1"),
        ("3", "must be a table"),
    ],
)
def test_bad_options_are_refused_with_their_line(options, words):
    err = error_of(f"""
        [[experiment]]
        name = "a"
        models = ["mlp"]
        options = {options}
    """)
    assert words in str(err) and err.line == 5


def test_options_do_not_apply_to_mock_jobs():
    err = error_of("""
        [[experiment]]
        name = "a"
        mock = "rounds=1"
        options = { population_size = 32 }
    """)
    assert "MockJobs take none" in str(err)
