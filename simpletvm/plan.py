"""The tuning plan printed before a job starts: which tasks matter, and the budget.

The budget is split by expected gain. Every task first gets a coverage round (a few
measured samples, heaviest task first); after that the gradient rule (taskalloc) gives
each round to the task whose weighted latency is expected to drop most. Before anything
is measured, a task's share of the model's weighted FLOPs stands in for its gain, so the
plan's per-task trials are that share of what the coverage rounds leave.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .options import (
    DEFAULT_ROUNDS_PER_TASK,
    MIN_DEFAULT_TRIALS,
    SIGNIFICANT_SHARE,
    TuningOptions,
)
from .taskalloc import TaskState

# Assumed round times on a 2-core llvm host, only to estimate a trial budget's duration
# before anything is measured (a coverage round samples, builds and measures a few
# candidates; a search round runs MetaSchedule's evolutionary search with its defaults).
ASSUMED_COVERAGE_ROUND_SECONDS = 3.0
ASSUMED_SEARCH_ROUND_SECONDS = 15.0


@dataclass(frozen=True)
class TaskPlan:
    index: int
    task: str
    weight: float
    flops: float
    share: float  # of the model's weight x FLOPs
    significant: bool
    planned_trials: int


@dataclass(frozen=True)
class TuningPlan:
    tasks: list[TaskPlan]
    trials: int
    time_budget_seconds: float | None
    coverage_trials: int
    estimated_seconds: float
    winograd_convs: int = 0  # 3x3 convolutions tuned as Winograd (winograd.py)

    @property
    def significant(self) -> int:
        return sum(t.significant for t in self.tasks)

    def as_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def default_trials(tasks: list[TaskState], options: TuningOptions) -> int:
    """A budget sized from the task count: coverage of all, search rounds for the rest."""
    shares = _shares(tasks)
    significant = sum(1 for t in tasks if t.active and shares[t.index] >= SIGNIFICANT_SHARE)
    active = sum(1 for t in tasks if t.active)
    return max(MIN_DEFAULT_TRIALS, active * options.coverage_measured
               + significant * DEFAULT_ROUNDS_PER_TASK * options.per_round)


def make_plan(tasks: list[TaskState], options: TuningOptions, trials: int, *,
              winograd_convs: int = 0) -> TuningPlan:
    """``trials`` may be unbounded (a time budget alone): the rounds that fit in the
    time at the assumed round times are planned then."""
    shares = _shares(tasks)
    active = [t for t in tasks if t.active]
    coverage = min(trials, len(active) * options.coverage_measured)
    rest = max(trials - coverage, 0)
    budget = options.time_budget_seconds
    if budget is not None:
        fit = (budget - len(active) * ASSUMED_COVERAGE_ROUND_SECONDS) / (
            ASSUMED_SEARCH_ROUND_SECONDS)
        rest = min(rest, max(int(fit), 0) * options.per_round)
    significant_share = sum(shares[t.index] for t in active
                            if shares[t.index] >= SIGNIFICANT_SHARE) or 1.0
    rows = []
    for t in tasks:
        share = shares[t.index]
        significant = t.active and share >= SIGNIFICANT_SHARE
        planned = 0
        if t.active:
            planned = options.coverage_measured
            if significant:
                planned += round(rest * share / significant_share)
        rows.append(TaskPlan(t.index, t.name, t.weight, t.flops, share, significant,
                             planned))
    rounds = -(-rest // options.per_round)
    estimate = (len(active) * ASSUMED_COVERAGE_ROUND_SECONDS
                + rounds * ASSUMED_SEARCH_ROUND_SECONDS)
    if options.time_budget_seconds is not None:
        estimate = min(estimate, options.time_budget_seconds)
    return TuningPlan(rows, trials, options.time_budget_seconds, coverage, estimate,
                      winograd_convs)


def _shares(tasks: list[TaskState]) -> dict[int, float]:
    work = {t.index: t.weight * max(t.flops, 1.0) for t in tasks}
    total = sum(work.values()) or 1.0
    return {i: w / total for i, w in work.items()}
