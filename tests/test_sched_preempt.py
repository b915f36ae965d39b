"""Preemption: a CPU-target measurement suspends other jobs' search and build stages.

Strategy decisions (pure), the registry's bookkeeping (locks, events, paused time), the
simulator, and the daemon with real forked runners that it stops and continues.
"""

import fcntl
import os
import subprocess
import sys
import time

import psutil
import pytest

from tvmsched import api, daemon
from tvmsched.analysis import exclusive_overlaps, peak_usage, resource_intervals
from tvmsched.dispatch import Dispatcher
from tvmsched.models import Held, Pending, Resource, ResourceKind
from tvmsched.registry import Registry
from tvmsched.simulate import EVALUATION_MIX, simulate
from tvmsched.strategies import Snapshot, get_strategy

from .sched_helpers import end_daemon_and_runners, wait_for

CPU2 = Resource("cpu", ResourceKind.CPU, 2, False)
CPU_DEVICE = Resource("cpu-device", ResourceKind.CPU_DEVICE, 1, True)
GPU0 = Resource("gpu0", ResourceKind.GPU, 1, True)


def measure(rid=1, job=1, kind="measure", device_kind="cpu-device"):
    return Pending(rid, job, kind, {"device": 1}, 0.0, 0, device_kind, {})


def search(rid, job, at=1.0):
    return Pending(rid, job, "search", {"cpu": 1}, at, 0, "cpu-device", {})


def snapshot(requests, leases, *, preempt=True, resources=(CPU2, CPU_DEVICE)):
    return Snapshot(
        {r.name: r for r in resources}, list(requests), list(leases), now=10.0, preempt=preempt
    )


@pytest.mark.parametrize("strategy", ["interleaved", "predictive"])
@pytest.mark.parametrize("second", ["build", "compile"])  # compile only reads records
def test_a_cpu_measurement_suspends_the_searches_in_its_way(strategy, second):
    leases = [Held(7, 2, "search", {"cpu": 1}, 0.0, 0.0), Held(8, 3, second, {"cpu": 1}, 0.0)]
    later = search(2, 4, at=5.0)
    decision = get_strategy(strategy).decide(snapshot([measure(), later], leases))
    assert [(p.request_id, want) for p, want in decision.grants] == [
        (1, {"cpu-device": 1, "cpu": 2})
    ]
    assert decision.suspend == {1: [7, 8]}
    assert 4 in decision.waits  # the cores are lent to the measurement, not to new work


def test_without_preemption_the_measurement_waits_and_reserves_the_cores():
    leases = [Held(7, 2, "search", {"cpu": 1}, 0.0, 0.0)]
    decision = get_strategy("interleaved").decide(
        snapshot([measure(), search(2, 4)], leases, preempt=False)
    )
    assert decision.grants == [] and decision.suspend == {}
    assert "reserved" in decision.waits[4]


@pytest.mark.parametrize(
    "holder",
    [
        Held(7, 2, "update", {"cpu": 1}, 0.0),  # writes tuning records: never paused
        Held(7, 2, "prepare", {"cpu": 1}, 0.0),
        Held(7, 1, "search", {"cpu": 1}, 0.0),  # the measuring job's own stage
        Held(7, 2, "finalize", {"cpu": 1, "gpu0": 1}, 0.0),  # timing on a GPU
    ],
)
def test_stages_that_must_not_be_paused_make_it_wait(holder):
    decision = get_strategy("interleaved").decide(
        snapshot([measure()], [holder], resources=(CPU2, CPU_DEVICE, GPU0))
    )
    assert decision.grants == [] and decision.suspend == {}


def test_no_preemption_for_the_device_itself_nor_for_a_gpu_measurement():
    busy_device = [Held(5, 2, "measure", {"cpu-device": 1, "cpu": 2}, 0.0)]
    decision = get_strategy("interleaved").decide(snapshot([measure()], busy_device))
    assert decision.grants == [] and decision.suspend == {}
    # a GPU measurement does not need the cores: it is granted without suspending anything
    leases = [Held(7, 2, "search", {"cpu": 2}, 0.0)]
    decision = get_strategy("interleaved").decide(
        snapshot([measure(device_kind="gpu")], leases, resources=(CPU2, GPU0))
    )
    assert len(decision.grants) == 1 and decision.suspend == {}


