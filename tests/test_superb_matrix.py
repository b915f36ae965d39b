"""Matrix expansion: the product of the axes, stable keys, job models, direct points."""

from __future__ import annotations

import textwrap

from superb.matrix import DIRECT, PointKind, expand, expand_all
from superb.schema import parse


def experiments(text: str):
    return parse(textwrap.dedent(text), source="bench.toml").experiments


def test_product_of_axes_repeat_major():
    (exp,) = experiments("""
        [[experiment]]
        name = "e"
        mock = ["rounds=1", "rounds=2"]
        strategy = ["sequential", "interleaved"]
        jobs = [2, 3]
        seed = [0, 1]
        repeats = 2
    """)
    points = expand(exp)
    assert len(points) == 2 * 2 * 2 * 2 * 2
    assert len({p.key for p in points}) == len(points)
    repeats = [p.repeat for p in points]
    assert repeats == sorted(repeats)  # every point once before any is repeated
    assert all(p.kind is PointKind.SCHED for p in points)


def test_keys_are_stable_and_depend_on_every_parameter():
    text = """
        [[experiment]]
        name = "e"
        mock = "rounds=1"
        jobs = [2]
    """
    (a,) = expand(experiments(text)[0])
    (b,) = expand(experiments(text)[0])
    assert a.key == b.key and len(a.key) == 16
    (c,) = expand(experiments(text.replace("jobs = [2]", "jobs = [3]"))[0])
    (d,) = expand(experiments(text.replace('name = "e"', 'name = "f"'))[0])
    assert len({a.key, c.key, d.key}) == 3


def test_jobs_take_models_round_robin():
    (exp,) = experiments("""
        [[experiment]]
        name = "e"
        models = ["cnn", "mlp", "tiny"]
        jobs = [2, 4]
        strategy = ["interleaved"]
    """)
    two, four = expand(exp)
    assert two.job_labels() == ["cnn", "mlp"]
    assert four.job_labels() == ["cnn", "mlp", "tiny", "cnn"]
    assert two.mix == four.mix == ("cnn", "mlp", "tiny")


def test_model_mixes_are_an_axis():
    (exp,) = experiments("""
        [[experiment]]
        name = "e"
        models = [["cnn"], ["mlp", "tiny"]]
        jobs = [2]
        strategy = ["sequential"]
    """)
    points = expand(exp)
    assert [p.job_labels() for p in points] == [["cnn", "cnn"], ["mlp", "tiny"]]


def test_single_real_job_runs_direct_once_whatever_the_strategies():
    (exp,) = experiments("""
        [[experiment]]
        name = "e"
        models = ["tiny"]
        jobs = [1, 2]
        strategy = ["sequential", "synchronous", "interleaved", "predictive"]
    """)
    points = expand(exp)
    direct = [p for p in points if p.kind is PointKind.DIRECT]
    assert len(direct) == 1 and direct[0].strategy == DIRECT and direct[0].jobs == 1
    assert len(points) == 1 + 4


def test_single_mock_job_keeps_its_strategy():
    (exp,) = experiments("""
        [[experiment]]
        name = "e"
        mock = "rounds=1"
        jobs = [1]
        strategy = ["sequential", "predictive"]
    """)
    assert [p.strategy for p in expand(exp)] == ["sequential", "predictive"]


def test_expand_all_keeps_file_order():
    exps = experiments("""
        [[experiment]]
        name = "b"
        mock = "rounds=1"
        [[experiment]]
        name = "a"
        mock = "rounds=1"
    """)
    assert [p.experiment for p in expand_all(exps)] == ["b", "a"]
