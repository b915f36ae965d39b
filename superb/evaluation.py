"""The evaluation view of the results: does load-aware scheduling deliver?

One row per group of points (experiment x strategy x jobs by default), medians over the
repeats, with what docs/evaluation.md asks of each point:

- makespan, its spread over repeats, and its ratio to ``sequential`` in the same group;
- the lower bound on the makespan from the measured stage durations, and the ratio;
- each job's tuned latency relative to the same model tuned alone (``jobs = 1`` points
  with the same target, trials, candidates per round and seed), median and worst;
- measurement noise: the spread (std / mean) of the tuned model's timing samples in its
  finalize stage, taken while the point's other jobs ran;
- device and CPU idle fractions over the makespan.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from typing import Any

from . import SuperbError
from .report import Report, _median, _sort_key, axis_values, default_group, idle_pct
from .results import PointStatus, ResultsDB
from .timeline import is_device

COLUMNS = (
    "points",
    "failed",
    "makespan_s",
    "makespan_spread_s",
    "vs_sequential",
    "lower_bound_s",
    "vs_bound",
    "latency_vs_alone",
    "worst_vs_alone",
    "noise_pct",
    "device_idle_pct",
    "cpu_idle_pct",
)


def lower_bound(events: list[dict], slots: int) -> float | None:
    """max(device work [+ cpu work / slots], cpu work / slots, longest job), in seconds.

    A stage's interval counts once even when it held several resources. CPU stages are
    taken to hold one slot each (the engine's defaults: one search thread, one build
    worker). A measurement on a ``cpu-device`` holds every slot, so there device work and
    CPU work add up; a separate device (a GPU) works beside the CPUs.
    """
    if not events:
        return None
    stages: dict[tuple, set[str]] = defaultdict(set)
    for e in events:
        stages[(e["job_index"], e["kind"], e["start"], e["end"])].add(e["resource"])
    device = cpu = 0.0
    per_job: dict[Any, float] = defaultdict(float)
    owns_cpus = False
    for (job, _, start, end), resources in stages.items():
        length = max(0.0, end - start)
        per_job[job] += length
        devices = [r for r in resources if is_device(r)]
        if devices:
            device += length
            owns_cpus = owns_cpus or any(r.lower().startswith("cpu-device") for r in devices)
        else:
            cpu += length
    longest = max(per_job.values())
    slots = max(1, slots)
    if owns_cpus:
        return max(device + cpu / slots, longest)
    return max(device, cpu / slots, longest)


def _alone_latencies(points: list[dict], jobs_by_point: dict) -> dict[tuple, float]:
    """(model, target, trials, per_round, seed) -> median tuned ms of it tuned alone."""
    found: dict[tuple, list[float]] = defaultdict(list)
    for point in points:
        values = axis_values(point)
        if values["jobs"] != 1 or point["status"] != PointStatus.DONE.value:
            continue
        for job in jobs_by_point[point["key"]]:
            if job["tuned_ms"] is not None:
                key = (job["model"], values["target"], values["trials"], values["per_round"],
                       values["seed"])  # fmt: skip
                found[key].append(job["tuned_ms"])
    return {key: statistics.median(v) for key, v in found.items()}


def build_evaluation(
    db: ResultsDB, *, experiments: list[str] | None = None, group_by: list[str] | None = None
) -> Report:
    everything = db.points()  # the alone references may be in another experiment
    points = [p for p in everything if not experiments or p["experiment"] in experiments]
    if not points:
        where = f" for {', '.join(experiments)}" if experiments else ""
        raise SuperbError(
            f"{db.path} holds no results{where}; run `superb run FILE --db {db.path}` first"
        )
    group_by = list(group_by) if group_by else default_group(points)
    jobs_by_point: dict[str, list[dict]] = defaultdict(list)
    for job in db.job_results([p["key"] for p in everything]):
        jobs_by_point[job["point_key"]].append(job)
    events_by_point: dict[str, list[dict]] = defaultdict(list)
    for event in db.events([p["key"] for p in points]):
        events_by_point[event["point_key"]].append(event)
    idle_by_point: dict[str, list[dict]] = defaultdict(list)
    for use in db.resources([p["key"] for p in points]):
        idle_by_point[use["point_key"]].append(use)
    slots_by_run = {
        run["id"]: (run["environment"] or {}).get("usable_cores")
        or (run["environment"] or {}).get("cpu_cores")
        or 1
        for run in db.runs()
    }
    alone = _alone_latencies(everything, jobs_by_point)

    groups: dict[tuple, list[dict]] = defaultdict(list)
    first_seen: dict[tuple[str, str], int] = {}
    for point in points:
        values = axis_values(point)
        for axis, value in values.items():
            first_seen.setdefault((axis, json.dumps(value)), len(first_seen))
        groups[tuple(json.dumps(values[a]) for a in group_by)].append(point)

    rows = []
    for members in groups.values():
        values = axis_values(members[0])
        row: dict[str, Any] = {axis: values[axis] for axis in group_by}
        done = [p for p in members if p["status"] == PointStatus.DONE.value]
        row["points"] = len(done)
        row["failed"] = sum(p["status"] == PointStatus.FAILED.value for p in members)
        spans = [p["makespan_s"] or p["wall_s"] for p in done]
        spans = [s for s in spans if s is not None]
        row["makespan_s"] = _median(spans)
        row["makespan_spread_s"] = max(spans) - min(spans) if len(spans) > 1 else None
        bounds, ratios, vs_alone, per_model, noise = [], [], [], defaultdict(list), []
        for point in done:
            slots = slots_by_run.get(point["run_id"], 1)
            bound = lower_bound(events_by_point[point["key"]], slots)
            span = point["makespan_s"] or point["wall_s"]
            if bound:
                bounds.append(bound)
                if span:
                    ratios.append(span / bound)
            pv = axis_values(point)
            for job in jobs_by_point[point["key"]]:
                tuned = job["tuned_ms"]
                if tuned is None:
                    continue
                key = (job["model"], pv["target"], pv["trials"], pv["per_round"], pv["seed"])
                if key in alone and pv["jobs"] != 1:
                    vs_alone.append(tuned / alone[key])
                    per_model[job["model"]].append(tuned / alone[key])
                if job.get("tuned_std_ms") is not None and tuned > 0:
                    noise.append(100 * job["tuned_std_ms"] / tuned)
        row["lower_bound_s"] = _median(bounds)
        row["vs_bound"] = _median(ratios)
        row["latency_vs_alone"] = _median(vs_alone)
        row["worst_vs_alone"] = (
            max(statistics.median(v) for v in per_model.values()) if per_model else None
        )
        row["noise_pct"] = _median(noise)
        row.update(idle_pct(done, idle_by_point))
        rows.append(row)

    # makespan relative to sequential with every other grouping value the same
    others = [a for a in group_by if a != "strategy"]
    sequential = {
        tuple(json.dumps(r[a]) for a in others): r["makespan_s"]
        for r in rows
        if r.get("strategy") == "sequential" and r["makespan_s"]
    }
    for row in rows:
        base = sequential.get(tuple(json.dumps(row[a]) for a in others))
        row["vs_sequential"] = row["makespan_s"] / base if base and row["makespan_s"] else None
    rows.sort(key=_sort_key(group_by, first_seen))
    failures = [
        {"key": p["key"], **axis_values(p), "error": p["error"]}
        for p in points
        if p["status"] == PointStatus.FAILED.value
    ]
    return Report(group_by, [*group_by, *COLUMNS], rows, failures)
