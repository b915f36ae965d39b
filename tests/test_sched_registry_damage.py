"""A damaged, foreign or vanished registry: every command that reads it answers with one
``Error:`` line naming the file, exit status 2, and changes nothing; a lost job id is
never handed out again (in-process; tests/test_hostile_inputs.py runs some as processes)."""

import os
import shutil
import sqlite3

import pytest

from tvmsched.cli import app, device_app, main
from tvmsched.paths import pid_file, runner_log
from tvmsched.pidfile import PidFile
from tvmsched.registry import Registry, RegistryError
from tvmsched.registry.health import wal_header_ok

from .sched_helpers import file_bytes, job_rows, registry_with_jobs

COMMANDS = {
    "status": ["status"],
    "jobs": ["jobs", "--all"],
    "submit": ["submit", "--mock", "rounds=1"],
    "cancel": ["cancel", "1"],
    "logs": ["logs", "1"],
    "result": ["result", "1"],
    "timeline": ["timeline"],
    "strategy": ["strategy"],
    "strategy set": ["strategy", "sequential"],
    "start": ["start"],
    "agent": ["agent", "--name", "box-a"],
    "device add": ["device", "add", "box-a", "--server", "127.0.0.1:9090"],
    "device list": ["device", "list"],
    "device remove": ["device", "remove", "box-a"],
}
NOT_READING = {"stop"}  # signals the daemon from its pid file; never opens the registry


def crash_image(db):
    """The registry as a writer killed mid-run leaves it: two jobs checkpointed into the
    file, four more only in its -wal; the six job rows."""
    live = db.with_name("live.db")
    registry = Registry(live)
    for _ in range(2):
        registry.submit("mock", {"mock": "rounds=1"})
    registry.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for _ in range(4):
        registry.submit("mock", {"mock": "rounds=1"})
    rows = registry.list_jobs()
    for suffix in ("", "-wal"):  # copied while open: what a crash leaves on disk
        shutil.copy(live.with_name(live.name + suffix), db.with_name(db.name + suffix))
    registry.close()
    for suffix in ("", "-wal", "-shm", "-gate", "-writelock"):
        live.with_name(live.name + suffix).unlink(missing_ok=True)
    return rows


# each set-up makes the registry's bad state; returns (job rows, put-it-right) or None
def plain_text(db):
    db.write_text("not a registry\n")


def garbage(db):
    db.write_bytes(os.urandom(8192))


def directory(db):
    db.mkdir()


def foreign(db):
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE results (x)")
    conn.commit()
    conn.close()


def truncated(db):
    rows = registry_with_jobs(db)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    return rows, lambda: db.write_bytes(data)


def junk_wal(db):
    rows = crash_image(db)
    wal = db.with_name(db.name + "-wal")
    head = wal.read_bytes()[:32]
    assert wal_header_ok(head)
    with open(wal, "r+b") as f:
        f.write(os.urandom(32))

    def restore():
        with open(wal, "r+b") as f:
            f.write(head)

    return rows, restore


CASES = {
    "plain text": (plain_text, "is not a SQLite database"),
    "garbage": (garbage, "is not a SQLite database"),
    "directory": (directory, "is a directory"),
    "foreign database": (foreign, "not a sched registry"),
    "truncated": (truncated, "is truncated"),
    "junk wal": (junk_wal, "write-ahead log"),
}


def test_every_command_that_reads_the_registry_is_covered():
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    names |= {f"device {c.name}" for c in device_app.registered_commands}
    assert names - NOT_READING <= set(COMMANDS), names - NOT_READING - set(COMMANDS)


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code, err, *words):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_registry_one_line_and_nothing_changed(capsys, tmp_path, case, command):
    setup, words = CASES[case]
    db = tmp_path / "sched.db"
    fixable = setup(db)
    before = file_bytes(tmp_path)
    code, out, err = run(capsys, *COMMANDS[command], "--db", str(db))
    assert_one_error(code, err, words, str(db))
    assert file_bytes(tmp_path) == before  # not a byte changed, no file added
    if fixable is not None:
        rows, restore = fixable
        restore()
        assert job_rows(db) == rows  # every job recorded before is still there


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_registry_deleted_under_a_live_daemon_is_not_recreated(capsys, tmp_path, command):
    db = tmp_path / "sched.db"
    registry_with_jobs(db)
    holder = PidFile(pid_file(db))  # this process plays the daemon: it holds the pid file
    assert holder.acquire()
    try:
        db.unlink()
        code, _, err = run(capsys, *COMMANDS[command], "--db", str(db))
        assert_one_error(code, err, str(db), "is missing", f"pid {os.getpid()}")
        assert not db.exists()  # no new, empty registry
    finally:
        holder.release()


def test_a_lost_job_id_is_not_given_again(tmp_path):
    """Jobs lost with a -wal: ids are handed out again from the last checkpoint, so a new
    job would take over an old job's log. Refused, and nothing is recorded."""
    db = tmp_path / "sched.db"
    registry_with_jobs(db, 2)
    log = runner_log(db, 3)
    log.parent.mkdir()
    log.write_text("the old job 3's output\n")
    registry = Registry(db)
    with pytest.raises(RegistryError, match="job id 3 was used before"):
        registry.submit("mock", {"mock": "rounds=1"})
    assert [j["id"] for j in registry.list_jobs()] == [1, 2]
    registry.close()
    assert log.read_text() == "the old job 3's output\n"


def test_a_new_registry_is_still_created(capsys, tmp_path):
    db = tmp_path / "new" / "sched.db"
    code, out, err = run(capsys, "submit", "--mock", "rounds=1", "--db", str(db))
    assert code == 0 and "submitted job 1" in out, err
