"""Hostile but careful input to simpletvm's commands: exit 2, one line, no traceback,
and nothing created outside the named paths (a table; more rows belong to sched and
superb as their checks land)."""

import os
import subprocess
import sys

import pytest

from .cli_server import run_cli
from .sched_helpers import file_bytes, job_rows, registry_with_jobs


def _simpletvm(*args, cwd, state):
    env = {**os.environ, "SIMPLETVM_HOME": str(state)}  # the user's state: not the cwd
    return run_cli("simpletvm", *args, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from simpletvm.samples import write_sample

    return write_sample("tiny", tmp_path_factory.mktemp("hostile") / "tiny.onnx")


CASES = {
    "device file": (["inspect", "/dev/zero"], "is a device"),
    "directory": (["inspect", "."], "directory"),
    "huge trials": (["tune", "{tiny}", "--trials", "99999999999999999999"], "too large"),
    "zero population": (["tune", "{tiny}", "--population", "0"], "population-size must be"),
    "zero time budget": (["tune", "{tiny}", "--time-budget", "0"], "must be positive"),
    "malformed time budget": (["tune", "{tiny}", "--time-budget", "5x"], "--time-budget"),
    "negative seed": (["sample", "tiny", "--seed", "-1", "-o", "s.onnx"], "--seed"),
    "unknown sample": (["sample", "nope", "-o", "s.onnx"], "unknown sample"),
    "output under missing dirs": (["sample", "tiny", "-o", "no/such/dir/s.onnx"],
                                  "does not exist"),
    "bad conv layout": (["tune", "{tiny}", "--conv-layout", "NCWH"], "unknown conv layout"),
    "bad winograd mode": (["tune", "{tiny}", "--winograd", "8"], "unknown winograd mode"),
    "bad winograd mode, inspect": (["inspect", "{tiny}", "--winograd", "on"],
                                   "unknown winograd mode"),
    "bad conv layout, inspect": (["inspect", "{tiny}", "--conv-layout", "HWCN"],
                                 "unknown conv layout"),
    "bad target": (["tune", "{tiny}", "--target", "llvm -mcpu=foo"], "old CLI-string"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(name, tiny, tmp_path, tmp_path_factory):
    args, words = CASES[name]
    args = [str(tiny) if a == "{tiny}" else a for a in args]
    work = tmp_path / "work"
    work.mkdir()
    proc = _simpletvm(*args, cwd=work, state=tmp_path_factory.mktemp("state"))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert words in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert os.listdir(work) == []  # nothing created


# -- sched -------------------------------------------------------------------------------
# The same contract for ``sched``: each row runs the CLI in a subprocess against a registry
# outside the cwd (SCHED_DB), and must exit 2 with one ``Error:`` line and no traceback.
# Rows whose registry is damaged also check that the failing command changed nothing:
# the files are byte for byte the same and, put right again, hold the same job rows.


def _sched_cli(*args, cwd, db, state):
    env = {**os.environ, "SCHED_DB": str(db), "XDG_STATE_HOME": str(state)}
    return run_cli("sched", *args, cwd=cwd, env=env)


SCHED_CASES = {
    "zero heartbeat timeout": (["start", "--heartbeat-timeout", "0"], "--heartbeat-timeout"),
    "negative heartbeat timeout": (["start", "--heartbeat-timeout", "-1"],
                                   "--heartbeat-timeout"),
    "nan heartbeat timeout": (["start", "--heartbeat-timeout", "nan"], "--heartbeat-timeout"),
    "zero max jobs": (["start", "--max-jobs", "0"], "--max-jobs must be between 1"),
    "negative max jobs": (["start", "--max-jobs", "-1"], "--max-jobs must be between 1"),
    "huge cpu pool": (["start", "--resource", "cpu=99999999999999999999"],
                      "capacity must be between 1"),
    "billion mock rounds": (["submit", "--mock", "rounds=1000000000"], "must be at most"),
    "huge priority": (["submit", "--mock", "rounds=1", "--priority", "99999999999999999999"],
                      "--priority must be between"),
    "infinite population": (["submit", "{tiny}", "--option", "population_size=1e400"],
                            "population-size"),
    "fractional builder workers": (["submit", "{tiny}", "--option", "builder_workers=1.5"],
                                   "builder-workers must be a whole number"),
    "huge job id": (["cancel", "99999999999999999999"], "job_id"),
    "timeline under missing dirs": (["timeline", "--output", "no/such/x.png"],
                                    "does not exist"),
    "stop without a daemon": (["stop"], "no sched daemon runs"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCHED_CASES))
def test_sched_bad_input_is_one_line_and_exit_2(name, tiny, tmp_path):
    args, words = SCHED_CASES[name]
    args = [str(tiny) if a == "{tiny}" else a for a in args]
    work, state = tmp_path / "work", tmp_path / "state"
    work.mkdir()
    proc = _sched_cli(*args, cwd=work, db=state / "sched.db", state=state)
    _one_error_line(proc, words)
    assert os.listdir(work) == []  # nothing created
    if os.path.exists(state / "sched.db.pid"):  # start refused: no daemon left behind
        from tvmsched.pidfile import running_pid

        assert running_pid(state / "sched.db.pid") is None


def _one_error_line(proc, words):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


# registry damage: (set-up, command, words); set-up returns how to put it right, or None
def _truncated(db):
    rows = registry_with_jobs(db)
    data = db.read_bytes()
    db.write_bytes(data[:4096])
    return rows, lambda: db.write_bytes(data)


def _junk_wal(db):
    """Jobs in the -wal of a registry whose writer crashed, then junk over the log's header
    (SQLite would skip the whole log, and the first close would delete it)."""
    code = ("import os, sys; from tvmsched.registry import Registry; r = Registry(sys.argv[1]);"
            " [r.submit('mock', {'mock': 'rounds=1'}) for _ in range(4)]; os._exit(0)")
    registry_with_jobs(db, 2)
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=60)
    rows = _rows_from_copy(db)
    assert len(rows) == 6  # two checkpointed, four only in the log
    wal = db.with_name(db.name + "-wal")
    head = wal.read_bytes()[:32]
    with open(wal, "r+b") as f:
        f.write(b"\xa5" * 32)

    def restore():
        with open(wal, "r+b") as f:
            f.write(head)

    return rows, restore


def _rows_from_copy(db):
    import shutil

    copy = db.with_name("copy.db")
    for suffix in ("", "-wal"):
        shutil.copy(db.with_name(db.name + suffix), copy.with_name(copy.name + suffix))
    rows = job_rows(copy)
    for suffix in ("", "-wal", "-shm", "-gate", "-writelock"):
        copy.with_name(copy.name + suffix).unlink(missing_ok=True)
    return rows


def _unreadable(db):
    rows = registry_with_jobs(db)
    os.chmod(db, 0)
    return rows, lambda: os.chmod(db, 0o600)


def _holding(write):
    """A set-up that only writes something in the registry's place (no jobs to compare)."""
    return lambda db: write(db) and None


REGISTRY_CASES = {
    "plain text": (_holding(lambda db: db.write_text("not a registry\n")), ["jobs"],
                   "is not a SQLite database"),
    "garbage": (_holding(lambda db: db.write_bytes(os.urandom(8192))), ["status"],
                "is not a SQLite database"),
    "directory": (_holding(lambda db: db.mkdir()), ["submit", "--mock", "rounds=1"],
                  "is a directory"),
    "truncated": (_truncated, ["submit", "--mock", "rounds=1"], "is truncated"),
    "junk wal": (_junk_wal, ["jobs", "--all"], "write-ahead log"),
    "unreadable": (_unreadable, ["cancel", "1"], "permission denied"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY_CASES))
def test_sched_damaged_registry_is_one_line_and_loses_nothing(name, tmp_path):
    setup, args, words = REGISTRY_CASES[name]
    if name == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads any file")
    work, state = tmp_path / "work", tmp_path / "state"
    work.mkdir()
    state.mkdir()
    db = state / "sched.db"
    fix = setup(db)
    before = file_bytes(state)
    proc = _sched_cli(*args, cwd=work, db=db, state=state)
    _one_error_line(proc, words)
    assert str(db) in proc.stderr  # names the file
    assert os.listdir(work) == []
    assert file_bytes(state) == before  # not a byte changed, nothing added
    if fix is not None:
        rows, restore = fix
        restore()
        assert job_rows(db) == rows  # every job is still there


@pytest.mark.slow
def test_sched_refuses_a_new_registry_while_a_daemon_serves_the_deleted_one(tmp_path):
    """The registry deleted under a live daemon: no command may create an empty one."""
    work, state = tmp_path / "work", tmp_path / "state"
    work.mkdir()
    state.mkdir()
    db = state / "sched.db"
    registry_with_jobs(db)
    code = ("import sys, time; from pathlib import Path; from tvmsched.pidfile import PidFile;"
            " assert PidFile(Path(sys.argv[1])).acquire(); print('held', flush=True);"
            " time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(state / "sched.db.pid")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        db.unlink()
        proc = _sched_cli("submit", "--mock", "rounds=1", cwd=work, db=db, state=state)
        _one_error_line(proc, f"pid {holder.pid}")
        assert "is missing" in proc.stderr and not db.exists()
    finally:
        holder.kill()
        holder.wait()
