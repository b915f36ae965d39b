"""ONNX Clip imports as Relax maximum/minimum (onnx_prep.clip_with_relax_ops), so that
NHWC layout conversion passes through ReLU6 instead of transposing around it (real TVM)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from simpletvm.model import model_inputs, random_inputs, to_relax

F = TensorProto.FLOAT


def _model(clip_inputs, clip_attrs=None, *, opset=17, extra_inputs=(), inits=()):
    """conv 3x3 -> Clip -> conv 1x1 on 1x4x6x6: the second conv keeps the Clip between
    two convolutions, where a layout conversion must not transpose."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Clip", ["c1", *clip_inputs], ["r"], **(clip_attrs or {})),
             helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[1, 1])]
    graph = helper.make_graph(
        nodes, "clip", [helper.make_tensor_value_info("x", F, [1, 4, 6, 6]), *extra_inputs],
        [helper.make_tensor_value_info("y", F, [1, 4, 6, 6])], initializer=[w1, w2, *inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _scalar(name, value):
    return numpy_helper.from_array(np.array(value, np.float32), name)


RELU6 = dict(clip_inputs=["lo", "hi"], inits=[_scalar("lo", 0.0), _scalar("hi", 6.0)])


def _prepared(model, layout):
    from simpletvm.compile import prepare_module
    from simpletvm.targets import resolve_target

    spec = resolve_target('{"kind": "llvm", "num-cores": 1}')
    return spec, prepare_module(to_relax(model, model_inputs(model)), spec, conv_layout=layout)


def _assert_like_onnxruntime(model, layout, feeds=None):
    from simpletvm.bench import run_tvm_once
    from simpletvm.compile import compile_untuned

    spec, mod = _prepared(model, layout)
    feeds = feeds or random_inputs(model_inputs(model), seed=1)
    got = run_tvm_once(compile_untuned(mod, spec), "cpu", feeds)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_relu6_imports_as_relax_operators():
    model = _model(**RELU6)
    text = to_relax(model, model_inputs(model)).script()
    assert "R.maximum" in text and "R.minimum" in text
    assert "T_maximum" not in text and "T_minimum" not in text  # no TE function


def test_nhwc_passes_through_relu6_without_transposes():
    """Only the model's input and output are transposed (and the constant weights): none
    around the Clip."""
    _, mod = _prepared(_model(**RELU6), "NHWC")
    moved = [line for line in mod.script().splitlines()
             if "R.permute_dims(" in line and "metadata[" not in line]
    assert len(moved) == 2, moved


def test_prepare_module_takes_any_case_and_refuses_an_unknown_layout():
    """The library function, not only the entry points: an unknown layout is not NCHW."""
    from simpletvm.errors import UserInputError

    _, lower = _prepared(_model(**RELU6), "nhwc")
    _, upper = _prepared(_model(**RELU6), "NHWC")
    assert lower.script() == upper.script() and "NHWC" in upper.script()
    with pytest.raises(UserInputError, match="unknown conv layout 'NWHC'"):
        _prepared(_model(**RELU6), "NWHC")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", [
    RELU6,
    dict(clip_inputs=["lo"], inits=[_scalar("lo", 0.5)]),  # lower bound only
    dict(clip_inputs=["", "hi"], inits=[_scalar("hi", 1.0)]),  # upper bound only
    dict(clip_inputs=[], clip_attrs={"min": -1.0, "max": 2.0}, opset=6),  # attributes
], ids=["relu6", "min-only", "max-only", "opset6"])
def test_clip_matches_onnxruntime(case, layout):
    _assert_like_onnxruntime(_model(**case), layout)


def test_non_constant_bounds_fall_back_to_the_frontend():
    """A bound that is a model input is the frontend's converter's to import (TE)."""
    model = _model(["lo", "hi"], extra_inputs=[helper.make_tensor_value_info("lo", F, []),
                                               helper.make_tensor_value_info("hi", F, [])])
    text = to_relax(model, model_inputs(model)).script()
    assert "T_maximum" in text and "R.maximum" not in text
    feeds = random_inputs(model_inputs(model), seed=1)
    feeds["lo"], feeds["hi"] = np.array(-0.5, np.float32), np.array(0.5, np.float32)
    _assert_like_onnxruntime(model, "NHWC", feeds)


def test_nan_bound_falls_back_and_means_no_bound():
    model = _model(["lo", "hi"], inits=[_scalar("lo", np.nan), _scalar("hi", 1.0)])
    assert "T_maximum" in to_relax(model, model_inputs(model)).script()
    _assert_like_onnxruntime(model, "NCHW")


def test_inspect_tunes_convolutions_in_nhwc_on_a_cpu_by_default(tmp_path):
    import json

    from typer.testing import CliRunner

    from simpletvm.cli import app

    path = tmp_path / "relu6.onnx"
    onnx.save(_model(**RELU6), path)
    shown = {}
    for args in ([], ["--conv-layout", "nchw"]):
        result = CliRunner().invoke(app, ["inspect", str(path), "--json", *args])
        assert result.exit_code == 0, result.stderr
        info = json.loads(result.stdout)
        shown[info["conv_layout"]] = [t["buffers"] for t in info["tasks"]]
    assert sorted(shown) == ["NCHW", "NHWC"]  # auto is NHWC on llvm
    assert any("1x6x6x4" in b for b in shown["NHWC"])
    assert not any("1x6x6x4" in b for b in shown["NCHW"])
