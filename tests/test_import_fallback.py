"""A model TVM's ONNX frontend rejects is imported after constant folding, or named.

The failure reproduced is the one of the classic TorchScript export of a transformers
BERT: a ConstantOfShape whose shape input is empty (it makes a 0-d tensor), which TVM
0.27's converter turns into an invalid broadcast_to.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from simpletvm import onnx_prep
from simpletvm.cli import app
from simpletvm.errors import ModelError
from simpletvm.model import model_inputs, to_relax

F = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def empty_shape_model():
    """y = x * ConstantOfShape(Shape(ReduceSum(x)))  + ReduceSum(x), x: 2x3.

    ReduceSum with keepdims=0 gives a 0-d tensor, so Shape gives an empty shape and
    ConstantOfShape a 0-d tensor of its 1-element ``value``: what TVM fails on.
    """
    value = helper.make_tensor("value", F, [1], [2.0])
    return make_model(
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0, name="sum"),
         helper.make_node("Shape", ["total"], ["empty"], name="shape"),
         helper.make_node("ConstantOfShape", ["empty"], ["two"], value=value, name="fill"),
         helper.make_node("Mul", ["x", "two"], ["scaled"], name="mul"),
         helper.make_node("Add", ["scaled", "total"], ["y"], name="add")],
        [helper.make_tensor_value_info("x", F, [2, 3])],
        [helper.make_tensor_value_info("y", F, [2, 3])])


def conv6d_model():
    """A 4-D convolution: TVM converts at most 3 spatial dims, and no folding changes that."""
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1, 1, 1), np.float32), "w")
    shape = [1, 1, 2, 2, 2, 2]
    return make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv4d")],
                      [helper.make_tensor_value_info("x", F, shape)],
                      [helper.make_tensor_value_info("y", F, shape)], [w])


def _shapes(model):
    specs = model_inputs(model)
    return {s.name: list(s.shape) for s in specs}, {s.name: s.dtype for s in specs}


def test_model_reproduces_the_frontend_failure():
    model = empty_shape_model()
    with pytest.raises(onnx_prep.ImportFailure) as failure:
        onnx_prep.from_onnx_traced(model, *_shapes(model))
    assert failure.value.op_type == "ConstantOfShape"
    assert failure.value.node == "node 'fill'"
    assert "broadcast_to" in failure.value.reason


def dynamic_empty_shape_model():
    """y = x * ConstantOfShape(Shape(x)[1:1]), x: Nx3: foldable only once N is known."""
    value = helper.make_tensor("value", F, [1], [2.0])
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    return make_model(
        [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
         helper.make_node("Slice", ["shape", "one", "one"], ["empty"], name="slice"),
         helper.make_node("ConstantOfShape", ["empty"], ["two"], value=value, name="fill"),
         helper.make_node("Mul", ["x", "two"], ["y"], name="mul")],
        [helper.make_tensor_value_info("x", F, ["N", 3])],
        [helper.make_tensor_value_info("y", F, ["N", 3])], [one])


def assert_imports_like_onnxruntime(model, inputs):
    from simpletvm.bench import run_tvm_once
    from simpletvm.compile import compile_untuned, prepare_module
    from simpletvm.model import random_inputs
    from simpletvm.targets import resolve_target

    mod = to_relax(model, inputs)
    spec = resolve_target('{"kind": "llvm", "num-cores": 1}')
    feeds = random_inputs(inputs, seed=3)
    got = run_tvm_once(compile_untuned(prepare_module(mod, spec), spec), "cpu", feeds)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return feeds, want


def test_fallback_imports_and_matches_onnxruntime():
    feeds, want = assert_imports_like_onnxruntime(empty_shape_model(),
                                                  model_inputs(empty_shape_model()))
    np.testing.assert_allclose(want, feeds["x"] * 2 + feeds["x"].sum(), rtol=1e-5)


def test_fallback_fixes_the_input_shapes_before_folding():
    model = dynamic_empty_shape_model()
    with pytest.raises(onnx_prep.ImportFailure, match="broadcast_to"):
        onnx_prep.from_onnx_traced(model, {"x": [4, 3]}, {"x": "float32"})
    feeds, want = assert_imports_like_onnxruntime(model, model_inputs(model, {"x": (4, 3)}))
    np.testing.assert_allclose(want, feeds["x"] * 2, rtol=1e-6)


def test_unfixable_model_names_the_operator():
    model = conv6d_model()
    with pytest.raises(ModelError) as error:
        to_relax(model, model_inputs(model))
    text = str(error.value)
    assert text.startswith("TVM could not import the model: operator Conv (node 'conv4d') "
                           "failed: Ndim > 5 not supported for convolution")
    assert "constant folding did not help" in text
    assert "\n" not in text


def test_unfixable_model_is_one_line_from_the_cli(tmp_path):
    path = tmp_path / "conv4d.onnx"
    path.write_bytes(conv6d_model().SerializeToString())
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: TVM could not import the model: "
                                                   "operator Conv (node 'conv4d') failed")
    assert result.stdout == ""  # the frontend's own print of the node's inputs is gone


def test_folding_refuses_non_standard_operators():
    """An onnxruntime contrib op in the result would be one TVM cannot import."""
    node = helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, [2, 3])],
                              [helper.make_tensor_value_info("y", F, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    assert onnx_prep.fold_constants(model) is None
    folded = onnx_prep.fold_constants(empty_shape_model())
    assert sorted(n.op_type for n in folded.graph.node) == ["Add", "Mul", "ReduceSum"]
    assert [e.domain for e in folded.opset_import] == [""]


def test_unnamed_node_and_checks_outside_the_converters():
    """Without a node name the output names it; the frontend's own check names the node."""
    model = empty_shape_model()
    for node in model.graph.node:
        node.name = ""
    failure = onnx_prep._failure(ValueError("boom"), ("ConstantOfShape", ""), model)
    assert failure.describe() == ("operator ConstantOfShape (the node computing 'two') "
                                  "failed: boom")
    model = empty_shape_model()
    failure = onnx_prep._failure(ValueError("Node mul cannot handle ShapeExpr inputs."),
                                 None, model)
    assert (failure.op_type, failure.node) == ("Mul", "node 'mul'")
    failure = onnx_prep._failure(RuntimeError("Traceback:\n  0: f\nlast words"), None, model)
    assert failure.describe() == "last words"
