import functools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from simpletvm.cli import app
from simpletvm.samples import SAMPLES, UnknownSampleError, sample_model, write_sample
from simpletvm.samples_real import count_parameters

REAL = sorted(n for n, s in SAMPLES.items() if s.kind == "real")
TOY = sorted(n for n, s in SAMPLES.items() if s.kind != "real")
VOCAB = 30522
slow = pytest.mark.slow


def _all_samples():
    """Real architectures take a second or more each to build and run, so they are slow."""
    return [pytest.param(n, marks=slow) if n in REAL else n for n in sorted(SAMPLES)]


@functools.cache
def _model(name):
    """Build each sample once per test session: the real ones weigh up to 150 MB."""
    return sample_model(name)


def _feeds(name, seed=0):
    """A seeded input for every graph input: normal floats, token ids in the vocab, mask ones."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in SAMPLES[name].inputs:
        if inp.dtype == "float32":
            feeds[inp.name] = rng.standard_normal(inp.shape).astype("float32")
        elif inp.name == "attention_mask":
            feeds[inp.name] = np.ones(inp.shape, dtype=inp.dtype)
        else:
            feeds[inp.name] = rng.integers(0, VOCAB, inp.shape).astype(inp.dtype)
    return feeds


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", _all_samples())
def test_sample_is_valid_and_runs_in_onnxruntime(name):
    model = _model(name)
    onnx.checker.check_model(model)
    (out,) = _session(model).run(None, _feeds(name))
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", _all_samples())
def test_spec_inputs_match_the_graph(name):
    spec = SAMPLES[name]
    graph_inputs = [
        (i.name, tuple(d.dim_value for d in i.type.tensor_type.shape.dim),
         helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name)
        for i in _model(name).graph.input
    ]
    assert graph_inputs == [tuple(i) for i in spec.inputs]
    assert (spec.input_name, spec.input_shape) == spec.inputs[0][:2]


@slow
@pytest.mark.parametrize("name", REAL)
def test_real_sample_output_is_of_order_one(name):
    (out,) = _session(_model(name)).run(None, _feeds(name, seed=7))
    assert np.isfinite(out).all()
    assert 0.1 <= out.std() <= 10


@slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_activations_stay_of_order_one_through_the_network(name):
    """Calibrated BN must hold every activation near unit scale, not just the logits."""
    model = onnx.ModelProto()
    model.CopyFrom(_model(name))
    acts = [n.output[0] for n in model.graph.node if n.op_type in ("Relu", "Clip", "Add")]
    model.graph.output.extend(
        helper.make_tensor_value_info(a, TensorProto.FLOAT, None) for a in acts)
    outs = _session(model).run(acts, _feeds(name, seed=3))
    stds = [float(o.std()) for o in outs]
    assert len(stds) > 20
    assert 0.1 <= min(stds) and max(stds) <= 10, (min(stds), max(stds))


# BatchNormalization count: resnet18 has 1 stem + 2 per block x 8 + 3 downsample shortcuts;
# mobilenet_v2 has stem + 2 (first block, no expansion) + 3 x 16 blocks + last conv.
@slow
@pytest.mark.parametrize("name,params,batchnorms", [("resnet18", 11_689_512, 20),
                                                    ("mobilenet_v2", 3_504_872, 52)])
def test_real_cnns_match_torchvision(name, params, batchnorms):
    """Counted like torch's parameters(): BN running mean/var are buffers, not parameters."""
    model = _model(name)
    ops = [n.op_type for n in model.graph.node]
    assert count_parameters(model) == params
    assert ops.count("BatchNormalization") == batchnorms == ops.count("Conv")
    stats = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer
             if t.name in {n.input[4] for n in model.graph.node
                           if n.op_type == "BatchNormalization"}]
    assert not any(np.all(var == 1.0) for var in stats), "BN variances left uncalibrated"


@slow
def test_mobilenet_v2_uses_depthwise_convs_and_relu6():
    nodes = _model("mobilenet_v2").graph.node
    groups = [a.i for n in nodes if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert len(groups) == 17 and all(g > 1 for g in groups)
    assert sum(n.op_type == "Clip" for n in nodes) == 35


def test_count_parameters_on_a_toy():
    assert count_parameters(sample_model("mlp")) == (256 * 512 + 512) + (512 * 256 + 256) + (
        256 * 10 + 10)


@slow
def test_bert_encoder_inputs_and_output():
    model = _model("bert_encoder")
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [
        ("input_ids", TensorProto.INT64), ("attention_mask", TensorProto.INT64)]
    (out,) = model.graph.output
    assert out.name == "last_hidden_state"
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 64, 768]
    ops = {n.op_type for n in model.graph.node}
    assert {"Gather", "Cast", "Softmax", "Erf", "LayerNormalization"} <= ops


@slow
def test_bert_attention_mask_hides_padded_tokens():
    """Tokens behind a zero mask must not influence the others, but the mask must matter."""
    session = _session(_model("bert_encoder"))
    feeds = _feeds("bert_encoder")
    masked = dict(feeds, attention_mask=np.concatenate(
        [np.ones((1, 48), np.int64), np.zeros((1, 16), np.int64)], axis=1))
    (full,) = session.run(None, feeds)
    (a,) = session.run(None, masked)
    ids = feeds["input_ids"].copy()
    ids[:, 48:] = (ids[:, 48:] + 1) % VOCAB
    (b,) = session.run(None, dict(masked, input_ids=ids))
    np.testing.assert_allclose(a[:, :48], b[:, :48], atol=1e-5)
    assert np.abs(full[:, :48] - a[:, :48]).max() > 1e-2


def test_samples_are_deterministic(tmp_path):
    a = write_sample("resnet", tmp_path / "a.onnx").read_bytes()
    b = write_sample("resnet", tmp_path / "b.onnx").read_bytes()
    c = write_sample("resnet", tmp_path / "c.onnx", seed=1).read_bytes()
    assert a == b
    assert a != c


@slow
def test_real_sample_with_calibration_is_deterministic():
    a = sample_model("mobilenet_v2").SerializeToString()
    assert a == _model("mobilenet_v2").SerializeToString()
    assert a != sample_model("mobilenet_v2", seed=1).SerializeToString()


def test_required_kinds_exist():
    ops = {name: {n.op_type for n in sample_model(name).graph.node} for name in TOY}
    assert "Conv" in ops["cnn"]
    assert {"Conv", "Add"} <= ops["resnet"]
    assert "MatMul" in ops["mlp"]
    assert {"MatMul", "Softmax", "LayerNormalization"} <= ops["attention"]


def test_real_samples_are_listed():
    result = CliRunner().invoke(app, ["sample", "--list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["samples"]}
    assert {"resnet18", "mobilenet_v2", "bert_encoder"} <= {n for n, r in rows.items()
                                                            if r["kind"] == "real"}
    assert [i["dtype"] for i in rows["bert_encoder"]["inputs"]] == ["int64", "int64"]
    assert rows["cnn"]["input"] == "input" and rows["cnn"]["shape"] == [1, 3, 64, 64]


def test_unknown_sample():
    with pytest.raises(UnknownSampleError, match="choose one of"):
        sample_model("nope")
