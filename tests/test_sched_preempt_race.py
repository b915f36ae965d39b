"""A measurement that ends between a pass's reads (and ``resume_finished``) and its
grant (issue 12).

Its suspended stages are not resumed yet, and were counted as using no cpu, so the
pass granted their slots again: the next pass resumed them onto cores already given
away (an over-grant), or while a new measurement ran (a distorted measurement). A
suspended lease now lends its units only while its suspender's lease is active.

Driven step by step through the registry and the dispatcher, on an injected clock.
"""

import pytest

from tvmsched.dispatch import Dispatcher
from tvmsched.invariants import check_registry
from tvmsched.models import Held, Pending, Resource, ResourceKind
from tvmsched.registry import Registry
from tvmsched.strategies import Snapshot, get_strategy

CPU2 = Resource("cpu", ResourceKind.CPU, 2, False)
CPU_DEVICE = Resource("cpu-device", ResourceKind.CPU_DEVICE, 1, True)
STRATEGIES = ["interleaved", "predictive"]


class Scene:
    """Four cpu-target jobs; jobs 1 and 2 search on both slots, job 3 measures, which
    suspends both searches. ``window`` holds what a runner writes inside the next pass,
    right after its ``resume_finished``."""

    def __init__(self, path, strategy):
        self.registry = Registry(path, priority=True)
        self.registry.replace_resources([CPU2, CPU_DEVICE])
        self.window = []
        self.dispatcher = Dispatcher(
            self.registry, strategy=strategy, suspend=lambda rows: None, resume=lambda rows: None
        )
        resume = self.dispatcher.resume_finished

        def racing(now=None, leases=None):
            count = resume(now, leases)
            while self.window:
                self.window.pop(0)()
            return count

        self.dispatcher.resume_finished = racing
        self.attempts = {}
        for _ in range(4):
            job = self.registry.submit(
                "mock", {"mock": "rounds=1"}, device_kind="cpu-device", now=0.0
            )
            self.attempts[job] = self.registry.claim_job(job, now=0.0)
        self.request(1, "search", {"cpu": 1}, 1.0)
        self.request(2, "search", {"cpu": 1}, 1.0)
        self.searches = self.pass_at(1.0)
        self.request(3, "measure", {"device": 1}, 2.0)
        [self.measuring] = self.pass_at(2.0)
        assert [lease.suspended for lease in self.registry.active_leases()] == [True, True, False]

    def request(self, job, kind, needs, now):
        self.registry.request_stage(job, self.attempts[job], 0, kind, needs, now=now)

    def pass_at(self, now):
        grants = self.dispatcher.dispatch(now=now)
        for grant in grants:
            self.registry.start_stage(grant.epoch, now=now)
        return grants

    def measurement_ends(self, now, next_stage=None):
        self.registry.complete_stage(
            self.measuring.epoch, seconds=1.0, progress={}, next_stage=next_stage, now=now
        )

    def running_cpu(self):
        return sum(
            lease.resources.get("cpu", 0)
            for lease in self.registry.active_leases()
            if not lease.suspended
        )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_measurement_ending_inside_the_pass_does_not_free_the_suspended_slots(tmp_path, strategy):
    scene = Scene(tmp_path / "sched.db", strategy)
    scene.request(4, "search", {"cpu": 1}, 2.5)
    assert scene.pass_at(2.5) == []  # the cores are lent to the measurement
    # job 3's runner records its end (and asks for its update) inside the next pass
    scene.window.append(lambda: scene.measurement_ends(3.0, (1, "update", {"cpu": 1}, {})))
    granted = scene.pass_at(3.0)
    assert granted == [], "the suspended searches' slots were granted again"
    scene.pass_at(4.0)  # resumes the two searches
    assert scene.running_cpu() <= 2
    assert check_registry(scene.registry, strategy=strategy) == []


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_new_measurement_is_never_granted_while_the_suspended_search_resumes(tmp_path, strategy):
    scene = Scene(tmp_path / "sched.db", strategy)
    scene.request(4, "measure", {"device": 1}, 2.5)
    assert scene.pass_at(2.5) == []  # the device is busy
    scene.window.append(lambda: scene.measurement_ends(3.0))
    scene.pass_at(3.0)
    scene.pass_at(4.0)  # resumes the searches; job 4 may measure only by suspending them
    leases = {lease.job_id: lease for lease in scene.registry.active_leases()}
    if 4 in leases:
        assert leases[1].suspended and leases[2].suspended
        assert leases[1].suspended_for == leases[4].request_id
    assert check_registry(scene.registry, strategy=strategy) == []


