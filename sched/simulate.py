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
) -> SimulationResult:
    parsed = [MockSpec.parse(s) if isinstance(s, str) else s for s in specs]
    registry = Registry(db_path)
    registry.replace_resources(resources)
    dispatcher = Dispatcher(registry, strategy=strategy)
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
        in_use = {name: 0 for name in capacity}
        for lease in registry.active_leases():
            for name, amount in lease.resources.items():
                in_use[name] += amount
        for grant in dispatcher.dispatch(now):
            job, _ = jobs[grant.job_id]
            registry.start_stage(grant.epoch, now=now)
            for name, amount in grant.resources.items():
                in_use[name] += amount
            slowdown = max([in_use[n] / capacity[n] for n in grant.resources] + [1.0])
            heapq.heappush(
                running, (now + job.planned_seconds() * slowdown, grant.epoch, grant.job_id)
            )
        if not running:
            break
        now = running[0][0]
        while running and running[0][0] <= now:
            _, epoch, job_id = heapq.heappop(running)
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
