"""Timing in a fresh process (what GPU targets use: CUDA does not survive a fork)."""

import pytest

from simpletvm import bench
from simpletvm.compile import compile_untuned, prepare_module
from simpletvm.model import load_onnx, model_inputs, random_inputs, to_relax
from simpletvm.targets import resolve_target


@pytest.fixture(scope="module")
def untuned_tiny(tiny_model):
    spec = resolve_target('{"kind": "llvm", "num-cores": 1}')
    model = load_onnx(tiny_model)
    inputs = model_inputs(model)
    executable = compile_untuned(prepare_module(to_relax(model, inputs), spec), spec)
    return executable, random_inputs(inputs, seed=0)


def test_isolated_timing_runs_in_another_process(untuned_tiny, monkeypatch):
    executable, feeds = untuned_tiny
    spawned = []
    real_run = bench.subprocess.run

    def spy(cmd, **kwargs):
        spawned.append(cmd)
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(bench.subprocess, "run", spy)
    stats = bench.bench_tvm(executable, "cpu", feeds, isolate=True, repeat=3, warmup=1)
    assert spawned and spawned[0][1:3] == ["-m", "simpletvm.bench"]
    assert stats.samples == 3
    assert 0 < stats.min_ms <= stats.median_ms
    in_process = bench.bench_tvm(executable, "cpu", feeds, repeat=3, warmup=1)
    assert in_process.samples == 3


def test_isolated_timing_reports_a_failing_child(untuned_tiny):
    executable, feeds = untuned_tiny
    with pytest.raises(RuntimeError, match="fresh process failed"):
        bench.bench_tvm(executable, "no-such-device", feeds, isolate=True)
