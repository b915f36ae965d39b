"""Winograd convolution (simpletvm/winograd.py): which convolutions it takes, that its
results equal onnxruntime's, and that a tuned job builds and checks it (real TVM)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from simpletvm.winograd import ConvShape, choose_tile, transform_weight


def _conv_model(path, *, cin=8, cout=16, size=9, kernel=3, stride=1, pad=1, group=1,
                weight_input=False, batch=1):
    """conv (+ bias) + relu on a batch x cin x size x size input."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((cout, cin // group, kernel, kernel))
              / np.sqrt(cin * kernel * kernel)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    out = (size + 2 * pad - kernel) // stride + 1
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, size, size])]
    inits = [numpy_helper.from_array(bias, "b")]
    if weight_input:  # the weight is a model input, not a constant
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(weight.shape)))
    else:
        inits.append(numpy_helper.from_array(weight, "w"))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[kernel, kernel],
                              pads=[pad] * 4, strides=[stride, stride], group=group),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "conv", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             [batch, cout, out, out])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _rewrite(path, mode, conv_layout="NCHW"):
    from simpletvm import model as m
    from simpletvm.compile import prepare_module, tuning_module
    from simpletvm.targets import resolve_target

    spec = resolve_target('{"kind": "llvm", "num-cores": 1}')
    onnx_model = m.load_onnx(path)
    inputs = m.model_inputs(onnx_model)
    prepared = prepare_module(m.to_relax(onnx_model, inputs), spec, conv_layout=conv_layout)
    mod, count = tuning_module(prepared, spec, winograd=mode)
    return spec, onnx_model, inputs, mod, count


def test_the_rule_picks_winograd_where_arithmetic_dominates():
    # large images: F(4x4) saves the most; resnet18's 7 x 7 x 512 layers stay direct
    assert choose_tile(ConvShape(64, 64, 56, 56), "auto") == 4
    assert choose_tile(ConvShape(128, 128, 28, 28), "auto") == 4
    assert choose_tile(ConvShape(512, 512, 7, 7), "auto") != 4
    assert choose_tile(ConvShape(3, 64, 224, 224), "auto") is None  # too few channels
    assert choose_tile(ConvShape(64, 64, 56, 56), "off") is None
    assert choose_tile(ConvShape(512, 512, 7, 7), "4") == 4
    shape = ConvShape(256, 256, 14, 14)
    assert choose_tile(shape, "auto") == min((None, 2, 4), key=shape.cost)


def test_transformed_weights_give_the_convolution_of_one_tile():
    """One output tile by Winograd equals the direct 3x3 convolution of its input tile."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    rng = np.random.default_rng(3)
    for tile in (2, 4):
        a, b, _ = _cook_toom_convolution(_interpolation_points(tile + 1), tile, 3)
        weight = rng.standard_normal((1, 1, 3, 3))
        data = rng.standard_normal((tile + 2, tile + 2))
        u = transform_weight(weight.astype(np.float32), tile)[:, :, 0, 0].astype(np.float64)
        winograd = a.T @ ((b.T @ data @ b) * u) @ a
        direct = np.array([[np.sum(data[i:i + 3, j:j + 3] * weight[0, 0])
                            for j in range(tile)] for i in range(tile)])
        np.testing.assert_allclose(winograd, direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [dict(size=9), dict(size=8, pad=0), dict(size=7, cin=3),
                                  dict(size=6, batch=2)])
@pytest.mark.parametrize("mode,layout", [("2", "NCHW"), ("4", "NCHW"), ("4", "NHWC")])
def test_rewritten_model_matches_onnxruntime(tmp_path, case, mode, layout):
    """Untuned build of the rewritten graph, odd sizes and no padding included (the last
    tile reads past the image), in both layouts."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from simpletvm.compile import compile_untuned
    from simpletvm.model import random_inputs

    path = _conv_model(tmp_path / "conv.onnx", **case)
    spec, onnx_model, inputs, mod, count = _rewrite(path, mode, layout)
    assert count == 1
    feeds = random_inputs(inputs)
    want = ort.InferenceSession(str(path)).run(None, feeds)[0]
    vm = relax.VirtualMachine(compile_untuned(mod, spec), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(feeds["x"])).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [dict(stride=2), dict(kernel=1, pad=0), dict(group=8, cin=8),
                                  dict(weight_input=True)])
def test_other_convolutions_are_left_direct(tmp_path, case):
    path = _conv_model(tmp_path / "conv.onnx", **case)
    assert _rewrite(path, "4")[4] == 0


def test_tasks_are_the_three_winograd_stages(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from simpletvm.model import fuse_for_tuning

    spec, _, _, mod, _ = _rewrite(_conv_model(tmp_path / "conv.onnx", cin=16, size=16), "auto")
    target = spec.tvm_target()
    names = [t.task_name for t in ms.relax_integration.extract_tasks(
        fuse_for_tuning(mod, target, layout_rewrite=True), target)]
    assert any("data_pack" in n for n in names) and any("batch_gemm" in n for n in names)
    # the bias and relu fuse into the inverse transform
    assert any("inverse" in n and "relu" in n for n in names)
    assert not any("conv2d" in n and "winograd" not in n for n in names)


@pytest.mark.slow
def test_a_tuned_job_builds_winograd_and_checks_it(tmp_path, fast_options):
    from simpletvm.engine import TuningJob

    path = _conv_model(tmp_path / "conv.onnx", cin=16, cout=16, size=16)
    # NCHW: the model's layout, so that the tasks are the rewrite's alone (NHWC adds the
    # input's and the output's transposes)
    job = TuningJob.from_model(path, options=fast_options(trials=8, winograd="4",
                                                          conv_layout="NCHW"),
                               db_path=tmp_path / "t.db")
    result = job.run_all().result()
    assert result["winograd_convs"] == 1 and result["plan"]["winograd_convs"] == 1
    assert result["output_check"]["ok"]
    assert result["tasks"] == 3 and result["untuned_ms"] > 0
    assert result["conv_layout"] == "NCHW"
    assert result["target_config"] == job.target.config  # the resolved target, -mcpu too
    assert result["target_config"]["kind"] == "llvm" and result["target_config"]["num-cores"]
    # the untuned baseline is TVM's own graph: one direct convolution, not the rewrite
    assert job.base_mod is not job.relax_mod
    off = TuningJob.from_model(path, options=fast_options(trials=4, winograd="off",
                                                          conv_layout="NCHW"))
    off.run_stage()  # prepare: the tasks are known
    assert off.winograd_convs == 0 and len(off.tasks) == 1 and off.base_mod is off.relax_mod
