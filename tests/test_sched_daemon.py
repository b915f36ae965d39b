"""The daemon with real forked runners and a real SQLite file: crashes and recovery."""

import os
import signal
import time

import psutil  # noqa: E402
import pytest  # noqa: E402

from tvmsched import api
from tvmsched.analysis import exclusive_overlaps, peak_usage, resource_intervals
from tvmsched.registry import Registry

from .sched_helpers import end_daemon_and_runners, wait_for

RESOURCES = {"cpu": 2, "cpu-device": 1}


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "sched.db"
    yield path
    end_daemon_and_runners(path)


def start(db, *extra):
    return api.start_daemon(db, resources=RESOURCES, extra=list(extra))


def check_event_log(db):
    registry = Registry(db)
    rows = resource_intervals(registry.stage_intervals(), held=True)
    assert exclusive_overlaps(rows, registry.resources()) == []
    assert peak_usage(rows, "cpu") <= RESOURCES["cpu"]
    return rows


def measuring_lease(db):
    for lease in Registry(db).active_leases():
        if lease.kind == "measure" and lease.started_at is not None:
            return lease
    return None


def test_jobs_interleave_finish_and_never_share_the_device(db):
    ids = [
        api.submit(db, mock=f"rounds=2,search=0.05,build=0.05,measure=0.05,update=0.01,seed={i}")
        for i in range(6)
    ]  # submitted while no daemon runs: they wait
    assert {j["state"] for j in api.jobs(db)} == {"queued"}
    start(db)
    with pytest.raises(api.DaemonError, match="already runs"):
        start(db)
    assert set(api.wait(db, ids, timeout=30).values()) == {"done"}
    rows = check_event_log(db)
    assert {r["resource"] for r in rows} == {"cpu", "cpu-device"}
    overlapping = [
        (a, b) for a in rows for b in rows
        if a["job_id"] != b["job_id"] and a["start"] < b["end"] and b["start"] < a["end"]
    ]  # fmt: skip
    assert overlapping, "stages of different jobs ran at the same time"
    util = api.utilisation(db)
    assert 0 < util["cpu"]["busy"] <= 1 and util["cpu-device"]["idle"] < 1
    assert api.makespan(db) > 0
    assert {e["stage"] for e in api.events(db)} >= {"search", "measure", "finalize"}


@pytest.mark.slow
def test_sigkill_runner_during_measure_reclaims_and_resumes(db):
    start(db)
    ids = [api.submit(db, mock="rounds=2,search=0.1,measure=0.6,update=0.05") for _ in range(3)]
    lease = wait_for(lambda: measuring_lease(db))
    victim = Registry(db).job(lease.job_id)
    os.kill(victim["runner_pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: all(x.epoch != lease.epoch for x in Registry(db).active_leases()), 2.0, 0.005)
    assert time.monotonic() - killed <= 2.0
    assert set(api.wait(db, ids, timeout=60).values()) == {"done"}
    assert Registry(db).job(lease.job_id)["retries"] == 1
    check_event_log(db)
    reclaims = [e for e in Registry(db).events() if e["kind"] == "reclaim"]
    assert [e["epoch"] for e in reclaims] == [lease.epoch]


@pytest.mark.slow
def test_sigkill_daemon_then_restart_every_job_finishes(db):
    daemon = start(db)
    ids = [
        api.submit(db, mock=f"rounds=3,search=0.1,build=0.1,measure=0.1,update=0.02,seed={i}")
        for i in range(4)
    ]
    wait_for(lambda: Registry(db).active_leases(), 10)
    time.sleep(0.3)
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: api.daemon_pid(db) is None, 5)
    time.sleep(0.3)  # runners go on without a daemon; nothing is granted meanwhile
    start(db)
    assert set(api.wait(db, ids, timeout=60).values()) == {"done"}
    check_event_log(db)


@pytest.mark.slow
def test_silent_runner_is_killed_before_its_device_is_granted_again(db):
    start(db, "--heartbeat", "0.1", "--heartbeat-timeout", "0.8")
    ids = [api.submit(db, mock="rounds=1,measure=0.8,finalize=0.05") for _ in range(2)]
    lease = wait_for(lambda: measuring_lease(db))
    pid = Registry(db).job(lease.job_id)["runner_pid"]
    os.kill(pid, signal.SIGSTOP)  # alive, but silent: no heartbeat, holds the device
    assert set(api.wait(db, ids, timeout=30).values()) == {"done"}
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    events = Registry(db).events()
    reclaim = next(e for e in events if e["kind"] == "reclaim")
    assert "heartbeat stopped" in reclaim["detail"]["reason"]
    later = [e for e in events if e["kind"] == "grant" and e["id"] > reclaim["id"]]
    assert any("cpu-device" in e["resources"] for e in later)
    check_event_log(db)


@pytest.mark.slow
def test_runner_crashing_past_the_retry_limit_fails_the_job(db):
    start(db, "--retry-limit", "1")
    job_id = api.submit(db, mock="rounds=1,search=2")
    for _ in range(2):
        pid = wait_for(lambda: Registry(db).job(job_id)["runner_pid"])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda p=pid: Registry(db).job(job_id)["runner_pid"] != p)
    assert api.wait(db, [job_id], timeout=10) == {job_id: "failed"}
    error = Registry(db).job(job_id)["error"]
    assert "runner died 2 times (limit 1)" in error and "SIGKILL" in error


@pytest.mark.slow
def test_graceful_stop_requeues_and_next_start_resumes(db):
    start(db)
    slow = api.submit(db, mock="rounds=3,search=0.3,measure=0.1")
    doomed = api.submit(db, mock="rounds=50,search=0.3")
    wait_for(lambda: Registry(db).job(slow)["stages_done"] >= 2)
    api.cancel(db, doomed)
    api.stop_daemon(db, timeout=30)
    assert api.job(db, doomed)["state"] == "cancelled"
    job = api.job(db, slow)
    assert job["state"] == "queued" and job["retries"] == 0
    done_before = job["stages_done"]
    start(db)
    assert api.wait(db, [slow], timeout=30) == {slow: "done"}
    requests = [e for e in Registry(db).events(job_id=slow) if e["kind"] == "end"]
    assert len(requests) == 3 * 4 + 1  # no stage ran twice: the runner resumed after them
    assert done_before >= 2
