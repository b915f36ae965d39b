"""A discrete-event simulation of MockJobs through the real registry and strategies.

Nothing sleeps: the clock is injected (``now=``) into every registry write and into
the dispatcher, so 100 jobs of minutes each simulate in seconds.  Uncontrolled
sharing (the ``synchronous`` strategy) is modelled crudely: a stage granted onto an
oversubscribed resource runs slower by the oversubscription factor at its start.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simpletvm.stages import CPU, DEVICE

from .analysis import (
    ANY_DEVICE,
    StageWork,
    capacities,
    exclusive_overlaps,
    makespan,
    makespan_lower_bound,
    resource_intervals,
    utilisation,
)
from .dispatch import Dispatcher
from .mockjob import MockJob, MockSpec
from .models import JobKind, Resource
from .registry import Registry
from .resources import device_kind_for_mock
from .strategies import lending

# The 3-job llvm mix of docs/evaluation.md (mlp, attention, cnn at 16 trials) as
# MockJobs: stage seconds read off its first run's Gantt chart. A cpu-device workload
# where one job's search is far longer than the others' measurements.
EVALUATION_MIX = (
    "prepare=5,search=6.5,build=1.3,measure=1.6,update=0.5,rounds=2,finalize=1.5,device=cpu",
    "prepare=4.4,search=8.8,build=1.6,measure=1.5,update=0.4,rounds=2,finalize=3.1,device=cpu",
    "prepare=4.4,search=36.5,build=5.5,measure=1.7,update=0.4,rounds=2,finalize=4.7,device=cpu",
)


@dataclass
class SimulationResult:
    strategy: str
    makespan: float
    lower_bound: float
    utilisation: dict[str, dict[str, float]]
    overlaps: int
    stages: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.makespan / self.lower_bound if self.lower_bound else float("nan")


def mock_stages(specs: list[MockSpec]) -> list[StageWork]:
    """The planned stages of MockJobs, with what each holds, for the lower bound."""
    work = []
    for job, spec in enumerate(specs):
        mock = MockJob(spec, sleeper=_noop)
        device = device_kind_for_mock(spec.device) or ANY_DEVICE
        while (request := mock.next_stage()) is not None:
            work.append(StageWork(job, mock.planned_seconds(), request.needs.get(CPU, 0),
                                  device if request.needs.get(DEVICE) else None))  # fmt: skip
            mock.index += 1
    return work


def lower_bound(specs: list[MockSpec], resources: list[Resource]) -> float:
    """``analysis.makespan_lower_bound`` of the MockJobs' planned stages."""
    return makespan_lower_bound(mock_stages(specs), resources)


def _noop(_: float) -> None:
    return None


def simulate(
    specs: list[MockSpec | str],
    *,
    strategy: str,
    resources: list[Resource],
    db_path: str | Path,
    active_limit: int = 1000,
    preempt: bool = True,
) -> SimulationResult:
    """Run ``specs`` to the end; ``preempt`` lets CPU-target measurements suspend stages
    (a suspended stage's end moves later by the time it spent suspended)."""
    parsed = [MockSpec.parse(s) if isinstance(s, str) else s for s in specs]
    registry = Registry(db_path)
    try:
        run = _Simulation(registry, strategy, resources, active_limit, preempt)
        run.submit(parsed)
        run.run()
        rows = resource_intervals(registry.stage_intervals(), held=True)
        res = registry.resources()
        return SimulationResult(
            strategy=strategy,
            makespan=makespan(rows),
            lower_bound=lower_bound(parsed, resources),
            utilisation=utilisation(rows, capacities(res)),
            overlaps=len(exclusive_overlaps(rows, res)),
            stages=run.stages,
        )
    finally:
        registry.close()


