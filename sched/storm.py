"""A randomised storm: MockJobs through the real registry, dispatcher and strategies,
with the runners' writes landing inside the scheduling passes, checked by ``invariants``.

Everything runs in one process on an injected clock (``now=``), so a run is fast and
deterministic for its seed. What the daemon does with processes is modelled:
``suspend`` stops a runner (it then makes no progress; now and then one "does not stop
in time" and is left out, as ``Daemon._suspend_holders`` does), ``resume`` continues it.
What the real runners do concurrently is modelled by *windows*: a runner whose stage is
due may record its end before the pass, or right after ``resume_finished`` (when the
pass reads the pending requests), or after the snapshot (when it reads the leases), or
between the strategy's decision and the grant transaction. Runners also die now and then
(the daemon reclaims their leases and requeues the job, which resumes where it was).

    run_storm(seed, db_path) -> StormResult   # one run; benchmarks/sched_invariants.py
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .dispatch import Dispatcher
from .invariants import Violation, check_registry
from .mockjob import MockJob
from .models import JobKind, JobState, Resource, ResourceKind
from .registry import Registry
from .resources import device_kind_for_mock
from .simulate import claim_and_request, run_and_complete

# registry calls inside a dispatch pass, in its order: a runner's write may come first
WINDOWS = ("suspended_leases", "resume_leases", "pending", "active_leases", "grant")


@dataclass
class StormConfig:
    strategies: tuple[str, ...] = ("interleaved", "predictive")
    jobs: tuple[int, int] = (3, 8)  # how many MockJobs, at least and at most
    race: float = 0.6  # chance that a due runner's end lands inside the pass
    stuck: float = 0.05  # chance that a runner does not stop when suspended
    die: float = 0.01  # chance per pass that one runner dies
    max_passes: int = 4000
    hosts: int = 0  # agents' hosts beside the daemon's, each with its own pool and device
    fence: float = 0.01  # with hosts: chance per pass that one agent's host is fenced


@dataclass
class StormResult:
    seed: int
    strategy: str
    passes: int
    stages: int
    suspensions: int
    finished: bool  # every job done and nothing left suspended
    violations: list[Violation] = field(default_factory=list)
    on_agents: int = 0  # stages granted on agents' hosts
    fenced: int = 0  # agents' hosts fenced during the run

    @property
    def ok(self) -> bool:
        return self.finished and not self.violations


class RacingRegistry(Registry):
    """A registry whose reads and grant inside a pass first run what ``windows`` holds."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.windows: dict[str, Callable[[], None]] = {}

    def _window(self, name: str) -> None:
        fire = self.windows.pop(name, None)
        if fire is not None:
            fire()

    def suspended_leases(self):
        self._window("suspended_leases")  # the daemon's pass (agents: suspensions_on_host)
        return super().suspended_leases()

    def resume_leases(self, *args, **kwargs):
        self._window("resume_leases")  # its runners are continued already
        return super().resume_leases(*args, **kwargs)

    def pending(self):
        self._window("pending")
        return super().pending()

    def active_leases(self):
        self._window("active_leases")
        return super().active_leases()

    def grant(self, *args, **kwargs):
        self._window("grant")
        return super().grant(*args, **kwargs)


def random_spec(rng: random.Random) -> str:
    """A MockJob with random stage lengths, measured on the cpu-device mostly."""
    device = rng.choice(("cpu", "cpu", "cpu", "gpu"))
    parts = {
        "rounds": rng.randint(1, 3),
        "search": round(rng.uniform(0.0, 3.0), 2),
        "build": round(rng.uniform(0.0, 1.5), 2),
        "measure": round(rng.uniform(0.05, 1.0), 2),
        "update": round(rng.uniform(0.0, 0.3), 2),
        "finalize": round(rng.uniform(0.0, 0.5), 2),
        "workers": rng.choice((1, 1, 2)),
    }
    if rng.random() < 0.3:
        parts["prepare"] = round(rng.uniform(0.1, 1.0), 2)
    return ",".join(f"{k}={v}" for k, v in parts.items()) + f",device={device}"


