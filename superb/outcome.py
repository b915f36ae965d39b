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


@dataclass
class PointOutcome:
    wall_s: float | None = None
    makespan_s: float | None = None
    tuning_s: float | None = None
    trials: int | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    jobs: list[JobOutcome] = field(default_factory=list)
    # resource -> {"busy": fraction, "idle": fraction} over the makespan
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
