"""The finalize stage: build from the database, export, and measure against baselines."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import bench
from .compile import compile_tuned, compile_untuned, export
from .model import random_inputs

if TYPE_CHECKING:
    from .engine import TuningJob


def finalize_job(job: TuningJob) -> dict[str, Any]:
    start = time.perf_counter()
    executable = compile_tuned(job.relax_mod, job.target, job.database)
    job.executable = executable
    artifact = None
    if job.output:
        artifact = str(export(executable, job.output, target_spec=job.target, inputs=job.inputs))
    compile_seconds = time.perf_counter() - start
    feeds = random_inputs(job.inputs, seed=job.options.seed)
    tuned = bench.bench_tvm(executable, job.target.device_type, feeds)
    untuned = ort = None
    if job.measure_baselines:
        untuned = bench.bench_tvm(compile_untuned(job.relax_mod, job.target),
                                  job.target.device_type, feeds)
        ort = bench.bench_onnxruntime(job.onnx_model.SerializeToString(), feeds,
                                      use_gpu=job.target.is_gpu,
                                      threads=job.target.config.get("num-cores"))
    trials = sum(t.trials_done for t in job.tasks)
    tuning_seconds = sum(v for k, v in job.stage_seconds.items() if k != "finalize")
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
        "artifact": artifact,
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
        "compile_seconds": compile_seconds,
        "stage_seconds": dict(job.stage_seconds),
        "convergence": list(job.convergence),
    }
