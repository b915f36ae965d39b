"""The last two stages: compile the tuned model, then time it against the baselines.

``compile`` builds the tuned model from the database (and the untuned baseline) on the
CPU alone; ``finalize`` then holds the measurement device only to time them. Before
they were split, a GPU job held the GPU for the whole compile (seen on the H100: another
job's measurement waited 10 s behind it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import onnx

from . import bench
from .check import OutputCheck, OutputMismatchError, compare, module_outputs, reference_outputs
from .compile import compile_tuned, compile_untuned, export
from .model import InputSpec, random_inputs
from .options import TuningOptions
from .targets import TargetSpec
from .threads import runtime_threads

FINAL_STAGES = ("compile", "finalize")  # not tuning: tuning_seconds leaves them out


@dataclass
class Compiled:
    """What the compile stage hands to finalize."""

    tuned: Any  # the tuned executable
    untuned: Any | None  # the untuned baseline, when baselines are measured
    artifact: str | None  # the exported library, with --output (the tuned build so far)
    seconds: float  # compiling and exporting the tuned model
    exported: Any = None  # the build finalize chose to export


def compile_models(relax_mod, target: TargetSpec, records, *, layout_rewrite: bool,
                   output: str | None, inputs: list[InputSpec],
                   untuned: bool, untuned_mod=None) -> Compiled:
    """Build the tuned model from ``records`` (and the untuned one, from ``untuned_mod``
    where the tuned graph was rewritten), export the tuned."""
    start = time.perf_counter()
    executable = compile_tuned(relax_mod, target, records, layout_rewrite=layout_rewrite)
    artifact = None
    if output:
        artifact = str(export(executable, output, target_spec=target, inputs=inputs))
    seconds = time.perf_counter() - start
    baseline = (compile_untuned(relax_mod if untuned_mod is None else untuned_mod, target)
                if untuned else None)
    return Compiled(executable, baseline, artifact, seconds)


def time_and_export(compiled: Compiled, *, onnx_model: onnx.ModelProto,
                    inputs: list[InputSpec], target: TargetSpec, options: TuningOptions,
                    baselines: bool) -> dict[str, Any]:
    """Time the builds, export the faster one, and check its outputs against onnxruntime."""
    feeds = random_inputs(inputs, seed=options.seed)
    untuned = ort = None
    if baselines:
        # tuned and onnxruntime in alternating rounds: their ratio is what users read
        tuned, ort = bench.time_against_onnxruntime(
            compiled.tuned, target.device_type, feeds, onnx_model.SerializeToString(),
            use_gpu=target.is_gpu, threads=runtime_threads())
        untuned = bench.bench_tvm(compiled.untuned, target.device_type, feeds)
    else:
        tuned = bench.bench_tvm(compiled.tuned, target.device_type, feeds)
    exported, compiled.exported = "tuned", compiled.tuned
    if untuned is not None and untuned.median_ms < tuned.median_ms:
        # never ship a build slower than the untuned one
        exported, compiled.exported = "untuned", compiled.untuned
        if compiled.artifact:
            export(compiled.untuned, compiled.artifact, target_spec=target, inputs=inputs)
    check = None
    if options.check_outputs:
        check = _check_outputs(compiled, onnx_model, feeds, target, options)
    return {
        "artifact": compiled.artifact,
        "exported": exported,
        "output_check": check.as_dict() if check else None,
        "tuned_ms": tuned.median_ms,
        "tuned": tuned.as_dict(),
        "untuned_ms": untuned.median_ms if untuned else None,
        "untuned": untuned.as_dict() if untuned else None,
        "onnxruntime_ms": ort.median_ms if ort else None,
        "onnxruntime": ort.as_dict() if ort else None,
        "speedup": (untuned.median_ms / tuned.median_ms) if untuned else None,
        "compile_seconds": compiled.seconds,
        # TVM's runtime and onnxruntime both ran on this many threads (threads.py)
        "threads": None if target.is_gpu else runtime_threads(),
    }


def sla_summary(sla_ms: float | None, history: list[dict[str, float]], tuned_ms: float,
                stop_reason: str | None) -> dict[str, Any]:
    if sla_ms is None:
        return {}
    best = min([h["latency_ms"] for h in history] + [tuned_ms])
    return {"sla_ms": sla_ms, "sla_met": best <= sla_ms, "best_ms": best,
            "gap_ms": max(0.0, best - sla_ms), "stop_reason": stop_reason,
            "sla_history": list(history)}


def _check_outputs(compiled: Compiled, onnx_model, feeds, target: TargetSpec,
                   options: TuningOptions) -> OutputCheck | None:
    """Compare the exported build with onnxruntime; a mismatch is not exported as good."""
    try:
        reference = reference_outputs(onnx_model.SerializeToString(), feeds)
    except Exception:  # noqa: BLE001 - onnxruntime cannot run every model: not checked
        return None
    outputs = module_outputs(compiled.exported, target.device_type, feeds)
    check = compare(outputs, reference, rtol=options.output_rtol, atol=options.output_atol)
    if not check.ok:
        where = "it was not exported"
        if compiled.artifact:
            rejected = compiled.artifact + ".rejected"
            os.replace(compiled.artifact, rejected)
            compiled.artifact = None
            where = f"it was moved to {rejected}"
        raise OutputMismatchError(
            f"the tuned model's outputs differ from onnxruntime's (max abs error "
            f"{check.max_abs_err:.3g}, relative {check.max_rel_err:.3g}, allowed "
            f"{check.atol:g} + {check.rtol:g} x max|output|); {where}. Retune with another "
            "--seed, or report the model")
    return check
