"""A real daemon (mock jobs) whose registry is deleted, replaced or given a junk -wal while
it runs: it stops with one line in its log, kills its runners and writes nothing more;
and two ``sched start`` at once: the loser names the winner."""

import os
import shutil
import signal
import subprocess
import threading

import pytest

from tvmsched import api
from tvmsched.cli import main
from tvmsched.paths import log_file

from .sched_helpers import end_daemon_and_runners, wait_for

RESOURCES = {"cpu": 1, "cpu-device": 1}


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "sched.db"
    yield path
    pid = api.daemon_pid(path)
    if path.exists():
        end_daemon_and_runners(path)
    elif pid:  # the test failed with its registry gone: end the daemon by its pid
        os.kill(pid, signal.SIGKILL)


def stopped_with_one_line(db, words):
    """Wait for the daemon to stop by itself; its log's one line about it."""
    wait_for(lambda: api.daemon_pid(db) is None, timeout=15, step=0.1)
    log = log_file(db).read_text()
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if "stops:" in line]
    assert len(lines) == 1 and words in lines[0], log
    return lines[0]


def runner_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_daemon_stops_when_its_registry_is_deleted(db):
    api.start_daemon(db, resources=RESOURCES)
    job = api.submit(db, mock="rounds=50,search=0.2,build=0.2,measure=0.2,update=0.1")
    runner = wait_for(lambda: api.job(db, job)["runner_pid"], timeout=15)
    try:
        db.unlink()
        stopped_with_one_line(db, "was removed")
        assert not db.exists()  # not recreated, empty, by the daemon or its runner
        assert wait_for(lambda: runner_gone(runner), timeout=5)
    finally:
        if not runner_gone(runner):  # the test failed: no registry to find it by later
            os.kill(runner, signal.SIGKILL)


@pytest.mark.slow
def test_daemon_stops_when_its_registry_is_replaced(db, tmp_path):
    api.start_daemon(db, resources=RESOURCES)
    api.submit(db, mock="rounds=1")
    other = tmp_path / "other.db"
    shutil.copy(db, other)
    os.replace(other, db)
    stopped_with_one_line(db, "was replaced by another file")


@pytest.mark.slow
def test_daemon_stops_on_a_junk_wal_without_checkpointing_it(db, capsys):
    api.start_daemon(db, resources=RESOURCES)
    ids = [api.submit(db, mock="rounds=1") for _ in range(3)]
    api.wait(db, ids, timeout=30)
    wal = db.with_name(db.name + "-wal")
    head = wal.read_bytes()[:32]
    with open(wal, "r+b") as f:
        f.write(os.urandom(32))
    stopped_with_one_line(db, "write-ahead log")
    assert main(["jobs", "--all", "--db", str(db)]) == 2  # refused, not read from a checkpoint
    assert "write-ahead log" in capsys.readouterr().err
    with open(wal, "r+b") as f:  # put right: every job is there, done
        f.write(head)
    assert [j["state"] for j in api.jobs(db)] == ["done"] * 3


@pytest.mark.slow
def test_the_loser_of_two_starts_names_the_running_daemon(db):
    barrier = threading.Barrier(2)
    outcome = {}

    def start(which):
        barrier.wait()
        try:
            outcome[which] = api.start_daemon(db, resources=RESOURCES)
        except api.DaemonError as exc:
            outcome[which] = exc

    threads = [threading.Thread(target=start, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [v for v in outcome.values() if isinstance(v, int)]
    losers = [v for v in outcome.values() if not isinstance(v, int)]
    assert len(winners) == 1 and len(losers) == 1, outcome
    assert isinstance(losers[0], api.DaemonConflict), losers[0]
    assert f"already runs for {db} (pid {winners[0]})" in str(losers[0])


@pytest.mark.slow
def test_a_start_beaten_at_the_pid_file_names_the_winner(db):
    """The race's losing path made deterministic: the process we launched is gone while
    another daemon serves the registry."""
    winner = api.start_daemon(db, resources=RESOURCES)
    gone = subprocess.Popen(["true"])
    gone.wait()
    registry = api.Registry(db)
    try:
        with pytest.raises(api.DaemonConflict, match=f"pid {winner}"):
            api._await_ready(registry, gone.pid, 5)
    finally:
        registry.close()


@pytest.mark.slow
def test_one_exit_status_rule(db, capsys):
    """2 for the user's mistakes (already running, not running), in the background and in
    the foreground alike."""
    assert main(["stop", "--db", str(db)]) == 2
    assert "no sched daemon runs" in capsys.readouterr().err
    api.start_daemon(db, resources=RESOURCES)
    for args in (["start"], ["start", "--foreground"]):
        assert main([*args, "--resource", "cpu=1", "--db", str(db)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("Error: a daemon already runs") and "pid" in err, err
        assert len(err.strip().splitlines()) == 1
