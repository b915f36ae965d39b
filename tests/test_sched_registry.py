"""The registry: migrations, permissions, fencing, reclaiming, retries."""

import stat

import pytest  # noqa: E402

from tvmsched.dispatch import Dispatcher
from tvmsched.models import Fenced, JobState, Resource, ResourceKind
from tvmsched.paths import resolve_db
from tvmsched.registry import MIGRATIONS, Registry

RESOURCES = [
    Resource("cpu", ResourceKind.CPU, 2, False),
    Resource("gpu0", ResourceKind.GPU, 1, True),
]


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "sched.db"


@pytest.fixture
def registry(registry_db):
    """A registry with two resources, on each backend."""
    reg = Registry(registry_db)
    reg.replace_resources(RESOURCES)
    yield reg
    reg.close()


def running_job(registry, now=0.0):
    job_id = registry.submit("mock", {"mock": "rounds=1"}, now=now)
    attempt = registry.claim_job(job_id, now=now)
    return job_id, attempt


def test_migrations_applied_once_and_files_private(db_path):
    Registry(db_path).resources()
    Registry(db_path).resources()
    assert Registry(db_path).migrations() == [name for name, _ in MIGRATIONS]
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    mode = Registry(db_path).conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_db_location(monkeypatch, tmp_path):
    monkeypatch.delenv("SCHED_DB", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert resolve_db(None) == tmp_path / "xdg" / "sched" / "sched.db"
    monkeypatch.setenv("SCHED_DB", str(tmp_path / "env.db"))
    assert resolve_db(None) == tmp_path / "env.db"
    assert resolve_db(tmp_path / "flag.db") == tmp_path / "flag.db"


def test_connection_is_reopened_after_fork(registry, monkeypatch):
    first = registry.conn
    monkeypatch.setattr("os.getpid", lambda: -1)
    assert registry.conn is not first


def test_writers_queue_on_the_write_lock(registry, registry_db):
    """Writes queue on a flock, handed over at once (SQLite's busy handler sleeps);
    another process's write waits for ours and then goes through."""
    import subprocess
    import sys
    import time

    registry.set_setting("probe", "parent")
    code = (
        "import sys, time\n"
        "from tvmsched.registry import Registry\n"
        "reg = Registry(sys.argv[1]); reg.resources()\n"
        "print('ready', flush=True)\n"
        "start = time.monotonic(); reg.set_setting('probe', 'child')\n"
        "print(time.monotonic() - start, flush=True)\n"
    )
    with registry._write() as conn:
        child = subprocess.Popen([sys.executable, "-c", code, str(registry_db)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the child is blocked behind us meanwhile
        conn.execute("UPDATE settings SET value = 'parent-held' WHERE key = 'probe'")
    waited = float(child.stdout.readline())
    assert child.wait(30) == 0
    assert waited >= 0.3
    assert registry.get_setting("probe") == "child"  # it wrote after our commit
    if registry.backend == "sqlite":
        for suffix in ("-gate", "-writelock"):
            lock = registry_db.with_name(registry_db.name + suffix)
            assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_lock_files_are_reopened_after_fork(db_path, monkeypatch):
    """A flock belongs to the open file: a forked child must not use the parent's."""
    registry = Registry(db_path)
    registry.resources()
    first = registry._lock_fds()
    monkeypatch.setattr("os.getpid", lambda: -1)
    assert set(registry._lock_fds()).isdisjoint(first)


def test_grant_complete_and_fencing(registry):
    job_id, attempt = running_job(registry)
    rid = registry.request_stage(job_id, attempt, 0, "measure", {"device": 1}, now=1.0)
    assert registry.poll_grant(rid) is None
    [grant] = Dispatcher(registry).dispatch(2.0)
    assert grant.resources == {"gpu0": 1}
    assert registry.poll_grant(rid)["epoch"] == grant.epoch
    registry.start_stage(grant.epoch, now=2.5)
    registry.complete_stage(grant.epoch, seconds=1.0, progress={"best_latency_ms": 2.0}, now=3.0)
    with pytest.raises(Fenced):  # a second release with the same epoch changes nothing
        registry.complete_stage(grant.epoch, seconds=1.0, progress={}, now=4.0)
    with pytest.raises(Fenced):  # a stale attempt may not request
        registry.request_stage(job_id, attempt - 1, 1, "update", {"cpu": 1})
    job = registry.job(job_id)
    assert job["stages_done"] == 1 and job["best_latency_ms"] == 2.0
    kinds = [e["kind"] for e in registry.events(job_id=job_id)]
    assert kinds == ["submit", "request", "grant", "start", "end", "release"]


def test_capacity_enforced_inside_the_grant_transaction(registry):
    a, attempt_a = running_job(registry)
    b, attempt_b = running_job(registry)
    registry.request_stage(a, attempt_a, 0, "measure", {"device": 1})
    registry.request_stage(b, attempt_b, 0, "measure", {"device": 1})
    pending = registry.pending()
    # Two racing dispatchers both decided to give gpu0 away: only one grant lands.
    first = registry.grant([(pending[0], {"gpu0": 1})])
    second = registry.grant([(pending[1], {"gpu0": 1})])
    assert len(first) == 1 and second == []
    assert len([x for x in registry.active_leases() if "gpu0" in x.resources]) == 1


def test_dead_runner_is_requeued_then_failed_past_the_retry_limit(registry):
    job_id, attempt = running_job(registry)
    registry.request_stage(job_id, attempt, 0, "search", {"cpu": 1})
    [grant] = Dispatcher(registry).dispatch(1.0)
    state = registry.runner_gone(job_id, attempt, reason="killed by SIGKILL", retry_limit=1)
    assert state is JobState.QUEUED
    assert registry.active_leases() == []
    with pytest.raises(Fenced):
        registry.start_stage(grant.epoch)
    attempt = registry.claim_job(job_id)
    state = registry.runner_gone(job_id, attempt, reason="killed by SIGKILL", retry_limit=1)
    job = registry.job(job_id)
    assert state is JobState.FAILED and job["state"] is JobState.FAILED
    assert "runner died 2 times (limit 1)" in job["error"] and "SIGKILL" in job["error"]


def test_cancel_queued_and_running(registry):
    queued = registry.submit("mock", {"mock": "rounds=1"})
    assert registry.cancel(queued) is JobState.CANCELLED
    job_id, attempt = running_job(registry)
    assert registry.cancel(job_id) is JobState.RUNNING
    with pytest.raises(Fenced):
        registry.request_stage(job_id, attempt, 0, "search", {"cpu": 1})
    state = registry.runner_gone(job_id, attempt, reason="cancelled", retry_limit=3)
    assert state is JobState.CANCELLED
    with pytest.raises(KeyError, match="no such job"):
        registry.cancel(999)


def test_finish_is_fenced_by_attempt(registry):
    job_id, attempt = running_job(registry)
    registry.finish_job(job_id, attempt, result={"tuned_ms": 1.0})
    assert registry.job(job_id)["result"] == {"tuned_ms": 1.0}
    with pytest.raises(Fenced):
        registry.finish_job(job_id, attempt, result={})


def test_parsed_units_are_fresh_dicts_a_caller_may_change():
    from tvmsched.registry.base import _units

    first = _units('{"cpu": 2, "dev": 1}')
    first["cpu"] = 99
    assert _units('{"cpu": 2, "dev": 1}') == {"cpu": 2, "dev": 1}


def test_a_lease_changed_after_its_early_read_is_released_as_it_is_now(registry, monkeypatch):
    """On PostgreSQL a stage's release reads its lease before the write lock and the
    server checks it unchanged under the lock. A lease that changed in between (here
    its paused seconds, as a suspension and resume leave them) is released as it is
    now: the write is run again reading under the lock, and the stage's seconds leave
    out the pause. Without the check the stale read would be written (3.0 s)."""
    job_id, attempt = running_job(registry)
    rid = registry.request_stage(job_id, attempt, 0, "measure", {"device": 1}, now=1.0)
    [grant] = Dispatcher(registry).dispatch(2.0)
    assert registry.poll_grant(rid)["epoch"] == grant.epoch
    read_early = registry._lease_early

    def stale(epoch):  # read, then the lease changes before the write takes the lock
        row = read_early(epoch)
        with registry._write() as conn:
            conn.execute("UPDATE leases SET paused_s = 2.0 WHERE epoch = ?", (epoch,))
        return row

    monkeypatch.setattr(registry, "_lease_early", stale)
    registry.complete_stage(grant.epoch, seconds=3.0, progress={}, now=5.0)
    [row] = registry.conn.execute(
        "SELECT seconds FROM stage_stats WHERE job_id = ? AND kind = 'measure'", (job_id,)
    ).fetchall()
    assert row[0] == pytest.approx(1.0)
    kinds = [e["kind"] for e in registry.events(job_id=job_id)]
    assert kinds == ["submit", "request", "grant", "start", "end", "release"]
