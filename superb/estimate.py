"""Rough time estimates for --dry-run, so a user can tell minutes from days before starting.

Mock points are computed from their specs. Real points start from rough per-round
assumptions (the order of the stage times docs/tvm-facts.md records with TVM's own loop on a
2-core machine; our engine is faster) and are scaled by what finished points in the
results store took when there are any: history beats constants.
"""

from __future__ import annotations

import math
import os
import statistics

from .matrix import PointKind, RunPoint
from .mockspec import parse_mock
from .results import PointStatus, ResultsDB

# Seconds: assumptions for a first estimate, not measurements; calibrated from history.
PREPARE_S = 20.0
ROUND_S = {"llvm": 25.0, "cuda": 15.0}
DEFAULT_ROUND_S = 25.0
FINALIZE_S = 15.0
CPU_SLOTS = os.cpu_count() or 1


def _job_seconds(point: RunPoint) -> tuple[float, float]:
    """(cpu seconds, device seconds) of one job of the point."""
    if point.mock is not None:
        spec = parse_mock(point.mock)
        if isinstance(spec, str):
            return 0.0, 0.0
        rounds = spec.get("rounds", 1)
        cpu = spec.get("prepare", 0.0) + rounds * (
            spec.get("search", 0.0) + spec.get("build", 0.0) + spec.get("update", 0.0)
        )
        device = rounds * spec.get("measure", 0.0) + spec.get("finalize", 0.0)
        return cpu, device
    rounds = math.ceil(point.trials / point.per_round)
    per_round = ROUND_S.get(point.target.split()[0], DEFAULT_ROUND_S)
    return PREPARE_S + rounds * per_round * 0.9 + FINALIZE_S, rounds * per_round * 0.1


def model_seconds(point: RunPoint) -> float:
    """The modelled duration of a point under its strategy, before calibration."""
    cpu, device = _job_seconds(point)
    one = cpu + device
    jobs = point.jobs
    if point.strategy in ("direct", "sequential") or jobs == 1:
        return jobs * one
    if point.mock is not None and point.strategy == "synchronous":
        return one  # mock stages sleep: with no control they simply overlap
    # Load-aware (or uncontrolled) sharing: bounded by the busiest resource.
    return max(one, jobs * device, jobs * cpu / CPU_SLOTS)


def calibration(history: list[dict], points_by_key: dict[str, RunPoint]) -> dict[str, float]:
    """Measured over modelled seconds for finished points, per point kind."""
    ratios: dict[str, list[float]] = {}
    for row in history:
        point = points_by_key.get(row["key"])
        wall = row.get("wall_s")
        if point is None or not wall:
            continue
        modelled = model_seconds(point)
        if modelled > 0:
            ratios.setdefault(_bucket(point), []).append(wall / modelled)
    return {bucket: statistics.median(values) for bucket, values in ratios.items()}


def _bucket(point: RunPoint) -> str:
    return "mock" if point.mock is not None else f"{PointKind(point.kind).value}:{point.target}"


def estimate_seconds(point: RunPoint, factors: dict[str, float] | None = None) -> float:
    return model_seconds(point) * (factors or {}).get(_bucket(point), 1.0)


def plan(points: list[RunPoint], db: ResultsDB | None = None) -> list[dict]:
    """What `run --dry-run` lists: each point, its status in ``db`` and an estimate."""
    statuses = db.statuses([p.key for p in points]) if db else {}
    history = db.points(statuses=[PointStatus.DONE]) if db else []
    factors = calibration(history, {p.key: p for p in points})
    rows = []
    for point in points:
        status = statuses.get(point.key, PointStatus.PENDING)
        workload = f"mock[{point.mock}]" if point.mock else "+".join(point.job_labels())
        rows.append(
            {
                "key": point.key,
                "experiment": point.experiment,
                "strategy": point.strategy,
                "jobs": point.jobs,
                "workload": workload,
                "target": point.target,
                "trials": point.trials,
                "per_round": point.per_round,
                "seed": point.seed,
                "repeat": point.repeat,
                "kind": point.kind.value,
                "status": status.value,
                "estimate_s": 0.0
                if status is PointStatus.DONE
                else estimate_seconds(point, factors),
            }
        )
    return rows