def test_the_grant_check_counts_a_suspended_lease_whose_measurement_ended(tmp_path):
    scene = Scene(tmp_path / "sched.db", "interleaved")
    scene.request(4, "search", {"cpu": 1}, 2.5)
    [search4] = scene.registry.pending()
    scene.measurement_ends(3.0)
    # a decision taken while the measurement ran (its cores lent, then freed) comes late
    assert scene.registry.grant([(search4, {"cpu": 1})], now=3.0) == []
    scene.dispatcher.resume_finished(4.0)
    assert scene.running_cpu() == 2


def test_a_grant_that_fails_after_suspending_does_not_lend_their_units(tmp_path):
    """A holder that would not stop keeps the measurement waiting; the one that did stop
    lends nothing in the meantime, so no other grant of that transaction may use it."""
    registry = Registry(tmp_path / "sched.db", priority=True)
    registry.replace_resources([CPU2, CPU_DEVICE])
    jobs = [
        registry.submit("mock", {"mock": "rounds=1"}, device_kind="cpu-device", now=0.0)
        for _ in range(4)
    ]
    attempts = {job: registry.claim_job(job, now=0.0) for job in jobs}
    for job in jobs[:2]:
        registry.request_stage(job, attempts[job], 0, "search", {"cpu": 1}, now=1.0)
    first, second = Dispatcher(registry, strategy="interleaved").dispatch(now=1.0)
    registry.request_stage(jobs[2], attempts[jobs[2]], 0, "measure", {"device": 1}, now=2.0)
    registry.request_stage(jobs[3], attempts[jobs[3]], 0, "search", {"cpu": 1}, now=2.0)
    measure, search = registry.pending()
    granted = registry.grant(
        [(measure, {"cpu-device": 1, "cpu": 2}), (search, {"cpu": 1})],
        now=2.0,
        suspend={measure.request_id: [first.epoch, second.epoch]},
        on_suspend=lambda rows: [first.epoch],  # the second holder does not stop
    )
    assert granted == []
    assert registry.grant([(search, {"cpu": 1})], now=2.0) == []
    assert check_registry(registry) == []


def test_snapshot_lends_a_suspended_lease_only_to_a_running_suspender():
    search = Held(7, 2, "search", {"cpu": 1}, 0.0, suspended=True, suspended_for=5)
    measuring = Held(9, 1, "measure", {"cpu-device": 1, "cpu": 2}, 0.0, request_id=5)
    resources = {r.name: r for r in (CPU2, CPU_DEVICE)}
    other = Pending(6, 4, "search", {"cpu": 1}, 1.0, 0, "cpu-device")
    lent = Snapshot(resources, [other], [search, measuring], now=3.0, preempt=True)
    assert lent.free() == {"cpu": 0, "cpu-device": 0}
    ended = Snapshot(resources, [other], [search], now=3.0, preempt=True)  # it has ended
    assert ended.free() == {"cpu": 1, "cpu-device": 1}
    unknown = Held(7, 2, "search", {"cpu": 1}, 0.0, suspended=True)  # whose? it holds
    assert Snapshot(resources, [], [unknown], now=3.0).free() == {"cpu": 1, "cpu-device": 1}
    # a measurement does not try to suspend a stage that is about to be resumed
    measure = Pending(8, 3, "measure", {"device": 1}, 1.0, 0, "cpu-device")
    busy = Held(10, 5, "search", {"cpu": 1}, 0.0)
    snap = Snapshot(resources, [measure], [search, busy], now=3.0, preempt=True)
    decision = get_strategy("interleaved").decide(snap)
    assert decision.grants == [] and decision.suspend == {}
