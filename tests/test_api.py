"""The chainable API: methods return self, results are attributes."""

import pytest

from simpletvm.api import SimpleTVM
from simpletvm.errors import UserInputError

pytestmark = pytest.mark.slow


def test_chain_untuned(tiny_model, tmp_path):
    pipeline = SimpleTVM.load(tiny_model)
    assert pipeline.target("llvm") is pipeline
    assert pipeline.build() is pipeline
    assert pipeline.benchmark(repeat=5) is pipeline
    assert pipeline.latency.median_ms > 0
    assert pipeline.export(tmp_path / "u.so") is pipeline
    assert pipeline.artifact.exists()


def test_chain_tuned_and_compare(tiny_model, tmp_path):
    pipeline = (
        SimpleTVM.load(tiny_model, input_shapes={"input": (1, 64)})
        .target('{"kind": "llvm", "num-cores": 1}')
        .tune(
            trials=4,
            db=tmp_path / "t.db",
            per_round=4,
            population_size=16,
            init_min_unmeasured=4,
            genetic_num_iters=1,
            number=1,
            min_repeat_ms=0,
        )
        .build()
        .benchmark(repeat=5)
        .compare()
    )
    assert pipeline.records == 4
    assert pipeline.tuning_seconds > 0
    assert {"search", "build", "measure", "update"} <= set(pipeline.stage_seconds)
    assert pipeline.comparison["tuned_ms"] > 0
    assert pipeline.comparison["untuned_ms"] > 0
    assert pipeline.comparison["onnxruntime_ms"] > 0
    # the untuned baseline is the graph the job tuned, as `simpletvm tune` times it
    assert pipeline._untuned_module() is pipeline.job.base_mod


def test_export_before_build_is_an_error(tiny_model, tmp_path):
    with pytest.raises(UserInputError, match="nothing to export"):
        SimpleTVM.load(tiny_model).export(tmp_path / "x.so")


def test_untuned_baseline_before_tuning_takes_the_default_layout(cnn_model):
    # on a CPU the default (auto) tunes and times convolutions in NHWC
    script = SimpleTVM.load(cnn_model).target("llvm")._untuned_module().script()
    assert 'data_layout="NHWC"' in script
