"""A hypothesis state machine over the registry and dispatcher with a simulated clock.

Rules: submit, start a runner, request, grant, start, release, crash, reap, stale
writes, cancel, strategy change and clock advance.  Invariants: at most one holder
per exclusive resource, cpu never oversubscribed, every job in exactly one state,
no lease held by a job that is not running, epochs only increase.
"""

import pathlib
import shutil
import tempfile

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tvmsched.dispatch import Dispatcher
from tvmsched.models import Fenced, JobState, Resource, ResourceKind
from tvmsched.registry import Registry

RESOURCES = [
    Resource("cpu", ResourceKind.CPU, 2, False),
    Resource("gpu0", ResourceKind.GPU, 1, True),
    Resource("cpu-device", ResourceKind.CPU_DEVICE, 1, True),
]
STAGES = {"search": {"cpu": 1}, "build": {"cpu": 2}, "measure": {"device": 1}}
RETRY_LIMIT = 2


class SchedulerMachine(RuleBasedStateMachine):
    make_db = None  # a test's registry factory (conftest's new_registry_db); else a file

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="sched-sm-")
        make_db = type(self).make_db
        self.registry = Registry(make_db() if make_db else pathlib.Path(self.dir) / "sm.db")
        self.registry.replace_resources(RESOURCES)
        self.dispatcher = Dispatcher(self.registry)
        self.now = 0.0
        self.runners = {}  # job id -> {"attempt", "epoch", "started", "alive", "index"}
        self.stale = []  # epochs of reaped runners: their writes must be fenced
        self.max_epoch = 0
        self.job_ids = []

    def teardown(self):
        self.registry.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def live(self, predicate=lambda r: True):
        return sorted(j for j, r in self.runners.items() if r["alive"] and predicate(r))

    @rule(device=st.sampled_from([None, "gpu", "cpu-device"]), priority=st.integers(0, 2))
    def submit(self, device, priority):
        job_id = self.registry.submit(
            "mock", {"mock": "rounds=1"}, device_kind=device, priority=priority, now=self.now
        )
        self.job_ids.append(job_id)

    @rule()
    def start_runner(self):
        queued = self.registry.queued_jobs(1)
        if queued:
            job_id = queued[0]["id"]
            attempt = self.registry.claim_job(job_id, now=self.now)
            self.runners[job_id] = {
                "attempt": attempt, "epoch": None, "started": False, "alive": True,
                "index": 0, "request": None,
            }  # fmt: skip

    @rule(data=st.data(), kind=st.sampled_from(sorted(STAGES)))
    def request(self, data, kind):
        idle = self.live(lambda r: r["request"] is None)
        if not idle:
            return
        job_id = data.draw(st.sampled_from(idle))
        runner = self.runners[job_id]
        try:
            runner["request"] = self.registry.request_stage(
                job_id, runner["attempt"], runner["index"], kind, STAGES[kind], now=self.now
            )
        except Fenced:  # cancelled meanwhile
            assert self.registry.job(job_id)["cancel_requested"]

    @rule()
    def dispatch(self):
        for grant in self.dispatcher.dispatch(self.now):
            assert grant.epoch > self.max_epoch, "epochs only increase"
            self.max_epoch = grant.epoch
            runner = self.runners[grant.job_id]
            assert runner["epoch"] is None
            runner["epoch"] = grant.epoch

    @rule(data=st.data())
    def start_stage(self, data):
        ready = self.live(lambda r: r["epoch"] is not None and not r["started"])
        if ready:
            job_id = data.draw(st.sampled_from(ready))
            self.registry.start_stage(self.runners[job_id]["epoch"], now=self.now)
            self.runners[job_id]["started"] = True

    @rule(data=st.data(), finish=st.booleans())
    def release(self, data, finish):
        busy = self.live(lambda r: r["started"])
        if not busy:
            return
        job_id = data.draw(st.sampled_from(busy))
        runner = self.runners[job_id]
        self.registry.complete_stage(runner["epoch"], seconds=1.0, progress={}, now=self.now)
        runner.update(epoch=None, started=False, request=None, index=runner["index"] + 1)
        if finish:
            self.registry.finish_job(job_id, runner["attempt"], result={}, now=self.now)
            del self.runners[job_id]

    @rule(data=st.data())
    def crash(self, data):
        alive = self.live()
        if alive:
            self.runners[data.draw(st.sampled_from(alive))]["alive"] = False

    @rule()
    def reap(self):
        for job_id in [j for j, r in self.runners.items() if not r["alive"]]:
            runner = self.runners.pop(job_id)
            before = self.registry.job(job_id)
            state = self.registry.runner_gone(
                job_id, runner["attempt"], reason="crash", retry_limit=RETRY_LIMIT, now=self.now
            )
            if before["cancel_requested"]:
                assert state is JobState.CANCELLED
            elif before["retries"] + 1 > RETRY_LIMIT:
                assert state is JobState.FAILED
            else:
                assert state is JobState.QUEUED
            if runner["epoch"] is not None:
                self.stale.append(runner["epoch"])

    @precondition(lambda self: self.stale)
    @rule()
    def stale_runner_writes_are_fenced(self):
        epoch = self.stale[-1]
        with pytest.raises(Fenced):
            self.registry.complete_stage(epoch, seconds=1.0, progress={}, now=self.now)
        with pytest.raises(Fenced):
            self.registry.start_stage(epoch, now=self.now)
        assert not self.registry.heartbeat(epoch, now=self.now)

    @rule(data=st.data())
    def cancel(self, data):
        if self.job_ids:
            self.registry.cancel(data.draw(st.sampled_from(self.job_ids)), now=self.now)

    @rule(name=st.sampled_from(["interleaved", "predictive", "sequential"]))
    def change_strategy(self, name):
        self.registry.set_setting("strategy", name, now=self.now)

    @rule(dt=st.floats(0.0, 5.0))
    def advance_clock(self, dt):
        self.now += dt

    @invariant()
    def exclusive_resources_have_at_most_one_holder(self):
        used = {}
        for lease in self.registry.active_leases():
            for name, amount in lease.resources.items():
                used[name] = used.get(name, 0) + amount
        for res in RESOURCES:
            assert used.get(res.name, 0) <= res.capacity, (res.name, used)

    @invariant()
    def every_job_in_exactly_one_state(self):
        jobs = self.registry.list_jobs()
        assert [j["id"] for j in jobs] == self.job_ids
        for job in jobs:
            assert sum(job["state"] is s for s in JobState) == 1
        holders = {lease.job_id for lease in self.registry.active_leases()}
        states = {j["id"]: j["state"] for j in jobs}
        assert all(states[h] is JobState.RUNNING for h in holders)

    @invariant()
    def epochs_only_increase(self):
        epochs = [lease.epoch for lease in self.registry.active_leases()]
        assert epochs == sorted(epochs)
        assert all(e <= self.max_epoch for e in epochs)


SETTINGS = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def test_scheduler_state_machine(new_registry_db):
    """The machine on each backend, a fresh registry per example."""

    class Machine(SchedulerMachine):
        make_db = staticmethod(new_registry_db)

    run_state_machine_as_test(Machine, settings=SETTINGS)
