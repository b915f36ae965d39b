"""Summaries of the results store: one row per group of points, medians over repeats.

The default grouping is experiment x strategy x jobs, plus any other axis that takes more
than one value in the data, so points that differ in a parameter are never silently
merged into one median.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import SuperbError
from .results import PointStatus, ResultsDB
from .timeline import is_device

AXES = (
    "experiment",
    "workload",
    "target",
    "trials",
    "per_round",
    "strategy",
    "jobs",
    "seed",
    "repeat",
)
DEFAULT_GROUP = ("experiment", "strategy", "jobs")
SORT_PRIORITY = (
    "experiment",
    "workload",
    "target",
    "trials",
    "per_round",
    "jobs",
    "strategy",
    "seed",
    "repeat",
)
STRATEGY_ORDER = ("direct", "sequential", "synchronous", "interleaved", "predictive")
FORMATS = ("table", "markdown", "csv", "json")


@dataclass
class Report:
    group_by: list[str]
    columns: list[str]
    rows: list[dict[str, Any]]
    failures: list[dict[str, Any]]


def axis_values(point: dict) -> dict[str, Any]:
    params = point["params"]
    workload = (
        f"mock[{params['mock']}]"
        if params.get("mock")
        else "+".join(params.get("mix") or params["models"])
    )
    return {
        "experiment": point["experiment"],
        "workload": workload,
        **{axis: params.get(axis) for axis in AXES if axis not in ("experiment", "workload")},
    }


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _sort_key(group_by: list[str], first_seen: dict[tuple[str, str], int]):
    """Rows by SORT_PRIORITY (job counts together, strategies compared within them);
    strategies in their natural order, numbers numerically, the rest as first seen."""
    ordered = sorted(group_by, key=lambda a: SORT_PRIORITY.index(a))

    def key(row: dict) -> tuple:
        parts = []
        for axis in ordered:
            value = row[axis]
            if axis == "strategy" and value in STRATEGY_ORDER:
                parts.append((0, STRATEGY_ORDER.index(value), ""))
            elif isinstance(value, int | float):
                parts.append((1, value, ""))
            else:
                parts.append((2, first_seen.get((axis, json.dumps(value)), 0), ""))
        return tuple(parts)

    return key


def default_group(points: list[dict]) -> list[str]:
    """Experiment x strategy x jobs, plus every axis that varies inside an experiment."""
    values: dict[tuple[str, str], set] = defaultdict(set)
    for point in points:
        for axis, value in axis_values(point).items():
            values[(point["experiment"], axis)].add(json.dumps(value))
    varying = {axis for (_, axis), seen in values.items() if len(seen) > 1}
    extra = [a for a in AXES if a not in DEFAULT_GROUP and a != "repeat" and a in varying]
    return [*DEFAULT_GROUP, *extra]


def build_report(
    db: ResultsDB, *, experiments: list[str] | None = None, group_by: list[str] | None = None
) -> Report:
    for axis in group_by or []:
        if axis not in AXES:
            raise SuperbError(f"--group-by {axis}: unknown axis; choose from {', '.join(AXES)}")
    points = db.points(experiments=experiments)
    if not points:
        where = f" for {', '.join(experiments)}" if experiments else ""
        raise SuperbError(
            f"{db.path} holds no results{where}; run `superb run FILE --db {db.path}` first"
        )
    group_by = list(group_by) if group_by else default_group(points)
    keys = [p["key"] for p in points]
    jobs_by_point: dict[str, list[dict]] = defaultdict(list)
    for job in db.job_results(keys):
        jobs_by_point[job["point_key"]].append(job)
    resources_by_point: dict[str, list[dict]] = defaultdict(list)
    for use in db.resources(keys):
        resources_by_point[use["point_key"]].append(use)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    first_seen: dict[tuple[str, str], int] = {}
    models: list[str] = []
    for point in points:
        values = axis_values(point)
        for axis, value in values.items():
            first_seen.setdefault((axis, json.dumps(value)), len(first_seen))
        groups[tuple(json.dumps(values[a]) for a in group_by)].append(point)
        for job in jobs_by_point[point["key"]]:
            if job["model"] not in models:
                models.append(job["model"])
    rows = [
        _summarise(group_by, members, jobs_by_point, resources_by_point, models)
        for members in groups.values()
    ]
    rows.sort(key=_sort_key(group_by, first_seen))
    columns = [*group_by, "points", "failed", "makespan_s", "wall_s"]
    for model in models:
        for suffix in ("ms", "untuned_ms", "onnxruntime_ms"):
            column = f"{model} {suffix}"
            if any(row.get(column) is not None for row in rows):
                columns.append(column)
    columns += ["device_idle_pct", "cpu_idle_pct", "trials_done"]
    failures = [
        {"key": p["key"], **axis_values(p), "error": p["error"]}
        for p in points
        if p["status"] == PointStatus.FAILED.value
    ]
    return Report(group_by, columns, rows, failures)


def _summarise(
    group_by: list[str],
    members: list[dict],
    jobs_by_point: dict,
    resources_by_point: dict,
    models: list[str],
) -> dict[str, Any]:
    values = axis_values(members[0])
    row: dict[str, Any] = {axis: values[axis] for axis in group_by}
    done = [p for p in members if p["status"] == PointStatus.DONE.value]
    row["points"] = len(done)
    row["failed"] = sum(p["status"] == PointStatus.FAILED.value for p in members)
    row["makespan_s"] = _median(p["makespan_s"] or p["wall_s"] for p in done)
    row["wall_s"] = _median(p["wall_s"] for p in done)
    row["trials_done"] = _median(p["trials"] for p in done)
    done_jobs = [j for p in done for j in jobs_by_point[p["key"]]]
    for model in models:
        mine = [j for j in done_jobs if j["model"] == model]
        row[f"{model} ms"] = _median(j["tuned_ms"] for j in mine)
        row[f"{model} untuned_ms"] = _median(j["untuned_ms"] for j in mine)
        row[f"{model} onnxruntime_ms"] = _median(j["onnxruntime_ms"] for j in mine)
    row.update(idle_pct(done, resources_by_point))
    return row


def idle_pct(done: list[dict], resources_by_point: dict) -> dict[str, float | None]:
    """Device and CPU idle %: mean over the resources of each kind, median over points."""
    out = {}
    for label, wanted in (("device_idle_pct", True), ("cpu_idle_pct", False)):
        per_point = []
        for point in done:
            idle = [
                u["idle"]
                for u in resources_by_point[point["key"]]
                if is_device(u["resource"]) == wanted and u["idle"] is not None
            ]
            per_point.append(100 * statistics.fmean(idle) if idle else None)
        out[label] = _median(per_point)
    return out


def cell(value: Any, column: str = "") -> str:
    """Human formatting: percentages and seconds to 0.1, latencies to 3 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        if column.endswith(("_pct", "_s")) or column == "trials_done":
            return f"{value:.1f}" if column != "trials_done" else f"{value:g}"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def header(column: str) -> str:
    return column.replace("_pct", " %").replace("_ms", " ms").replace("_s", " s").replace("_", " ")


def to_markdown(report: Report) -> str:
    lines = [
        "| " + " | ".join(header(c) for c in report.columns) + " |",
        "|" + "|".join("---" for _ in report.columns) + "|",
    ]
    lines += [
        "| " + " | ".join(cell(row.get(c), c) for c in report.columns) + " |" for row in report.rows
    ]
    return "\n".join(lines) + "\n"


def to_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=report.columns, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(report.rows)
    return buffer.getvalue()


def to_json(report: Report) -> str:
    return json.dumps(
        {
            "group_by": report.group_by,
            "columns": report.columns,
            "rows": [{c: row.get(c) for c in report.columns} for row in report.rows],
            "failures": report.failures,
        },
        indent=2,
    )
