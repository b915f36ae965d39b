"""The data model of a benchmarks file: experiments, models, strategies, baselines.

``schema`` builds these from TOML and checks them; everything downstream (matrix,
runner, report) works on these frozen objects only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from . import SuperbError


class Strategy(StrEnum):
    SEQUENTIAL = "sequential"
    SYNCHRONOUS = "synchronous"
    INTERLEAVED = "interleaved"
    PREDICTIVE = "predictive"


class Baseline(StrEnum):
    UNTUNED = "untuned"
    ONNXRUNTIME = "onnxruntime"


class SchemaError(SuperbError):
    def __init__(self, message: str, *, source: str = "", line: int | None = None) -> None:
        self.message, self.source, self.line = message, source, line
        where = f"{source}:{line}: " if source and line else (f"{source}: " if source else "")
        super().__init__(where + message)


@dataclass(frozen=True)
class ModelRef:
    """A model as an experiment uses it: its label, and a file path or a sample name."""

    label: str
    path: str | None = None
    sample: str | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    mixes: tuple[tuple[ModelRef, ...], ...]  # the models axis; each mix feeds one point
    mock: tuple[str, ...]  # the mock axis, when the experiment uses MockJobs
    target: tuple[str, ...]
    trials: tuple[int, ...]
    per_round: tuple[int, ...]
    strategy: tuple[Strategy, ...]
    jobs: tuple[int, ...]
    repeats: int
    seed: tuple[int, ...]
    baselines: tuple[Baseline, ...]
    timeout: float | None
    # extra tuning options of every job (TuningOptions fields, e.g. population_size)
    options: tuple[tuple[str, int | float], ...] = ()


@dataclass(frozen=True)
class BenchmarkFile:
    path: str
    models: dict[str, ModelRef]
    experiments: tuple[Experiment, ...]

    def select(self, names: list[str] | None) -> tuple[Experiment, ...]:
        """The experiments named (all when ``names`` is empty), in file order."""
        if not names:
            return self.experiments
        known = {e.name for e in self.experiments}
        for name in names:
            if name not in known:
                raise SuperbError(
                    f"--only {name}: no such experiment in {self.path}; "
                    f"choose from: {', '.join(sorted(known))}"
                )
        return tuple(e for e in self.experiments if e.name in names)
