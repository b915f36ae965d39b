"""Hostile but careful input to simpletvm's commands: exit 2, one line, no traceback,
and nothing created outside the named paths (a table; more rows belong to sched and
superb as their checks land)."""

import os
import subprocess
import sys

import pytest


def _simpletvm(*args, cwd, state):
    code = "import sys; from simpletvm.cli import main; sys.argv[0] = 'simpletvm'; main()"
    env = {**os.environ, "SIMPLETVM_HOME": str(state)}  # the user's state: not the cwd
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


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
