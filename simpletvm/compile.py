"""Compiling a model, tuned (from the database) or untuned, and exporting it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserInputError
from .model import InputSpec
from .targets import TargetSpec


def prepare_module(mod, target_spec: TargetSpec, *, conv_layout: str = "NCHW"):
    """Inference decompositions applied before both task extraction and compilation;
    ``conv_layout="NHWC"`` converts 2-D convolutions (and their weights) to NHWC/OHWI,
    with a transpose where the model's layout meets theirs; ``"auto"`` is resolved for
    the target by ``options.conv_layout_for``. The default keeps the model's layout (the
    untuned baseline)."""
    import tvm
    from tvm import relax

    from .options import conv_layout_for

    passes = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
    if conv_layout_for(conv_layout, gpu=target_spec.is_gpu) == "NHWC":
        passes.append(relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]}))
    with target_spec.tvm_target(), tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(passes)(mod)


def tuning_module(prepared, target_spec: TargetSpec, *, winograd: str = "off"):
    """The prepared module as it is tuned and built: on a CPU, eligible 3x3 convolutions
    computed by Winograd (winograd.py). Returns the module and how many were rewritten.
    The untuned baseline is built from ``prepared`` itself, TVM's own graph."""
    import tvm
    from tvm import relax

    from .winograd import rewrite_winograd

    if target_spec.is_gpu or winograd == "off":
        return prepared, 0
    # constant weights behind a layout change (NHWC) become constants the rewrite can read
    with target_spec.tvm_target(), tvm.transform.PassContext(opt_level=3):
        folded = relax.transform.FoldConstant()(prepared)
    return rewrite_winograd(folded, winograd)


def compile_tuned(mod, target_spec: TargetSpec, database, *, layout_rewrite: bool = False):
    """Apply the database's records to the model, DLight for the rest on a GPU.

    The passes are those of MetaSchedule's ``compile_relax``, so that the fused functions
    match the tuning tasks (``fuse_for_tuning``). With ``layout_rewrite`` (CPU), the
    weights were marked layout-free before tuning, so a record may carry a weight layout
    transform: it is split out of the kernel and folded into the constant weights here,
    once, so the exported module takes the same inputs as the ONNX model.
    """
    import tvm
    from tvm import relax
    from tvm.relax import build as relax_build

    target = target_spec.tvm_target()

    @tvm.transform.module_pass(opt_level=3)
    def pipeline(mod, _ctx):
        mod = tvm.transform.Sequential(fuse_passes(target, layout_rewrite))(mod)
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        if layout_rewrite:
            mod = relax.transform.SplitLayoutRewritePreproc()(mod)
            mod = relax.transform.FoldConstant()(mod)
        if target_spec.is_gpu:
            mod = _dlight_fallback()(mod)
        return tvm.transform.Sequential(_lowering_passes(target))(mod)

    with target, database, tvm.transform.PassContext(opt_level=3):
        return relax_build(mod, target=target, relax_pipeline=pipeline)


def fuse_passes(target, layout_rewrite: bool) -> list:
    """What ``fuse_for_tuning`` runs after the decompositions, so workloads match."""
    from tvm import relax
    from tvm.relax import pipeline as relax_pipeline

    try:
        dispatch = relax_pipeline.library_dispatch_passes(target)
    except (ValueError, AttributeError):
        dispatch = []
    return [*dispatch, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(), relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            *([relax.transform.AttachAttrLayoutFreeBuffers()] if layout_rewrite else [])]


def _dlight_fallback():
    from tvm.s_tir import dlight as dl

    return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                   dl.gpu.GeneralReduction(), dl.gpu.Fallback())


def _lowering_passes(target) -> list:
    from tvm import relax
    from tvm.relax import pipeline as relax_pipeline

    try:
        return [*relax_pipeline.dataflow_lower_passes(target),
                *relax_pipeline.finalize_passes(target)]
    except (ValueError, AttributeError):  # targets without a registered pipeline (llvm)
        return [relax.transform.RewriteDataflowReshape(), relax.transform.ToNonDataflow(),
                relax.transform.RemovePurityChecking(), relax.transform.CallTIRRewrite(),
                relax.transform.StaticPlanBlockMemory(), relax.transform.LowerAllocTensor(),
                relax.transform.KillAfterLastUse(), relax.transform.LowerRuntimeBuiltin(),
                relax.transform.ComputePrimValue(), relax.transform.VMShapeLower(),
                relax.transform.AttachGlobalSymbol()]


def records_to_apply(database, task_mods: list, default_secs: list[float | None]):
    """Each task's best record, where it beats the task's default schedule.

    A record slower than the default (a parallel schedule of a tiny kernel pays more in
    thread start-up than it saves) is left out, so that no task of the built model is
    slower than it would be untuned. Returns the records as a MemoryDatabase, and the
    indices of the tasks left at their default.
    """
    from tvm.s_tir.meta_schedule.database import MemoryDatabase, TuningRecord

    chosen, kept_default = MemoryDatabase(), []
    for index, (mod, default) in enumerate(zip(task_mods, default_secs)):
        if not database.has_workload(mod):
            continue
        top = database.get_top_k(database.commit_workload(mod), 1)
        if not top:
            continue
        record = top[0]
        seconds = sum(float(s) for s in record.run_secs) / len(record.run_secs)
        if default is not None and seconds >= default:
            kept_default.append(index)
            continue
        chosen.commit_tuning_record(TuningRecord(record.trace, chosen.commit_workload(mod),
                                                 record.run_secs, record.target,
                                                 record.args_info))
    return chosen, kept_default


def compile_untuned(mod, target_spec: TargetSpec):
    """TVM's default pipeline with no tuning records: the baseline users start from."""
    import tvm

    target = target_spec.tvm_target()
    # Inside the target's scope, TVM's CUDA compiler callback reads the GPU architecture
    # from the target. Outside it, it asks the device (tvm.cuda(0)), which initialises
    # CUDA in this process: in a sched runner, forked from the daemon, that failed on the
    # H100 with cudaErrorInitializationError in every GPU job's finalize stage.
    with target:
        return tvm.compile(mod, target=target)


def check_writable(path: str | Path, what: str) -> Path:
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserInputError(f"{what} '{path}' is a directory; give a file path")
    if not parent.exists() and not parent.parent.exists():
        raise UserInputError(f"the directory for {what} '{path}' does not exist, nor does "
                             f"'{parent.parent}'; create it first or choose another path")
    try:
        parent.mkdir(exist_ok=True)  # only the last level: a typo never builds a tree
    except OSError as exc:
        raise UserInputError(f"cannot create the directory for {what} '{path}': "
                             f"{exc.strerror}; choose a writable path") from None
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserInputError(f"{what} '{path}' is not writable; choose a writable path")
    return path


def export(executable, path: str | Path, *, target_spec: TargetSpec,
           inputs: list[InputSpec]) -> Path:
    """Write the shared library and a JSON sidecar describing its inputs and target."""
    path = check_writable(path, "output")
    executable.export_library(str(path))
    meta = {"target": target_spec.config, "device_type": target_spec.device_type,
            "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype}
                       for i in inputs]}
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=2))
    return path


def load_exported(path: str | Path) -> tuple[object, dict]:
    """Load a module this tool exported (never an arbitrary library from a model file)."""
    import tvm

    path = Path(path)
    meta_path = Path(str(path) + ".json")
    if not meta_path.exists():
        raise UserInputError(f"'{path}' has no '{meta_path.name}' beside it; only modules "
                             "exported by `simpletvm tune --output` can be benchmarked")
    meta = json.loads(meta_path.read_text())
    return tvm.runtime.load_module(str(path)), meta
