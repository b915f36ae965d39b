"""Real TVM objects from the tiny sample, a model with a dynamic input, and the shrunk
search every real-TVM test uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simpletvm.options import SHRUNK_SEARCH

# The shrunk EvolutionarySearch and one timing per candidate (simpletvm.options).
FAST_SEARCH = SHRUNK_SEARCH


def write_dynamic_model(path: Path, *, features: int = 8) -> Path:
    """A tiny ONNX model, ``y = relu(x @ w)``, whose input ``x`` has a symbolic batch
    dimension ``batch``: it needs an input shape (``x=N,features``) to be tuned."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((features, features)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@dataclass
class TinyTask:
    spec: object  # simpletvm.targets.TargetSpec
    relax_mod: object  # the whole model, prepared (a Relax module, not TIR)
    task_mod: object  # the tiny model's one tuning task (TIR)
    schedule: object  # its first design space


def tiny_task() -> TinyTask:
    from tvm.s_tir import meta_schedule as ms

    from simpletvm import model as m
    from simpletvm.compile import prepare_module
    from simpletvm.intrin import load_intrinsics
    from simpletvm.samples import sample_model
    from simpletvm.targets import resolve_target

    load_intrinsics("llvm")
    spec = resolve_target('{"kind": "llvm", "num-cores": 1}')
    onnx_model = sample_model("tiny")
    mod = prepare_module(m.to_relax(onnx_model, m.model_inputs(onnx_model)), spec)
    target = spec.tvm_target()
    task = ms.relax_integration.extract_tasks(m.fuse_for_tuning(mod, target), target)[0]
    sch = ms.TuneContext(mod=task.dispatched[0], target=target,
                         space_generator="post-order-apply", task_name=task.task_name,
                         num_threads=1).generate_design_space()[0]
    return TinyTask(spec, mod, task.dispatched[0], sch)


def options_away_from_default() -> dict:
    """Every TuningOptions field set away from its default, so that a field lost on the
    way through an entry point shows in a round trip."""
    from dataclasses import fields

    from simpletvm.options import TuningOptions

    special = {"only_tasks": (0, 3), "cost_model": "random", "conv_layout": "NHWC",
               "winograd": "4",
               "sla_ms": 12.5, "deadline_seconds": 12.5, "time_budget_seconds": 12.5}
    out = {}
    for f in fields(TuningOptions):
        default = getattr(TuningOptions(), f.name)
        if f.name in special:
            out[f.name] = special[f.name]
        elif isinstance(default, bool):
            out[f.name] = not default
        elif default is None:
            out[f.name] = 7
        else:
            out[f.name] = type(default)(default * 2 + 1)
    return out


def write_dense_model(path: Path, *, inputs: int, outputs: int, seed: int = 0) -> Path:
    """``y = relu(x @ w + b)`` with a static ``x`` of shape (1, inputs): models of one
    structure and several shapes, for schedule transfer."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(
        (rng.standard_normal((inputs, outputs)) / np.sqrt(inputs)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Add", ["h", "b"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, outputs])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def extract_task_mods(model_path: Path, target: str = '{"kind": "llvm", "num-cores": 1}', *,
                      layout_rewrite: bool = False):
    """The model's tuning tasks (TIR modules) the way the engine extracts them."""
    from tvm.s_tir import meta_schedule as ms

    from simpletvm import model as m
    from simpletvm.compile import prepare_module
    from simpletvm.intrin import load_intrinsics
    from simpletvm.targets import resolve_target

    load_intrinsics("llvm")
    spec = resolve_target(target)
    onnx_model = m.load_onnx(model_path)
    mod = prepare_module(m.to_relax(onnx_model, m.model_inputs(onnx_model)), spec)
    tasks = ms.relax_integration.extract_tasks(
        m.fuse_for_tuning(mod, spec.tvm_target(), layout_rewrite=layout_rewrite), spec.tvm_target())
    return spec, [t.dispatched[0] for t in tasks]
