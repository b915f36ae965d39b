"""Compiling a model, tuned (from the database) or untuned, and exporting it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserInputError
from .model import InputSpec
from .targets import TargetSpec


def prepare_module(mod, target_spec: TargetSpec):
    """Inference decompositions applied before both task extraction and compilation."""
    import tvm
    from tvm import relax

    seq = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                    relax.transform.CanonicalizeBindings()])
    with target_spec.tvm_target():
        return seq(mod)


def compile_tuned(mod, target_spec: TargetSpec, database):
    """Apply the best records for this target, DLight for the rest (``compile_relax``)."""
    from tvm.s_tir.meta_schedule.relax_integration import compile_relax

    # compile_relax builds inside the target's scope itself (see compile_untuned)
    return compile_relax(database, mod, target_spec.tvm_target(), params=None)


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
    try:
        parent.mkdir(parents=True, exist_ok=True)
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
