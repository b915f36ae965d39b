"""What running one point produces, in the shape the results store records.

Executors fill these in; ``results.ResultsDB.finish_point`` writes them in one
transaction, so a point is recorded completely or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class PointFailed(Exception):
    """A point failed; ``outcome`` holds whatever was measured before it did."""

    def __init__(self, message: str, outcome: PointOutcome | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass
class Event:
    """One stage of one job holding one resource, in seconds since the point started."""

    job_index: int
    kind: str
    resource: str
    start: float
    end: float
    amount: int = 1  # the units of the resource it held (cpu slots; 1 for a device)


@dataclass
class ConvergencePoint:
    job_index: int
    trials: int
    seconds: float
    best_ms: float | None


@dataclass
class JobOutcome:
    index: int
    model: str
    status: str = "done"
    error: str | None = None
    tuned_ms: float | None = None
    untuned_ms: float | None = None
    onnxruntime_ms: float | None = None
    trials: int | None = None
    tuning_s: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # spread of the tuned model's timing samples in its finalize stage, taken while the
    # point's other jobs ran (the measurement noise a strategy lets through)
    tuned_std_ms: float | None = None


def job_outcome(
    index: int,
    model: str,
    result: dict[str, Any],
    baselines: tuple[str, ...] | list[str],
    *,
    status: str = "done",
    error: str | None = None,
    stage_seconds: dict[str, float] | None = None,
) -> tuple[JobOutcome, list[ConvergencePoint]]:
    """A job's outcome and convergence from the engine's result dict (``TuningJob.result``);
    the untuned and onnxruntime latencies only for the baselines the point asked for."""
    job = JobOutcome(
        index=index,
        model=model,
        status=status,
        error=error,
        tuned_ms=result.get("tuned_ms"),
        tuned_std_ms=(result.get("tuned") or {}).get("std_ms"),
        untuned_ms=result.get("untuned_ms") if "untuned" in baselines else None,
        onnxruntime_ms=result.get("onnxruntime_ms") if "onnxruntime" in baselines else None,
        trials=result.get("trials"),
        tuning_s=result.get("tuning_seconds"),
        stage_seconds=dict(result.get("stage_seconds") or stage_seconds or {}),
    )
    convergence = [
        ConvergencePoint(
            index, int(c.get("trials", 0)), float(c.get("seconds", 0.0)), c.get("best_ms")
        )
        for c in result.get("convergence") or []
    ]
    return job, convergence


@dataclass
class PointOutcome:
    wall_s: float | None = None
    makespan_s: float | None = None
    tuning_s: float | None = None
    trials: int | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    jobs: list[JobOutcome] = field(default_factory=list)
    # resource -> {"busy": fraction, "idle": fraction}: tvmsched.analysis.utilisation
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    convergence: list[ConvergencePoint] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def summarise_jobs(self) -> None:
        """Point totals from the jobs: trials and per-stage seconds summed over jobs."""
        trials = [j.trials for j in self.jobs if j.trials is not None]
        if self.trials is None and trials:
            self.trials = sum(trials)
        if not self.stage_seconds:
            totals: dict[str, float] = {}
            for job in self.jobs:
                for kind, seconds in job.stage_seconds.items():
                    totals[kind] = totals.get(kind, 0.0) + float(seconds)
            self.stage_seconds = totals
