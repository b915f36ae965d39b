"""Plain data for the status, logs and result views (rendering lives in render.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from simpletvm.spec import JobSpec

from .analysis import capacities, resource_intervals, utilisation
from .jobs import tvm_job
from .models import JobState
from .paths import pid_file
from .paths import runner_log as runner_log_file
from .pidfile import running_pid
from .registry import Registry

FINISHED_SHOWN = 5  # recently finished jobs kept in the status view


def status(registry: Registry, *, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    pid = running_pid(pid_file(registry.path))
    elsewhere = registry.daemon_elsewhere() if pid is None else None  # another host's
    resources = registry.resources()
    leases = registry.active_leases()
    rows = resource_intervals(registry.stage_intervals(), now=now)
    usage = utilisation(rows, capacities(resources))
    holders: dict[str, list[dict[str, Any]]] = {}
    for lease in leases:
        for name, amount in lease.resources.items():
            holders.setdefault(name, []).append(
                {
                    "job_id": lease.job_id,
                    "stage": lease.kind,
                    "amount": amount,
                    "running": lease.started_at is not None,
                }
            )
    jobs = registry.list_jobs()
    active = [j for j in jobs if not j["state"].terminal]
    finished = [j for j in jobs if j["state"].terminal][-FINISHED_SHOWN:]
    return {
        "db": registry.location,
        "daemon": {
            "running": pid is not None or elsewhere is not None,
            "pid": pid if pid is not None else elsewhere,
            "elsewhere": elsewhere is not None,  # serving from another host (PostgreSQL)
            "strategy": registry.get_setting("strategy", "interleaved"),
        },
        "resources": [
            {
                "name": r.name,
                "kind": r.kind.value,
                "capacity": r.capacity,
                "exclusive": r.exclusive,
                "holders": holders.get(r.name, []),
                "device_kind": r.group,
                "down": r.down,
                "busy": usage.get(r.name, {}).get("busy", 0.0),
            }
            for r in resources.values()
        ],
        "hosts": [
            {"name": h["name"], "state": h["state"], "pid": h["pid"], "max_jobs": h["max_jobs"],
             "heartbeat_age_s": h["age"], "reason": h["reason"]}
            for h in registry.hosts()
        ],  # fmt: skip
        "jobs": [job_summary(j) for j in active + finished],
        "counts": {s.value: sum(1 for j in jobs if j["state"] is s) for s in JobState},
    }


def job_summary(job: dict[str, Any]) -> dict[str, Any]:
    progress = job.get("progress") or {}
    spec = tvm_job(job)
    return {
        "id": job["id"],
        "name": job["name"] or (Path(spec.model).stem if spec else "mock"),
        "kind": job["kind"],
        "state": JobState(job["state"]).value,
        "priority": job["priority"],
        "stage": job["stage"],
        "wait_reason": job["wait_reason"],
        "trials_done": progress.get("trials_done"),
        "trials_total": progress.get("trials_total"),
        "best_latency_ms": job["best_latency_ms"],
        **model_latency(job),
        "retries": job["retries"],
        "error": job["error"],
        "device_kind": job["device_kind"],
        "host": job.get("host"),  # the agent's host it runs on; None: the daemon's
        "parent_id": job.get("parent_id"),
        "sla": sla_summary(job, spec),
    }


def model_latency(job: dict[str, Any]) -> dict[str, Any]:
    """The whole model's latency in ms and what it is: ``measured`` (a finished job's
    tuned build), ``evaluated`` (an SLA job's last evaluate stage timed the whole model)
    or ``estimate`` (the engine's progress: the sum over the tasks measured so far of
    weight x best kernel time, so below the model's time until every task is measured).
    A MockJob's are synthetic."""
    result, progress = job.get("result") or {}, job.get("progress") or {}
    if result.get("tuned_ms") is not None:
        return {"model_ms": result["tuned_ms"], "model_ms_is": "measured"}
    if progress.get("model_ms") is not None:
        return {"model_ms": progress["model_ms"], "model_ms_is": "evaluated"}
    estimate = progress.get("best_latency_ms", job.get("best_latency_ms"))
    return {"model_ms": estimate, "model_ms_is": "estimate" if estimate is not None else None}


def sla_summary(job: dict[str, Any], spec: JobSpec | None) -> dict[str, Any] | None:
    """An SLA job's target, the best whole-model latency measured so far, and its trend."""
    sla_ms = spec.options.sla_ms if spec else None
    if sla_ms is None:
        return None
    progress, result = job.get("progress") or {}, job.get("result") or {}
    trend = list(progress.get("trend") or [])
    best = result.get("best_ms")
    if best is None and trend:
        best = min(trend)
    met = result.get("sla_met")
    if met is None and best is not None:
        met = best <= sla_ms
    return {
        "sla_ms": sla_ms,
        "best_ms": best,
        "model_ms": progress.get("model_ms"),
        "trend": trend,
        "met": met,
        "stop_reason": result.get("stop_reason"),
        "deadline_seconds": spec.options.deadline_seconds,
    }


def runner_log(registry: Registry, job_id: int) -> str:
    path = runner_log_file(registry.path, job_id)
    return path.read_text(errors="replace") if path.exists() else ""