def test_synchronous_never_preempts():
    leases = [Held(7, 2, "search", {"cpu": 2}, 0.0)]
    decision = get_strategy("synchronous").decide(snapshot([measure()], leases))
    assert len(decision.grants) == 1 and decision.suspend == {}


def test_suspended_units_are_lent_not_free():
    leases = [
        Held(7, 2, "search", {"cpu": 1}, 0.0, suspended=True, suspended_for=3),
        Held(9, 1, "measure", {"cpu-device": 1, "cpu": 2}, 0.0, request_id=3),
    ]
    snap = snapshot([search(2, 4)], leases)
    assert snap.free() == {"cpu": 0, "cpu-device": 0}
    assert get_strategy("interleaved").decide(snap).grants == []


# ---- the registry ---------------------------------------------------------------------


def two_jobs(registry):
    registry.replace_resources([CPU2, CPU_DEVICE])
    a = registry.submit("mock", {"mock": "rounds=1"}, device_kind="cpu-device", now=0.0)
    b = registry.submit("mock", {"mock": "rounds=1"}, device_kind="cpu-device", now=0.0)
    attempts = {job: registry.claim_job(job, now=0.0) for job in (a, b)}
    registry.request_stage(a, attempts[a], 0, "search", {"cpu": 1}, now=0.0)
    return a, b, attempts


