import numpy as np
import onnx
import onnxruntime as ort
import pytest

from simpletvm.samples import SAMPLES, UnknownSampleError, sample_model, write_sample


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_is_valid_and_runs_in_onnxruntime(name):
    model = sample_model(name)
    onnx.checker.check_model(model)
    spec = SAMPLES[name]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(spec.input_shape).astype("float32")
    (out,) = session.run(None, {spec.input_name: x})
    assert np.isfinite(out).all()


def test_samples_are_deterministic(tmp_path):
    a = write_sample("resnet", tmp_path / "a.onnx").read_bytes()
    b = write_sample("resnet", tmp_path / "b.onnx").read_bytes()
    c = write_sample("resnet", tmp_path / "c.onnx", seed=1).read_bytes()
    assert a == b
    assert a != c


def test_required_kinds_exist():
    ops = {name: {n.op_type for n in sample_model(name).graph.node} for name in SAMPLES}
    assert "Conv" in ops["cnn"]
    assert {"Conv", "Add"} <= ops["resnet"]
    assert "MatMul" in ops["mlp"]
    assert {"MatMul", "Softmax", "LayerNormalization"} <= ops["attention"]


def test_unknown_sample():
    with pytest.raises(UnknownSampleError, match="choose one of"):
        sample_model("nope")