class _Simulation:
    """The event loop: grant what the strategy grants, then jump the clock to the next
    stage end and complete every stage ending then."""

    def __init__(
        self, registry: Registry, strategy: str, resources: list[Resource], active_limit: int,
        preempt: bool,
    ) -> None:  # fmt: skip
        registry.replace_resources(resources)
        self.registry = registry
        self.dispatcher = Dispatcher(
            registry,
            strategy=strategy,
            suspend=self.suspend if preempt else None,
            resume=self.resume,
        )
        self.capacity = {r.name: r.capacity for r in resources}
        self.active_limit = active_limit
        self.now = 0.0
        self.queued: list[tuple[int, MockSpec]] = []  # to admit, the next one last
        self.jobs: dict[int, tuple[MockJob, int]] = {}  # job id -> (job, attempt)
        self.running: list[tuple[float, int, int]] = []  # heap of (end, epoch, job id)
        self.finish: dict[int, float] = {}  # epoch -> simulated end of a running stage
        self.left: dict[int, float] = {}  # epoch -> seconds a suspended stage has left
        self.stages = 0

    def suspend(self, leases: list[dict]) -> None:
        for lease in leases:
            self.left[lease["epoch"]] = self.finish.pop(lease["epoch"]) - self.now

    def resume(self, leases: list[dict]) -> None:
        for lease in leases:
            self._ends(lease["epoch"], lease["job_id"], self.now + self.left.pop(lease["epoch"]))

    def _ends(self, epoch: int, job_id: int, at: float) -> None:
        self.finish[epoch] = at
        heapq.heappush(self.running, (at, epoch, job_id))

    def submit(self, specs: list[MockSpec]) -> None:
        for spec in specs:
            job_id = self.registry.submit(
                JobKind.MOCK.value,
                {"mock": str(spec)},
                device_kind=device_kind_for_mock(spec.device),
                now=self.now,
            )
            self.queued.append((job_id, spec))
        self.queued.reverse()

    def run(self) -> None:
        self.admit()
        while True:
            self.dispatcher.resume_finished(self.now)  # resumed stages hold units again
            self.grant()
            while self.running and self.finish.get(self.running[0][1]) != self.running[0][0]:
                heapq.heappop(self.running)  # a suspended stage's old end, or a moved one
            if not self.running:
                return
            self.now = self.running[0][0]
            self.complete_due()
            self.admit()

    def admit(self) -> None:
        """Start jobs up to the strategy's limit: each asks for its first stage."""
        limit = self.dispatcher.strategy.max_active_jobs(self.active_limit)
        while self.queued and len(self.jobs) < limit:
            job_id, spec = self.queued.pop()
            claim_and_request(self.registry, self.jobs, job_id, MockJob(spec, sleeper=_noop),
                              now=self.now)

    def grant(self) -> None:
        """One dispatch pass; each granted stage starts now and ends after its planned
        seconds (times the oversubscription at its start, under ``synchronous``)."""
        in_use = self._in_use()
        for grant in self.dispatcher.dispatch(self.now):
            job, _ = self.jobs[grant.job_id]
            self.registry.start_stage(grant.epoch, now=self.now)
            for name, amount in grant.resources.items():
                in_use[name] += amount
            slowdown = 1.0
            if self.dispatcher.strategy.oversubscribes:  # the others never exceed a capacity
                slowdown = max([in_use[n] / self.capacity[n] for n in grant.resources] + [1.0])
            self._ends(grant.epoch, grant.job_id, self.now + job.planned_seconds() * slowdown)

    def _in_use(self) -> dict[str, int]:
        """Units held by the active leases (a suspended lease's are lent: not counted)."""
        in_use = {name: 0 for name in self.capacity}
        leases = self.registry.active_leases()
        lent = lending(leases)
        for lease in leases:
            if lease.epoch not in lent:
                for name, amount in lease.resources.items():
                    in_use[name] += amount
        return in_use

    def complete_due(self) -> None:
        """Complete every stage that ends now; request each job's next stage, or finish."""
        while self.running and self.running[0][0] <= self.now:
            end, epoch, job_id = heapq.heappop(self.running)
            if self.finish.get(epoch) != end:
                continue
            del self.finish[epoch]
            run_and_complete(self.registry, self.jobs, job_id, epoch, now=self.now)
            self.stages += 1


def run_and_complete(registry, jobs: dict, job_id: int, epoch: int, *, now: float) -> None:
    """Run the job's granted stage, record its end with the next request, or finish the
    job (and drop it from ``jobs``): what a runner does, in-process."""
    job, attempt = jobs[job_id]
    outcome = job.run_stage()
    request = job.next_stage()
    follow = None
    if request is not None:
        follow = (job.index, request.kind.value, request.needs, request.info)
    registry.complete_stage(
        epoch, seconds=outcome.seconds, progress=job.progress(), next_stage=follow, now=now,
    )  # fmt: skip
    if request is None:
        registry.finish_job(job_id, attempt, result=job.result(), now=now)
        del jobs[job_id]


def claim_and_request(registry, jobs: dict, job_id: int, job, *, now: float) -> None:
    """Claim a queued job for ``job`` and request its first stage: a runner's start."""
    attempt = registry.claim_job(job_id, now=now)
    jobs[job_id] = (job, attempt)
    request = job.next_stage()
    registry.request_stage(
        job_id, attempt, job.index, request.kind.value, request.needs, request.info, now=now,
    )  # fmt: skip
