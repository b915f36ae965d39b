"""The stage contract shared by the tuning engine, MockJob and the scheduler.

A job is a sequence of stages. Before each stage the job says which kind it is and
which abstract resources it needs; whoever drives the job (``simpletvm tune`` back to
back, or the ``sched`` daemon under a strategy) decides when to call ``run_stage``.
``simpletvm`` defines the contract so that ``sched`` can depend on it, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable


class StageKind(str, Enum):
    PREPARE = "prepare"
    SEARCH = "search"
    BUILD = "build"
    MEASURE = "measure"
    UPDATE = "update"
    # build the whole model from the database and measure it (SLA jobs)
    EVALUATE = "evaluate"
    # build the tuned model and the untuned baseline from the database, on the CPU alone
    COMPILE = "compile"
    # time them on the device, against onnxruntime
    FINALIZE = "finalize"


# Abstract resource names used in StageRequest.needs. The scheduler maps "device" to the
# concrete device resource of the job's target (a GPU, a CPU measurement device, an RPC
# server) and "cpu" to cpu slots.
CPU = "cpu"
DEVICE = "device"


@dataclass(frozen=True)
class StageRequest:
    kind: StageKind
    needs: dict[str, int]
    # Free-form hints for the scheduler (e.g. the number of candidates in a batch).
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageOutcome:
    kind: StageKind
    seconds: float
    trials_done: int
    trials_total: int
    best_latency_ms: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class StagedJob(Protocol):
    """What a driver needs from a job: the next stage, and a way to run exactly one."""

    def next_stage(self) -> StageRequest | None:
        """The stage that would run next, or None when the job is finished."""

    def run_stage(self, *, grant: dict[str, Any] | None = None) -> StageOutcome:
        """Run exactly the stage that ``next_stage`` announced.

        ``grant`` carries what the scheduler assigned (for example an RPC server).
        """

    def progress(self) -> dict[str, Any]:
        """trials_done, trials_total, best_latency_ms, current_task: for status views."""

    def result(self) -> dict[str, Any]:
        """Final figures once finished (artifact, latencies); {} before."""
