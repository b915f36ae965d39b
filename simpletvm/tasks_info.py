"""`simpletvm inspect`: the tuning tasks a model yields, with shapes and FLOPs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import model as model_mod
from .compile import prepare_module, tuning_module
from .intrin import load_intrinsics
from .options import TuningOptions, conv_layout_for
from .targets import resolve_target


def inspect_model(path: str | Path, *, target: str = "llvm",
                  input_shapes: dict[str, tuple[int, ...]] | None = None,
                  winograd: str = TuningOptions().winograd,
                  conv_layout: str = TuningOptions().conv_layout) -> dict[str, Any]:
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    onnx_model = model_mod.load_onnx(path)
    inputs = model_mod.model_inputs(onnx_model, input_shapes)
    model_mod.check_operators(onnx_model)
    spec = resolve_target(target)
    load_intrinsics(spec.kind)
    tvm_target = spec.tvm_target()
    prepared = prepare_module(model_mod.to_relax(onnx_model, inputs), spec,
                              conv_layout=conv_layout)
    mod, _ = tuning_module(prepared, spec, winograd=winograd)
    tasks = ms.relax_integration.extract_tasks(
        model_mod.fuse_for_tuning(mod, tvm_target, layout_rewrite=not spec.is_gpu), tvm_target)
    rows = []
    for task in tasks:
        prim = task.dispatched[0]
        try:
            flops = float(estimate_tir_flops(prim))
        except Exception:  # noqa: BLE001 - some functions have no countable loops
            flops = 0.0
        func = next(iter(prim.functions.values()))
        buffers = ["x".join(str(int(d)) for d in param.shape)
                   for param in func.params if hasattr(param, "shape")]
        rows.append({"task": task.task_name, "weight": int(task.weight), "flops": int(flops),
                     "buffers": ", ".join(buffers)})
    return {"model": str(path), "target": spec.kind,
            "conv_layout": conv_layout_for(conv_layout, gpu=spec.is_gpu),
            "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype}
                       for i in inputs],
            "tasks": rows}
