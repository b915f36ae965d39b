"""Each kind of bad input: one line, what is wrong and what to do, exit 2, no traceback."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from simpletvm.cli import app
from simpletvm.errors import UserInputError
from simpletvm.model import parse_input_shapes

runner = CliRunner()


def run_cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code, stderr, *fragments):
    assert code == 2, stderr
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    text = " ".join(lines)
    assert text.startswith("Error:"), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in text, text


def _model_with(node, inputs, opset_imports=None, inits=()):
    graph = helper.make_graph(
        [node],
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=list(inits),
    )
    model = helper.make_model(graph, opset_imports=opset_imports or [helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_missing_file(tmp_path):
    code, _, err = run_cli("tune", tmp_path / "nope.onnx")
    assert_one_line_error(code, err, "does not exist")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    code, _, err = run_cli("tune", path)
    assert_one_line_error(code, err, "is empty")


def test_truncated_file(tmp_path, cnn_model):
    path = tmp_path / "trunc.onnx"
    path.write_bytes(cnn_model.read_bytes()[:500])
    code, _, err = run_cli("inspect", path)
    assert_one_line_error(code, err, "not a valid ONNX model")


def test_non_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n" * 20)
    code, _, err = run_cli("tune", path)
    assert_one_line_error(code, err, "not a valid ONNX model")


def test_unsupported_operator(tmp_path):
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")
    model = _model_with(
        node,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    path = tmp_path / "custom.onnx"
    path.write_bytes(model.SerializeToString())
    code, _, err = run_cli("tune", path)
    assert_one_line_error(code, err, "unsupported operator", "FancyOp")


def test_dynamic_dimension_without_shape(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    model = _model_with(
        node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])], inits=[w]
    )
    path = tmp_path / "dyn.onnx"
    path.write_bytes(model.SerializeToString())
    code, _, err = run_cli("inspect", path)
    assert_one_line_error(code, err, "'x'", "dynamic dimension", "--input-shape x=")
    # and with the shape given it works
    code, out, err = run_cli("inspect", path, "--input-shape", "x=2,4", "--json")
    assert code == 0, err
    assert json.loads(out)["inputs"] == [{"name": "x", "shape": [2, 4], "dtype": "float32"}]


@pytest.mark.parametrize("text", ["x=", "x=1,a", "=1,2", "x:1,2", "x=1,,2", "x=0,3"])
def test_malformed_shape(text):
    with pytest.raises(UserInputError):
        parse_input_shapes([text])


def test_malformed_shape_cli(cnn_model):
    code, _, err = run_cli("tune", cnn_model, "--input-shape", "input=1,x,3")
    assert_one_line_error(code, err, "malformed input shape")


def test_unknown_input_name(cnn_model):
    code, _, err = run_cli("inspect", cnn_model, "--input-shape", "nope=1,3")
    assert_one_line_error(code, err, "unknown input", "nope")


def test_unknown_target(cnn_model):
    code, _, err = run_cli("tune", cnn_model, "--target", "tpu9000")
    assert_one_line_error(code, err, "unknown target 'tpu9000'")


def test_negative_budget(cnn_model):
    code, _, err = run_cli("tune", cnn_model, "--trials", "-5")
    assert_one_line_error(code, err, "trials must be >= 0")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_nonroot(tmp_path, cnn_model):  # pragma: no cover - CI runs as root
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run_cli("tune", cnn_model, "--output", locked / "m.so")
    assert_one_line_error(code, err, "not writable")


def test_unwritable_output(tmp_path, cnn_model):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli("tune", cnn_model, "--output", blocker / "sub" / "m.so")
    assert_one_line_error(code, err, "output")


def test_unwritable_database(tmp_path, cnn_model):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli("tune", cnn_model, "--db", blocker / "tuning.db")
    assert_one_line_error(code, err, "tuning database")


def test_database_is_a_directory(tmp_path, cnn_model):
    code, _, err = run_cli("tune", cnn_model, "--db", tmp_path)
    assert_one_line_error(code, err, "is a directory")


def test_console_script_exit_status(tmp_path):
    """The installed entry point, in a real process: exit 2 and no traceback."""
    exe = os.path.join(os.path.dirname(sys.executable), "simpletvm")
    proc = subprocess.run(
        [exe, "tune", str(tmp_path / "missing.onnx")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Error:")
