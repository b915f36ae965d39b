"""Expand experiments into run points, each with a stable key for resuming.

The key is a hash of exactly what determines the run (experiment, workload, target,
budgets, strategy, jobs, seed, repeat), so the same file expands to the same keys on
every invocation and a finished point is recognised and skipped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from simpletvm.options import TuningOptions
from simpletvm.spec import JobSpec

from . import SuperbError
from .inputs import MAX_POINTS_ENV
from .spec import Baseline, Experiment, ModelRef

# A single real job runs the engine directly: no scheduler is involved, so the strategy
# axis collapses to this one value for such points.
DIRECT = "direct"


class PointKind(StrEnum):
    DIRECT = "direct"  # one real job: the simpletvm engine in a forked child
    SCHED = "sched"  # several jobs, or MockJobs: a private sched daemon


@dataclass(frozen=True)
class RunPoint:
    experiment: str
    models: tuple[ModelRef, ...]  # the model of each job; empty for mock points
    mock: str | None
    target: str
    trials: int
    per_round: int
    strategy: str
    jobs: int
    seed: int
    repeat: int
    mix: tuple[str, ...] = ()  # the experiment's model mix this point draws its jobs from
    baselines: tuple[Baseline, ...] = ()
    timeout: float | None = None
    options: tuple[tuple[str, int | float], ...] = ()  # extra TuningOptions of every job

    @property
    def kind(self) -> PointKind:
        return PointKind.DIRECT if self.mock is None and self.jobs == 1 else PointKind.SCHED

    def job_labels(self) -> list[str]:
        """What each job tunes, for display and per-model results."""
        if self.mock is not None:
            return ["mock"] * self.jobs
        return [m.label for m in self.models]

    def params(self) -> dict:
        """The parameters that identify the point (what its key hashes)."""
        return {
            "experiment": self.experiment,
            "mix": list(self.mix),
            "models": [m.label for m in self.models],
            "mock": self.mock,
            "target": self.target,
            "trials": self.trials,
            "per_round": self.per_round,
            "strategy": self.strategy,
            "jobs": self.jobs,
            "seed": self.seed,
            "repeat": self.repeat,
            # only when set: the points recorded before options existed keep their keys
            **({"options": dict(self.options)} if self.options else {}),
        }

    def job_spec(self, index: int, model_path: str, *, output: str, tuning_db: str) -> JobSpec:
        """Job ``index``'s specification, as both paths (direct and sched) pass it on: the
        point's budget and options, seed + index, the model's input shapes, baselines."""
        return JobSpec(
            model=model_path,
            target=self.target,
            options=TuningOptions(
                trials=self.trials,
                per_round=self.per_round,
                seed=self.seed + index,
                **dict(self.options),
            ),
            input_shapes=dict(self.models[index].input_shapes),
            baselines=bool(self.baselines),
            output=output,
            tuning_db=tuning_db,
        )

    @property
    def key(self) -> str:
        canonical = json.dumps(self.params(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def label(self) -> str:
        workload = f"mock[{self.mock}]" if self.mock else "+".join(self.job_labels())
        return (
            f"{self.experiment}: {self.strategy} jobs={self.jobs} {workload} "
            f"{self.target} trials={self.trials} seed={self.seed} repeat={self.repeat}"
        )


def count(experiment: Experiment) -> int:
    """How many points ``experiment`` expands to, computed without expanding it (an upper
    bound when an axis repeats a value): a single real job has no strategy axis."""
    workloads = len(experiment.mock) or len(experiment.mixes)
    per_jobs = sum(
        1 if not experiment.mock and jobs == 1 else len(experiment.strategy)
        for jobs in experiment.jobs
    )
    axes = (experiment.target, experiment.trials, experiment.per_round, experiment.seed)
    return experiment.repeats * workloads * per_jobs * math.prod(len(axis) for axis in axes)


def check_size(experiments: Iterable[Experiment], limit: int) -> int:
    """The number of points of ``experiments``; SuperbError if it is over ``limit``."""
    sizes = {e.name: count(e) for e in experiments}
    total = sum(sizes.values())
    if total > limit:
        biggest = max(sizes, key=sizes.__getitem__)
        raise SuperbError(
            f"the matrix has {total:,} points (experiment '{biggest}': {sizes[biggest]:,}), "
            f"over the limit of {limit:,}; make its axes shorter or split it, or raise the "
            f"limit with --max-points N or {MAX_POINTS_ENV}=N"
        )
    return total


def iter_points(experiment: Experiment) -> Iterator[RunPoint]:
    """Every point of one experiment, repeat-major so a partial run covers the matrix;
    one at a time (only the keys seen are kept, to drop duplicates)."""
    seen: set[str] = set()
    workloads: list[tuple[tuple[ModelRef, ...], str | None]] = (
        [((), spec) for spec in experiment.mock]
        if experiment.mock
        else [(mix, None) for mix in experiment.mixes]
    )
    for repeat in range(experiment.repeats):
        for (mix, mock), target, trials, per_round, jobs, strategy, seed in itertools.product(
            workloads,
            experiment.target,
            experiment.trials,
            experiment.per_round,
            experiment.jobs,
            experiment.strategy,
            experiment.seed,
        ):
            models = tuple(mix[i % len(mix)] for i in range(jobs)) if mix else ()
            direct = mock is None and jobs == 1
            point = RunPoint(
                experiment=experiment.name,
                models=models,
                mock=mock,
                target=target,
                trials=trials,
                per_round=per_round,
                strategy=DIRECT if direct else strategy.value,
                jobs=jobs,
                seed=seed,
                repeat=repeat,
                mix=tuple(m.label for m in mix),
                baselines=experiment.baselines,
                timeout=experiment.timeout,
                options=experiment.options,
            )
            if point.key not in seen:
                seen.add(point.key)
                yield point


def iter_all(experiments: Iterable[Experiment]) -> Iterator[RunPoint]:
    for experiment in experiments:
        yield from iter_points(experiment)


def expand(experiment: Experiment) -> list[RunPoint]:
    return list(iter_points(experiment))


def expand_all(experiments: Iterable[Experiment]) -> list[RunPoint]:
    return list(iter_all(experiments))
