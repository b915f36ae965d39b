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

from .analysis import exclusive_overlaps, makespan, resource_intervals, utilisation
from .dispatch import Dispatcher
from .mockjob import MockJob, MockSpec
from .models import JobKind, Resource, ResourceKind
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


def lower_bound(specs: list[MockSpec], resources: list[Resource]) -> float:
    """max(total device work / devices, total cpu work / cpu slots, longest job)."""
    slots = sum(r.capacity for r in resources if r.kind is ResourceKind.CPU) or 1
    devices = sum(1 for r in resources if r.exclusive) or 1
    device = cpu = longest = 0.0
    for spec in specs:
        total = 0.0
        for kind, seconds in spec.stages():
            total += seconds
            if kind.value in ("measure", "finalize"):
                device += seconds
            if kind.value != "measure":
                cpu += seconds * (spec.workers if kind.value == "build" else 1)
        longest = max(longest, total)
    return max(device / devices, cpu / slots, longest)


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
    registry.replace_resources(resources)
    finish: dict[int, float] = {}  # epoch -> simulated end of a running stage
    left: dict[int, float] = {}  # epoch -> seconds a suspended stage has left
    clock = [0.0]

    def suspend(leases: list[dict]) -> None:
        for lease in leases:
            left[lease["epoch"]] = finish.pop(lease["epoch"]) - clock[0]

    def resume(leases: list[dict]) -> None:
        for lease in leases:
            finish[lease["epoch"]] = clock[0] + left.pop(lease["epoch"])
            heapq.heappush(running, (finish[lease["epoch"]], lease["epoch"], lease["job_id"]))

    dispatcher = Dispatcher(
        registry, strategy=strategy, suspend=suspend if preempt else None, resume=resume
    )
    capacity = {r.name: r.capacity for r in resources}
    now = 0.0
    queued: list[tuple[int, MockSpec]] = []
    for spec in parsed:
        job_id = registry.submit(
            JobKind.MOCK.value,
            {"mock": str(spec)},
            device_kind=device_kind_for_mock(spec.device),
            now=now,
        )
        queued.append((job_id, spec))
    queued.reverse()
    jobs: dict[int, tuple[MockJob, int]] = {}
    running: list[tuple[float, int, int]] = []  # (finish time, epoch, job id)
    stages = 0

    def admit() -> None:
        limit = dispatcher.strategy.max_active_jobs(active_limit)
        while queued and len(jobs) < limit:
            job_id, spec = queued.pop()
            attempt = registry.claim_job(job_id, now=now)
            job = MockJob(spec, sleeper=_noop)
            jobs[job_id] = (job, attempt)
            request = job.next_stage()
            registry.request_stage(
                job_id, attempt, job.index, request.kind.value, request.needs, request.info, now=now
            )

    admit()
    while True:
        clock[0] = now
        dispatcher.resume_finished(now)  # before counting: resumed stages hold units again
        in_use = {name: 0 for name in capacity}
        leases = registry.active_leases()
        lent = lending(leases)
        for lease in leases:
            if lease.epoch in lent:
                continue
            for name, amount in lease.resources.items():
                in_use[name] += amount
        for grant in dispatcher.dispatch(now):
            job, _ = jobs[grant.job_id]
            registry.start_stage(grant.epoch, now=now)
            for name, amount in grant.resources.items():
                in_use[name] += amount
            slowdown = 1.0
            if dispatcher.strategy.oversubscribes:  # the others never exceed a capacity
                slowdown = max([in_use[n] / capacity[n] for n in grant.resources] + [1.0])
            finish[grant.epoch] = now + job.planned_seconds() * slowdown
            heapq.heappush(running, (finish[grant.epoch], grant.epoch, grant.job_id))
        while running and finish.get(running[0][1]) != running[0][0]:
            heapq.heappop(running)  # a suspended stage's old end, or a moved one
        if not running:
            break
        now = running[0][0]
        while running and running[0][0] <= now:
            end, epoch, job_id = heapq.heappop(running)
            if finish.get(epoch) != end:
                continue
            del finish[epoch]
            job, attempt = jobs[job_id]
            outcome = job.run_stage()
            stages += 1
            request = job.next_stage()
            follow = None
            if request is not None:
                follow = (job.index, request.kind.value, request.needs, request.info)
            registry.complete_stage(
                epoch, seconds=outcome.seconds, progress=job.progress(), next_stage=follow, now=now
            )
            if request is None:
                registry.finish_job(job_id, attempt, result=job.result(), now=now)
                del jobs[job_id]
        admit()
    rows = resource_intervals(registry.stage_intervals(), held=True)
    res = registry.resources()
    result = SimulationResult(
        strategy=strategy,
        makespan=makespan(rows),
        lower_bound=lower_bound(parsed, resources),
        utilisation=utilisation(rows, res),
        overlaps=len(exclusive_overlaps(rows, res)),
        stages=stages,
    )
    registry.close()
    return result