def test_grant_suspends_under_both_locks_and_paused_time_is_not_the_stages(tmp_path):
    registry = Registry(tmp_path / "sched.db", priority=True)
    a, b, attempts = two_jobs(registry)
    seen = []

    def on_suspend(rows):
        # the gate is held by this (priority) writer: no runner can be inside a write
        fd = os.open(str(tmp_path / "sched.db-gate"), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        seen.extend(rows)

    dispatcher = Dispatcher(registry, strategy="interleaved", suspend=on_suspend)
    [searching] = dispatcher.dispatch(now=1.0)
    registry.start_stage(searching.epoch, now=1.0)
    registry.request_stage(b, attempts[b], 0, "measure", {"device": 1}, now=2.0)
    [measuring] = dispatcher.dispatch(now=2.0)
    assert measuring.job_id == b and measuring.resources == {"cpu-device": 1, "cpu": 2}
    assert [row["epoch"] for row in seen] == [searching.epoch]
    assert [lease.suspended for lease in registry.active_leases()] == [True, False]
    assert "suspended while job" in registry.job(a)["wait_reason"]
    assert registry.stale_leases(before=100.0) == []  # a stopped runner cannot beat
    assert registry.suspended_leases() == []  # its measurement still runs
    registry.complete_stage(measuring.epoch, seconds=1.5, progress={}, now=3.5)
    assert [row["epoch"] for row in registry.suspended_leases()] == [searching.epoch]
    assert dispatcher.resume_finished(now=3.5) == 1
    assert [lease.suspended for lease in registry.active_leases()] == [False]
    # the runner timed 6 s of wall clock for its search, 1.5 s of which it was stopped
    registry.complete_stage(searching.epoch, seconds=6.0, progress={}, now=7.0)
    per_job, _ = registry.stage_estimates()
    assert per_job[(a, "search")] == pytest.approx(4.5)
    [interval] = [i for i in registry.stage_intervals() if i["epoch"] == searching.epoch]
    assert interval["paused"] == [[2.0, 3.5]]
    pieces = [
        (r["start"], r["end"])
        for r in resource_intervals([interval], held=True)
        if r["resource"] == "cpu"
    ]
    assert pieces == [(1.0, 2.0), (3.5, 7.0)]
    kinds = [e["kind"] for e in registry.events() if e["kind"] in ("suspend", "resume")]
    assert kinds == ["suspend", "resume"]


def test_no_suspend_function_means_no_preemption(tmp_path):
    registry = Registry(tmp_path / "sched.db", priority=True)
    a, b, attempts = two_jobs(registry)
    dispatcher = Dispatcher(registry, strategy="interleaved")  # as a plain reader would
    [searching] = dispatcher.dispatch(now=1.0)
    registry.request_stage(b, attempts[b], 0, "measure", {"device": 1}, now=2.0)
    assert dispatcher.dispatch(now=2.0) == []
    registry.set_setting("preempt", "off")
    dispatcher = Dispatcher(registry, strategy="interleaved", suspend=lambda rows: None)
    assert dispatcher.dispatch(now=2.5) == []  # the setting turns it off
    registry.set_setting("preempt", "on")
    assert [g.job_id for g in dispatcher.dispatch(now=3.0)] == [b]


# ---- the simulator --------------------------------------------------------------------


def test_simulated_preemption_shortens_the_batch_and_measures_alone(tmp_path):
    resources = [CPU2, CPU_DEVICE]
    results = {
        preempt: simulate(
            list(EVALUATION_MIX),
            strategy="interleaved",
            resources=resources,
            db_path=tmp_path / f"{preempt}.db",
            preempt=preempt,
        )  # fmt: skip
        for preempt in (False, True)
    }
    assert results[True].makespan < results[False].makespan
    registry = Registry(tmp_path / "True.db")
    events = registry.events()
    assert any(e["kind"] == "suspend" for e in events)
    assert sum(e["kind"] == "suspend" for e in events) == sum(e["kind"] == "resume" for e in events)
    rows = resource_intervals(registry.stage_intervals(), held=True)
    assert exclusive_overlaps(rows, registry.resources()) == []
    assert peak_usage(rows, "cpu") <= 2
    measuring = [r for r in rows if r["resource"] == "cpu-device"]
    cpu_work = [r for r in rows if r["resource"] == "cpu" and r["stage"] != "measure"]
    for m in measuring:  # nothing else holds a core while a CPU target is measured
        assert not [
            r for r in cpu_work
            if r["job_id"] != m["job_id"] and r["start"] < m["end"] - 1e-9
            and m["start"] < r["end"] - 1e-9
        ]  # fmt: skip


# ---- the daemon, with real runners ------------------------------------------------------


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "sched.db"
    yield path
    end_daemon_and_runners(path)


def suspended_runner(db):
    registry = Registry(db)
    for lease in registry.active_leases():
        if lease.suspended:
            return registry.job(lease.job_id)["runner_pid"]
    return None


def submit_long_search_and_a_measurement(db):
    long = api.submit(db, mock="rounds=1,search=4,build=0.01,measure=0.01,update=0.01,cpu=burn")
    wait_for(lambda: any(x.kind == "search" and x.started_at for x in Registry(db).active_leases()))
    short = api.submit(db, mock="rounds=1,search=0.01,build=0.01,measure=1.5,update=0.01")
    return long, short


def test_the_daemon_stops_the_search_while_measuring_and_continues_it(db):
    api.start_daemon(db, resources={"cpu": 2, "cpu-device": 1})
    long, short = submit_long_search_and_a_measurement(db)
    pid = wait_for(lambda: suspended_runner(db))
    assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    assert set(api.wait(db, [long, short], timeout=60).values()) == {"done"}
    registry = Registry(db)
    events = registry.events()
    suspend = next(e for e in events if e["kind"] == "suspend")
    resume = next(e for e in events if e["kind"] == "resume")
    measure_end = next(
        e for e in events if e["kind"] == "end" and e["job_id"] == short and e["stage"] == "measure"
    )
    assert suspend["job_id"] == long and suspend["detail"]["for_job"] == short
    assert measure_end["ts"] <= resume["ts"]
    rows = resource_intervals(registry.stage_intervals(), held=True)
    assert peak_usage(rows, "cpu") <= 2
    assert exclusive_overlaps(rows, registry.resources()) == []


def test_a_daemon_killed_while_a_stage_is_suspended_leaves_nothing_stopped(db):
    daemon = api.start_daemon(db, resources={"cpu": 2, "cpu-device": 1})
    long, short = submit_long_search_and_a_measurement(db)
    pid = wait_for(lambda: suspended_runner(db))
    os.kill(daemon, 9)
    wait_for(lambda: api.daemon_pid(db) is None, 5)
    # orphaned, the stopped group gets SIGHUP and SIGCONT: the runner goes on, alive
    wait_for(lambda: psutil.Process(pid).status() != psutil.STATUS_STOPPED, 5)
    api.start_daemon(db, resources={"cpu": 2, "cpu-device": 1})
    assert set(api.wait(db, [long, short], timeout=60).values()) == {"done"}
    assert Registry(db).job(long)["retries"] == 0  # the runner survived
    assert not [lease for lease in Registry(db).active_leases() if lease.suspended]


def test_no_preempt_flag_keeps_the_measurement_waiting(db):
    api.start_daemon(db, resources={"cpu": 2, "cpu-device": 1}, extra=["--no-preempt"])
    long, short = submit_long_search_and_a_measurement(db)
    assert set(api.wait(db, [long, short], timeout=60).values()) == {"done"}
    assert not [e for e in Registry(db).events() if e["kind"] == "suspend"]
    assert Registry(db).get_setting("preempt") == "off"


def test_a_holder_that_does_not_stop_is_not_suspended(tmp_path):
    registry = Registry(tmp_path / "sched.db", priority=True)
    a, b, attempts = two_jobs(registry)
    dispatcher = Dispatcher(registry, strategy="interleaved", suspend=lambda rows: [])
    [searching] = dispatcher.dispatch(now=1.0)
    registry.request_stage(b, attempts[b], 0, "measure", {"device": 1}, now=2.0)
    assert dispatcher.dispatch(now=2.0) == []  # its holder runs on: the cores are not free
    assert [lease.suspended for lease in registry.active_leases()] == [False]
    assert not [e for e in registry.events() if e["kind"] == "suspend"]


def test_a_held_gate_makes_the_grant_give_up_preempting_not_hang(tmp_path, monkeypatch):
    from tvmsched.registry import stages

    monkeypatch.setattr(stages, "GATE_WAIT_S", 0.2)
    registry = Registry(tmp_path / "sched.db", priority=True)
    a, b, attempts = two_jobs(registry)
    dispatcher = Dispatcher(registry, strategy="interleaved", suspend=lambda rows: None)
    dispatcher.dispatch(now=1.0)
    registry.request_stage(b, attempts[b], 0, "measure", {"device": 1}, now=2.0)
    fd = os.open(str(tmp_path / "sched.db-gate"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a runner stuck inside a write
        started = time.monotonic()
        assert dispatcher.dispatch(now=2.0) == []
        assert time.monotonic() - started < 5
    finally:
        os.close(fd)
    assert [g.job_id for g in dispatcher.dispatch(now=3.0)] == [b]


def test_stopped_means_every_thread_of_every_process_stopped():
    code = (
        "import subprocess, sys, threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        wait_for(lambda: psutil.Process(proc.pid).children(), 10)
        assert not daemon._stopped(proc.pid)
        os.killpg(proc.pid, 19)  # SIGSTOP, to the group as the daemon sends it
        wait_for(lambda: daemon._stopped(proc.pid), 5)
        assert len(os.listdir(f"/proc/{proc.pid}/task")) == 2
        os.killpg(proc.pid, 18)  # SIGCONT
        wait_for(lambda: not daemon._stopped(proc.pid), 5)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_the_daemon_continues_a_holder_that_will_not_stop_in_time(monkeypatch):
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        started = psutil.Process(proc.pid).create_time()
        monkeypatch.setattr(daemon, "_stopped", lambda pid: False)
        monkeypatch.setattr(daemon, "STOP_WAIT_S", 0.1)
        holder = {"epoch": 5, "holder_pid": proc.pid, "holder_started": started}
        assert daemon.Daemon._suspend_holders(None, [holder]) == []
        wait_for(lambda: psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED, 5)
        monkeypatch.undo()
        assert daemon.Daemon._suspend_holders(None, [holder]) == [5]
        assert psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