def storm_resources(rng: random.Random) -> list[Resource]:
    return [
        Resource("cpu", ResourceKind.CPU, rng.choice((2, 2, 3, 4)), False),
        Resource("cpu-device", ResourceKind.CPU_DEVICE, 1, True),
        Resource("gpu0", ResourceKind.GPU, 1, True),
    ]


def host_resources(rng: random.Random, name: str) -> list[Resource]:
    """An agent's host: its own cpu pool and cpu-device (``cpu@NAME``, as ``sched agent``)."""
    return [
        Resource(f"cpu@{name}", ResourceKind.CPU, rng.choice((1, 2, 3)), False, host=name),
        Resource(f"cpu-device@{name}", ResourceKind.CPU_DEVICE, 1, True, host=name),
    ]


class Storm:
    """One run; ``run()`` drives passes until every job is done (or ``max_passes``).

    With ``hosts``, jobs are placed at random on the daemon's host or an agent's, and
    now and then an agent's host is fenced (its heartbeat stopped): its jobs are
    requeued and placed again, and the agent registers again, as ``sched agent`` does."""

    def __init__(self, seed: int, db_path: str | Path, config: StormConfig | None = None):
        self.rng = random.Random(seed)
        self.seed, self.config = seed, config or StormConfig()
        self.strategy = self.rng.choice(self.config.strategies)
        self.registry = RacingRegistry(db_path, priority=True)
        self.registry.replace_resources(storm_resources(self.rng))
        self.hosts = [f"box-{i}" for i in range(self.config.hosts)]
        self.host_resources = {name: host_resources(self.rng, name) for name in self.hosts}
        for name in self.hosts:
            self._register(name)
        self.fenced = 0
        self.dispatcher = Dispatcher(
            self.registry, strategy=self.strategy, suspend=self._stop, resume=self._cont
        )
        self.now = 0.0
        self.jobs: dict[int, tuple[MockJob, int]] = {}  # job id -> (job, attempt)
        self.left: dict[int, float] = {}  # epoch -> seconds of work left
        self.owner: dict[int, int] = {}  # epoch -> job id
        self.stopped: set[int] = set()
        self.stages = self.suspensions = 0
        low, high = self.config.jobs
        for _ in range(self.rng.randint(low, high)):
            spec = random_spec(self.rng)
            device = spec.rsplit("device=", 1)[1]
            job_id = self.registry.submit(
                JobKind.MOCK.value,
                {"mock": spec},
                device_kind=device_kind_for_mock(device),
                now=0.0,
            )
            self._claim(job_id, spec, completed=0)

    # -- the daemon's process handling, modelled -----------------------------------------
    def _stop(self, leases: list[dict]) -> list[int]:
        stopped = [row["epoch"] for row in leases if self.rng.random() >= self.config.stuck]
        self.stopped.update(stopped)
        self.suspensions += len(stopped)
        return stopped

    def _cont(self, leases: list[dict]) -> None:
        self.stopped.difference_update(row["epoch"] for row in leases)

    # -- runners -------------------------------------------------------------------------
    def _claim(self, job_id: int, spec: str, *, completed: int) -> None:
        job = MockJob(spec, completed=completed, sleeper=lambda _: None)
        if not self.hosts or "device=gpu" in spec:  # only the daemon's host has a gpu
            claim_and_request(self.registry, self.jobs, job_id, job, now=self.now)
            return
        host = self.rng.choice([None, *self.hosts])
        attempt = self.registry.claim_jobs([job_id], now=self.now, hosts={job_id: host})[job_id]
        self.jobs[job_id] = (job, attempt)
        request = job.next_stage()
        self.registry.request_stage(
            job_id, attempt, job.index, request.kind.value, request.needs, request.info,
            now=self.now,
        )  # fmt: skip

    def _register(self, name: str) -> None:
        self.registry.register_host(
            name, pid=1, started=float(len(name)), max_jobs=64,
            resources=self.host_resources[name], timeout=1e9,
        )  # fmt: skip

    def _fence_one(self) -> None:
        """An agent's host is fenced: its jobs' leases are reclaimed and the jobs placed
        again (their runners are gone); the agent registers again."""
        name = self.rng.choice(self.hosts)
        victims = self.registry.fence_host(name, "storm")
        self.fenced += 1
        for job_id in victims:
            if job_id in self.jobs:
                self._runner_lost(job_id, "host fenced")
        self._register(name)

    def _complete(self, epoch: int) -> None:
        """The runner of ``epoch`` records its end (and asks for its next stage)."""
        if epoch in self.stopped or epoch not in self.left:
            return  # a stopped runner writes nothing; a dead one is gone
        del self.left[epoch]
        job_id = self.owner.pop(epoch)
        run_and_complete(self.registry, self.jobs, job_id, epoch, now=self.now)
        self.stages += 1

    def _kill_one(self) -> None:
        """A runner dies: the daemon reclaims its leases; the job resumes from its stage."""
        self._runner_lost(self.rng.choice(sorted(self.jobs)), "storm")

    def _runner_lost(self, job_id: int, reason: str) -> None:
        """The job's runner is gone: its leases are reclaimed, and it is claimed again
        (placed anew) and resumes from the stage it had reached."""
        job, attempt = self.jobs.pop(job_id)
        for epoch in [e for e, owner in self.owner.items() if owner == job_id]:
            del self.owner[epoch]
            self.left.pop(epoch, None)
            self.stopped.discard(epoch)
        self.registry.runner_gone(
            job_id, attempt, reason=reason, retry_limit=1000, charge=False, now=self.now
        )
        self._claim(job_id, self.registry.job(job_id)["spec"]["mock"], completed=job.index)

    # -- passes --------------------------------------------------------------------------
    def _advance(self) -> list[int]:
        """Move the clock on; the epochs whose runners are due to record their end."""
        dt = self.rng.uniform(0.0, 0.4)
        self.now += dt
        for epoch in self.left:
            if epoch not in self.stopped:
                self.left[epoch] -= dt
        due = sorted(e for e, left in self.left.items() if left <= 1e-9)
        self.rng.shuffle(due)
        return due

    def _arm(self, due: list[int]) -> None:
        """Spread the due ends over before the pass and the windows inside it."""
        inside: dict[str, list[int]] = {}
        for epoch in due:
            if self.rng.random() < self.config.race:
                inside.setdefault(self.rng.choice(WINDOWS), []).append(epoch)
            else:
                self._complete(epoch)
        for name, epochs in inside.items():
            self.registry.windows[name] = lambda epochs=epochs: [self._complete(e) for e in epochs]

    def step(self) -> None:
        due = self._advance()
        if self.jobs and self.rng.random() < self.config.die:
            self._kill_one()
        if self.hosts and self.jobs and self.rng.random() < self.config.fence:
            self._fence_one()
        for host in self.hosts:  # each agent: suspend what it is asked, continue what ended
            self.registry.suspend_on_host(host, self._stop, now=self.now)
            ended, _ = self.registry.suspensions_on_host(host)  # as Agent._preempt
            if ended:
                self._cont(ended)
                self.registry.resume_leases([row["epoch"] for row in ended], now=self.now)
        self._arm(due)
        for grant in self.dispatcher.dispatch(self.now):
            self.registry.start_stage(grant.epoch, now=self.now)
            self.owner[grant.epoch] = grant.job_id
            self.left[grant.epoch] = self.jobs[grant.job_id][0].planned_seconds()
        for name in list(self.registry.windows):  # a pass with nothing pending stops early
            self.registry._window(name)

    def run(self) -> StormResult:
        passes = 0
        while self.jobs and passes < self.config.max_passes:
            self.step()
            passes += 1
        self.dispatcher.resume_finished(self.now)
        leases = self.registry.active_leases()
        states = {job["state"] for job in self.registry.list_jobs()}
        finished = not self.jobs and not leases and not self.stopped and states == {JobState.DONE}
        violations = check_registry(self.registry, strategy=self.strategy)
        on_agents = sum(
            1 for e in self.registry.events()
            if e["kind"] == "grant" and any("@" in name for name in e["resources"] or {})
        )  # fmt: skip
        self.registry.close()
        return StormResult(
            self.seed, self.strategy, passes, self.stages, self.suspensions, finished,
            violations, on_agents=on_agents, fenced=self.fenced,
        )  # fmt: skip


def run_storm(seed: int, db_path: str | Path, config: StormConfig | None = None) -> StormResult:
    """One randomised run, deterministic for ``seed``, in a fresh registry at ``db_path``."""
    return Storm(seed, db_path, config).run()
