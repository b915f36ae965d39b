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
from dataclasses import dataclass
from typing import Any

from tvmsched.analysis import StageWork, makespan_lower_bound
from tvmsched.models import Resource, ResourceKind
from tvmsched.resources import kind_for_name

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
    """``tvmsched.analysis.makespan_lower_bound`` of a point's recorded stages, in seconds.

    A stage is its events with one job, kind, start and end (one per resource it held);
    it held the cpu slots its ``cpu`` event records (1 in files from before amounts were
    recorded), and a device if it held any; each device resource seen is one device.
    """
    if not events:
        return None
    stages: dict[tuple, dict[str, int]] = defaultdict(dict)
    for e in events:
        stages[(e["job_index"], e["kind"], e["start"], e["end"])][e["resource"]] = (
            e.get("amount") or 1
        )
    devices = {name for held in stages.values() for name in held if is_device(name)}
    resources = [Resource("cpu", ResourceKind.CPU, max(1, slots), False)]
    resources += [Resource(name, kind_for_name(name), 1, True) for name in sorted(devices)]
    work = []
    for (job, _, start, end), held in stages.items():
        device = next((name for name in held if is_device(name)), None)
        cpu = sum(amount for name, amount in held.items() if not is_device(name))
        work.append(StageWork(job, max(0.0, end - start), cpu,
                              kind_for_name(device).value if device else None))  # fmt: skip
    return makespan_lower_bound(work, resources)


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


@dataclass
class _Measured:
    """What the evaluation reads from the results store, by point key."""

    jobs: dict[str, list[dict]]  # of every point: the alone references may be elsewhere
    events: dict[str, list[dict]]
    resources: dict[str, list[dict]]
    slots: dict[int, int]  # cpu slots, by run id
    alone: dict[tuple, float]  # see _alone_latencies

    @classmethod
    def read(cls, db: ResultsDB, points: list[dict], everything: list[dict]) -> _Measured:
        keys = [p["key"] for p in points]
        jobs = _by_point(db.job_results([p["key"] for p in everything]))
        slots = {}
        for run in db.runs():
            environment = run["environment"] or {}
            slots[run["id"]] = environment.get("usable_cores") or environment.get("cpu_cores") or 1
        return cls(jobs, _by_point(db.events(keys)), _by_point(db.resources(keys)), slots,
                   _alone_latencies(everything, jobs))  # fmt: skip


def _by_point(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        grouped[row["point_key"]].append(row)
    return grouped


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
    measured = _Measured.read(db, points, everything)
    groups, first_seen = _groups(points, group_by)
    rows = [_row(members, group_by, measured) for members in groups.values()]
    _add_vs_sequential(rows, group_by)
    rows.sort(key=_sort_key(group_by, first_seen))
    failures = [
        {"key": p["key"], **axis_values(p), "error": p["error"]}
        for p in points
        if p["status"] == PointStatus.FAILED.value
    ]
    return Report(group_by, [*group_by, *COLUMNS], rows, failures)


def _groups(points: list[dict], group_by: list[str]):
    """The points by their values of the grouping axes, and each axis value's first
    appearance (the order rows keep where no natural order applies)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    first_seen: dict[tuple[str, str], int] = {}
    for point in points:
        values = axis_values(point)
        for axis, value in values.items():
            first_seen.setdefault((axis, json.dumps(value)), len(first_seen))
        groups[tuple(json.dumps(values[a]) for a in group_by)].append(point)
    return groups, first_seen


def _row(members: list[dict], group_by: list[str], measured: _Measured) -> dict[str, Any]:
    """One group's row: medians over its finished points."""
    values = axis_values(members[0])
    row: dict[str, Any] = {axis: values[axis] for axis in group_by}
    done = [p for p in members if p["status"] == PointStatus.DONE.value]
    row["points"] = len(done)
    row["failed"] = sum(p["status"] == PointStatus.FAILED.value for p in members)
    spans = [s for s in (p["makespan_s"] or p["wall_s"] for p in done) if s is not None]
    row["makespan_s"] = _median(spans)
    row["makespan_spread_s"] = max(spans) - min(spans) if len(spans) > 1 else None
    bounds, ratios = _bounds(done, measured)
    row["lower_bound_s"] = _median(bounds)
    row["vs_bound"] = _median(ratios)
    vs_alone, per_model, noise = _latencies(done, measured)
    row["latency_vs_alone"] = _median(vs_alone)
    row["worst_vs_alone"] = (
        max(statistics.median(v) for v in per_model.values()) if per_model else None
    )
    row["noise_pct"] = _median(noise)
    row.update(idle_pct(done, measured.resources))
    return row


def _bounds(done: list[dict], measured: _Measured) -> tuple[list[float], list[float]]:
    """Each point's makespan lower bound, and its makespan over that bound."""
    bounds, ratios = [], []
    for point in done:
        slots = measured.slots.get(point["run_id"], 1)
        bound = lower_bound(measured.events[point["key"]], slots)
        span = point["makespan_s"] or point["wall_s"]
        if bound:
            bounds.append(bound)
            if span:
                ratios.append(span / bound)
    return bounds, ratios


def _latencies(done: list[dict], measured: _Measured):
    """Each job's tuned latency over the same model's alone (all, and by model), and the
    noise (std / tuned, %) of its tuned timing."""
    vs_alone: list[float] = []
    per_model: dict[str, list[float]] = defaultdict(list)
    noise: list[float] = []
    for point in done:
        pv = axis_values(point)
        for job in measured.jobs[point["key"]]:
            tuned = job["tuned_ms"]
            if tuned is None:
                continue
            key = (job["model"], pv["target"], pv["trials"], pv["per_round"], pv["seed"])
            if key in measured.alone and pv["jobs"] != 1:
                vs_alone.append(tuned / measured.alone[key])
                per_model[job["model"]].append(tuned / measured.alone[key])
            if job.get("tuned_std_ms") is not None and tuned > 0:
                noise.append(100 * job["tuned_std_ms"] / tuned)
    return vs_alone, per_model, noise


def _add_vs_sequential(rows: list[dict], group_by: list[str]) -> None:
    """Each row's makespan over sequential's, with every other grouping value the same."""
    others = [a for a in group_by if a != "strategy"]
    sequential = {
        tuple(json.dumps(r[a]) for a in others): r["makespan_s"]
        for r in rows
        if r.get("strategy") == "sequential" and r["makespan_s"]
    }
    for row in rows:
        base = sequential.get(tuple(json.dumps(row[a]) for a in others))
        row["vs_sequential"] = row["makespan_s"] / base if base and row["makespan_s"] else None
