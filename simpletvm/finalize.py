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
from typing import TYPE_CHECKING, Any

from . import bench
from .check import OutputCheck, OutputMismatchError, compare, module_outputs, reference_outputs
from .compile import compile_tuned, compile_untuned, export
from .model import random_inputs

if TYPE_CHECKING:
    from .engine import TuningJob

FINAL_STAGES = ("compile", "finalize")  # not tuning: tuning_seconds leaves them out


@dataclass
class Compiled:
    """What the compile stage hands to finalize."""

    tuned: Any  # the tuned executable
    untuned: Any | None  # the untuned baseline, when baselines are measured
    artifact: str | None  # the exported library, with --output (the tuned build so far)
    seconds: float  # compiling and exporting the tuned model
    exported: Any = None  # the build finalize chose to export


def compile_job(job: TuningJob) -> Compiled:
    start = time.perf_counter()
    executable = compile_tuned(job.relax_mod, job.target, job.apply_database(),
                               layout_rewrite=job.layout_rewrite)
    artifact = None
    if job.output:
        artifact = str(export(executable, job.output, target_spec=job.target, inputs=job.inputs))
    seconds = time.perf_counter() - start
    untuned = compile_untuned(job.relax_mod, job.target) if job.measure_baselines else None
    return Compiled(executable, untuned, artifact, seconds)


def finalize_job(job: TuningJob, compiled: Compiled) -> dict[str, Any]:
    """Time the builds, export the faster one, and check its outputs against onnxruntime."""
    feeds = random_inputs(job.inputs, seed=job.options.seed)
    tuned = bench.bench_tvm(compiled.tuned, job.target.device_type, feeds)
    untuned = ort = None
    if job.measure_baselines:
        untuned = bench.bench_tvm(compiled.untuned, job.target.device_type, feeds)
        ort = bench.bench_onnxruntime(job.onnx_model.SerializeToString(), feeds,
                                      use_gpu=job.target.is_gpu,
                                      threads=job.target.config.get("num-cores"))
    exported, compiled.exported = "tuned", compiled.tuned
    if untuned is not None and untuned.median_ms < tuned.median_ms:
        # never ship a build slower than the untuned one
        exported, compiled.exported = "untuned", compiled.untuned
        if compiled.artifact:
            export(compiled.untuned, compiled.artifact, target_spec=job.target,
                   inputs=job.inputs)
    check = _check_outputs(job, compiled, feeds) if job.options.check_outputs else None
    trials = sum(t.trials_done for t in job.tasks)
    tuning_seconds = sum(v for k, v in job.stage_seconds.items() if k not in FINAL_STAGES)
    return {
        **_sla_info(job, tuned.median_ms),
        "model": job.name,
        "target": job.target.kind,
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
        "trials": trials,
        "tasks": len(job.tasks),
        "tasks_kept_default": list(job.kept_default),
        "coverage": dict(job.coverage),
        "plan": job.plan.as_dict() if job.plan else None,
        "stop_reason": job.stop_reason,
        "served_from_db": dict(job.served),
        "tuning_seconds": tuning_seconds,
        "compile_seconds": compiled.seconds,
        "stage_seconds": dict(job.stage_seconds),
        "convergence": list(job.convergence),
    }


def _sla_info(job: TuningJob, tuned_ms: float) -> dict[str, Any]:
    sla = job.options.sla_ms
    if sla is None:
        return {}
    best = min([h["latency_ms"] for h in job.sla_history] + [tuned_ms])
    return {"sla_ms": sla, "sla_met": best <= sla, "best_ms": best,
            "gap_ms": max(0.0, best - sla), "stop_reason": job.stop_reason,
            "sla_history": list(job.sla_history)}


def _check_outputs(job: TuningJob, compiled: Compiled, feeds) -> OutputCheck | None:
    """Compare the exported build with onnxruntime; a mismatch is not exported as good."""
    try:
        reference = reference_outputs(job.onnx_model.SerializeToString(), feeds)
    except Exception:  # noqa: BLE001 - onnxruntime cannot run every model: not checked
        return None
    outputs = module_outputs(compiled.exported, job.target.device_type, feeds)
    check = compare(outputs, reference, rtol=job.options.output_rtol,
                    atol=job.options.output_atol)
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
