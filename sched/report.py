"""Plain data for the status, logs and result views (rendering lives in render.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .analysis import resource_intervals, utilisation
from .models import JobState
from .paths import pid_file, runner_log_dir
from .pidfile import running_pid
from .registry import Registry

FINISHED_SHOWN = 5  # recently finished jobs kept in the status view


def status(registry: Registry, *, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    pid = running_pid(pid_file(registry.path))
    resources = registry.resources()
    leases = registry.active_leases()
    rows = resource_intervals(registry.stage_intervals(), now=now)
    usage = utilisation(rows, resources)
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
        "db": str(registry.path),
        "daemon": {
            "running": pid is not None,
            "pid": pid,
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
        "jobs": [job_summary(j) for j in active + finished],
        "counts": {s.value: sum(1 for j in jobs if j["state"] is s) for s in JobState},
    }


def job_summary(job: dict[str, Any]) -> dict[str, Any]:
    progress = job.get("progress") or {}
    spec = job["spec"]
    return {
        "id": job["id"],
        "name": job["name"] or (Path(spec["model"]).stem if "model" in spec else "mock"),
        "kind": job["kind"],
        "state": JobState(job["state"]).value,
        "priority": job["priority"],
        "stage": job["stage"],
        "wait_reason": job["wait_reason"],
        "trials_done": progress.get("trials_done"),
        "trials_total": progress.get("trials_total"),
        "best_latency_ms": job["best_latency_ms"],
        "retries": job["retries"],
        "error": job["error"],
        "device_kind": job["device_kind"],
        "parent_id": job.get("parent_id"),
        "sla": sla_summary(job),
    }


def sla_summary(job: dict[str, Any]) -> dict[str, Any] | None:
    """An SLA job's target, the best whole-model latency measured so far, and its trend."""
    sla_ms = job["spec"].get("sla_ms")
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
        "deadline_seconds": job["spec"].get("deadline_seconds"),
    }


def runner_log(registry: Registry, job_id: int) -> str:
    path = runner_log_dir(registry.path) / f"job-{job_id}.log"
    return path.read_text(errors="replace") if path.exists() else ""
