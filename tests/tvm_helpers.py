"""Real TVM objects from the tiny sample, for tests of the builder and the database."""

from __future__ import annotations

from dataclasses import dataclass


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
