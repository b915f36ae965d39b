"""What sched lets through to the terminal and the disk: names shown escaped, job files
private, a chart never creating a chain of directories; values that would kill jobs or
crash the daemon refused where they come in."""

from __future__ import annotations

import math
import os
import stat

import pytest
from rich.console import Console

from tvmsched import cli, limits
from tvmsched.cli import main
from tvmsched.mockjob import MockSpec
from tvmsched.paths import jobs_dir, private_job_dir
from tvmsched.registry import Registry
from tvmsched.resources import parse_resource
from tvmsched.runner import _Life
from tvmsched.timeline import draw

HOSTILE = "evil\x1b]0;pwned\x07\x1b[2J[bold red]loud[/bold red]\u202egnp"


@pytest.fixture
def wide(monkeypatch):
    """The CLI's console, wide enough that no cell folds."""
    monkeypatch.setattr(cli, "console", Console(width=400, color_system=None))


def finished(db, name, result):
    registry = Registry(db)
    job_id = registry.submit("mock", {"mock": "rounds=1"}, name=name)
    registry.finish_job(job_id, registry.claim_job(job_id), result=result)
    registry.close()
    return job_id


@pytest.mark.parametrize("command", [["jobs", "--all"], ["status"], ["result", "1"]])
def test_names_reach_the_terminal_escaped(capsys, tmp_path, wide, command):
    db = str(tmp_path / "s.db")
    finished(db, HOSTILE, {"model": HOSTILE, "target": "llvm", "tuned_ms": 1.0})
    assert main([*command, "--db", db]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "[bold red]loud[/bold red]" in out  # markup shown as typed, not applied
    assert "\\x1b]0;pwned\\x07" in out and "\\u202e" in out


def test_errors_reach_the_terminal_escaped(capsys, tmp_path):
    """A usage error repeats what was typed (click escapes C0 controls, not the rest)."""
    assert main(["status", "--" + HOSTILE, "--db", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\u202e" not in err and "\\u202e" in err
    assert len(err.strip().splitlines()) == 1


def test_a_fault_of_ours_is_status_1_with_the_log_to_read(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    def broken(job):
        raise RuntimeError("a bug\non two lines")

    monkeypatch.setattr(cli.report, "job_summary", broken)
    db = str(tmp_path / "s.db")
    finished(db, "one", {})
    assert main(["jobs", "--all", "--db", db]) == 1
    err = capsys.readouterr().err
    log = tmp_path / "state" / "sched" / "sched-cli.log"
    assert err.startswith("Error: internal error: RuntimeError: a bug") and str(log) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "Traceback" in log.read_text() and stat.S_IMODE(log.stat().st_mode) == 0o600


def test_job_directories_are_private(tmp_path):
    db = tmp_path / "s.db"
    old = os.umask(0o022)
    try:
        (jobs_dir(db) / "job-2").mkdir(parents=True, mode=0o755)  # left by an older sched
        for job_id in (1, 2):
            work = private_job_dir(db, job_id)
            assert stat.S_IMODE(work.stat().st_mode) == 0o700
        assert stat.S_IMODE(jobs_dir(db).stat().st_mode) == 0o700
    finally:
        os.umask(old)


class _Job:
    def __init__(self, result):
        self._result = result

    def result(self):
        return self._result


class _Registry:
    def __init__(self, path):
        self.path, self.finished = path, None

    def finish_job(self, job_id, attempt, *, result):
        self.finished = result


def test_an_exported_module_in_the_job_directory_is_made_0600(tmp_path):
    db = tmp_path / "s.db"
    module = private_job_dir(db, 1) / "model.so"
    module.write_bytes(b"\x7fELF")
    os.chmod(module, 0o755)  # as a linker writes it
    mine = tmp_path / "out.so"  # --output somewhere of the user's: left alone
    mine.write_bytes(b"\x7fELF")
    os.chmod(mine, 0o755)
    registry = _Registry(db)
    life = _Life(registry, {"id": 1, "attempt": 1}, None, None, 1.0)
    for artifact in (module, mine):
        life._finish(_Job({"artifact": str(artifact)}))
        assert registry.finished == {"artifact": str(artifact)}
    assert stat.S_IMODE(module.stat().st_mode) == 0o600
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755


ROW = {"job_id": 1, "stage": "search", "resource": "cpu", "amount": 1, "start": 0.0, "end": 1.0}


def test_timeline_makes_one_directory_level_at_most(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        draw([ROW], tmp_path / "a" / "b" / "x.svg")
    assert not (tmp_path / "a").exists()
    path = draw([ROW], tmp_path / "a" / "x.svg")
    assert path.stat().st_size > 0
    (tmp_path / "d.svg").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        draw([ROW], tmp_path / "d.svg")


@pytest.mark.parametrize(
    ("check", "words"),
    [
        (lambda: limits.check_daemon_limits(64, 1.0, 0.0), "--heartbeat-timeout"),
        (lambda: limits.check_daemon_limits(64, 1.0, -1.0), "--heartbeat-timeout"),
        (lambda: limits.check_daemon_limits(64, 1.0, math.nan), "--heartbeat-timeout"),
        (lambda: limits.check_daemon_limits(64, 1.0, math.inf), "--heartbeat-timeout"),
        (lambda: limits.check_daemon_limits(64, 1.0, 1.5), "above 2"),  # under two beats
        (lambda: limits.check_daemon_limits(0, 1.0, 10.0), "--max-jobs"),
        (lambda: limits.check_daemon_limits(-1, 1.0, 10.0), "--max-jobs"),
        (lambda: parse_resource("cpu=99999999999999999999"), "capacity must be between"),
        (lambda: parse_resource("gpu=100000"), "capacity must be between"),
        (lambda: MockSpec.parse("rounds=1000000000"), "rounds=1000000000"),
        (lambda: MockSpec.parse("search=1e300"), "search=1e300"),
    ],
)
def test_values_that_would_kill_jobs_are_refused(check, words):
    with pytest.raises(ValueError) as caught:
        check()
    assert words in str(caught.value)


def test_sane_values_still_pass():
    limits.check_daemon_limits(64, 1.0, 10.0)
    limits.check_daemon_limits(1, 0.1, 0.8)  # what tests/test_sched_daemon.py starts with
    assert parse_resource("cpu=64")[0].capacity == 64
    assert len(parse_resource("gpu=8")) == 8
    assert MockSpec.parse("rounds=1000,search=0.5").rounds == 1000
