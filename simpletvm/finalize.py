"""The last two stages: compile the tuned model, then time it against the baselines.

``compile`` builds the tuned model from the database (and the untuned baseline) on the
CPU alone; ``finalize`` then holds the measurement device only to time them. Before
they were split, a GPU job held the GPU for the whole compile (seen on the H100: another
job's measurement waited 10 s behind it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import bench
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
    artifact: str | None  # the exported library, with --output
    seconds: float  # compiling and exporting the tuned model


def compile_job(job: TuningJob) -> Compiled:
    start = time.perf_counter()
    executable = compile_tuned(job.relax_mod, job.target, job.database)
    artifact = None
    if job.output:
        artifact = str(export(executable, job.output, target_spec=job.target, inputs=job.inputs))
    seconds = time.perf_counter() - start
    untuned = compile_untuned(job.relax_mod, job.target) if job.measure_baselines else None
    return Compiled(executable, untuned, artifact, seconds)


def finalize_job(job: TuningJob, compiled: Compiled) -> dict[str, Any]:
    feeds = random_inputs(job.inputs, seed=job.options.seed)
    tuned = bench.bench_tvm(compiled.tuned, job.target.device_type, feeds)
    untuned = ort = None
    if job.measure_baselines:
        untuned = bench.bench_tvm(compiled.untuned, job.target.device_type, feeds)
        ort = bench.bench_onnxruntime(job.onnx_model.SerializeToString(), feeds,
                                      use_gpu=job.target.is_gpu,
                                      threads=job.target.config.get("num-cores"))
    trials = sum(t.trials_done for t in job.tasks)
    tuning_seconds = sum(v for k, v in job.stage_seconds.items() if k not in FINAL_STAGES)
    sla = job.options.sla_ms
    sla_info = {}
    if sla is not None:
        measured = [h["latency_ms"] for h in job.sla_history] + [tuned.median_ms]
        best = min(measured)
        sla_info = {"sla_ms": sla, "sla_met": best <= sla, "best_ms": best,
                    "gap_ms": max(0.0, best - sla), "stop_reason": job.stop_reason,
                    "sla_history": list(job.sla_history)}
    return {
        **sla_info,
        "model": job.name,
        "target": job.target.kind,
        "artifact": compiled.artifact,
        "tuned_ms": tuned.median_ms,
        "tuned": tuned.as_dict(),
        "untuned_ms": untuned.median_ms if untuned else None,
        "untuned": untuned.as_dict() if untuned else None,
        "onnxruntime_ms": ort.median_ms if ort else None,
        "onnxruntime": ort.as_dict() if ort else None,
        "speedup": (untuned.median_ms / tuned.median_ms) if untuned else None,
        "trials": trials,
        "tasks": len(job.tasks),
        "served_from_db": dict(job.served),
        "tuning_seconds": tuning_seconds,
        "compile_seconds": compiled.seconds,
        "stage_seconds": dict(job.stage_seconds),
        "convergence": list(job.convergence),
    }
