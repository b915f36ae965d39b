"""Hostile but careful input to superb, and usage errors of superb and simpletvm: exit 2,
one line starting with ``Error:``, no traceback, nothing created in the cwd, and nothing
already recorded lost (a table, in the style of test_hostile_inputs.py)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from superb import SuperbError, matrix
from superb import cli as superb_cli
from superb.matrix import expand_all
from superb.outcome import Event, JobOutcome, PointOutcome
from superb.results import ResultsDB
from superb.runner import Runner
from superb.schema import parse
from superb.spec import Experiment, Strategy

from .cli_server import run_cli

MOCK = '[[experiment]]\nname = "m"\nmock = "rounds=1"\njobs = [2]\n'
REAL = '[[experiment]]\nname = "x"\nmodels = ["tiny"]\n'
UP = "../" * 40  # from the inputs folder to /, however deep it is
LIMIT_VARIABLES = ("SUPERB_MAX_POINTS", "SUPERB_MAX_CONFIG_BYTES", "SIMPLETVM_MAX_MODEL_BYTES")


def _cli(prog: str, *args, cwd: Path, state: Path, env: dict | None = None):
    """Run ``prog``'s main() (superb or simpletvm) as the installed command would, in a
    process of its own (forked from the warm server of cli_server.py)."""
    full = {k: v for k, v in os.environ.items() if k not in LIMIT_VARIABLES}
    full.update(SIMPLETVM_HOME=str(state), SUPERB_HOME=str(state / "superb"), **(env or {}))
    return run_cli(prog, *args, cwd=cwd, env=full)


def _assert_one_line_error(proc, words: list[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return lines[0]


def _results_db(path: Path, events: int = 2) -> Path:
    """A results database with one run, the points of MOCK, one of them recorded."""
    db = ResultsDB(path)
    points = expand_all(parse(MOCK, source="m").experiments)
    run = db.start_run(file="m", experiments=["m"], environment={}, now=0.0)
    db.register_points(points)
    owner = (os.getpid(), 1.0)
    key = points[0].key
    db.claim(key, run_id=run, owner=owner, work_dir="/w", now=0.0, owner_alive=lambda *a: False)
    outcome = PointOutcome(
        wall_s=1.0,
        jobs=[JobOutcome(0, "mock", tuned_ms=1.0)],
        events=[Event(0, "search", "cpu", float(i), i + 0.5) for i in range(events)],
    )
    db.finish_point(key, owner=owner, outcome=outcome, error=None, now=1.0)
    db.close()
    return path


def _rows(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}"))) for t in tables}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every hostile file, in a folder that is not the commands' cwd."""
    d = tmp_path_factory.mktemp("inputs")
    write = {
        "mock.toml": MOCK,
        "two.toml": MOCK.replace("jobs = [2]", "jobs = [2, 3]"),
        "deep.toml": "a = " + "[" * 40 + "]" * 40 + "\n",
        "recursion.toml": "a = " + "[" * 5000 + "]" * 5000 + "\n",
        "passwd.toml": f'[[experiment]]\nname = "x"\nmodels = ["{UP}etc/passwd"]\n',
        "fifo-model.toml": '[[experiment]]\nname = "x"\nmodels = ["fifo.onnx"]\n',
        "fifo-model-table.toml": '[models.f]\npath = "fifo.onnx"\n' + REAL.replace("tiny", "f"),
        "big-model.toml": '[[experiment]]\nname = "x"\nmodels = ["big.onnx"]\n',
        "target.toml": REAL + 'target = ["bogus"]\n',
        "old-target.toml": REAL + 'target = ["llvm -mcpu=foo"]\n',
        "population0.toml": REAL + "options = { population_size = 0 }\n",
        "population-inf.toml": REAL + "options = { population_size = inf }\n",
        "trials-float.toml": REAL + "trials = [1e20]\n",
        "trials-int.toml": REAL + "trials = [99999999999999]\n",
        "jobs.toml": REAL + "jobs = [1000000]\n",
        "matrix.toml": MOCK.replace("jobs = [2]", f"jobs = 2\nseed = {list(range(1000))}\n"
                                    f"trials = {list(range(1, 1001))}"),
        "afile": "not a directory\n",
    }  # fmt: skip
    for name, text in write.items():
        (d / name).write_text(text)
    (d / "latin1.toml").write_bytes('[[experiment]]\nname = "café"\n'.encode("latin-1"))
    (d / "big.onnx").write_bytes(os.urandom(1000))
    os.mkfifo(d / "fifo.toml")
    os.mkfifo(d / "fifo.onnx")
    return d


# name: (program, args, words the one line must hold, extra environment)
CASES = {
    # the benchmarks file: only a regular UTF-8 file within the size limit
    "config is a FIFO": ("superb", ["validate", "{in}/fifo.toml"], ["fifo.toml", "is a FIFO"]),
    "config is a FIFO, run": ("superb", ["run", "{in}/fifo.toml"], ["is a FIFO"]),
    "config is a device": ("superb", ["validate", "/dev/zero"], ["is a device"]),
    "config is a directory": ("superb", ["validate", "{in}"], ["is a directory"]),
    "config over the size limit": ("superb", ["validate", "{in}/mock.toml"],
                                   ["over the limit of 10 bytes", "SUPERB_MAX_CONFIG_BYTES"],
                                   {"SUPERB_MAX_CONFIG_BYTES": "10"}),
    "config size limit not a number": ("superb", ["validate", "{in}/mock.toml"],
                                       ["SUPERB_MAX_CONFIG_BYTES", "positive integer"],
                                       {"SUPERB_MAX_CONFIG_BYTES": "lots"}),
    "config not UTF-8": ("superb", ["validate", "{in}/latin1.toml"], ["not UTF-8", "0xe9"]),
    "config nested deeply": ("superb", ["validate", "{in}/deep.toml"], ["nested more than 16"]),
    "config nested past the parser": ("superb", ["validate", "{in}/recursion.toml"],
                                      ["nested more than 16"]),
    # models: read as simpletvm reads them (load_onnx)
    "model is /etc/passwd": ("superb", ["validate", "{in}/passwd.toml"],
                             ["key 'models'", "etc/passwd", "not a valid ONNX model"]),
    "model is a FIFO": ("superb", ["validate", "{in}/fifo-model.toml"], ["is a FIFO"]),
    "model table path is a FIFO": ("superb", ["run", "{in}/fifo-model-table.toml"],
                                   ["[models.f]", "key 'path'", "is a FIFO"]),
    "model over the size limit": ("superb", ["validate", "{in}/big-model.toml"],
                                  ["over the limit of 100 bytes", "SIMPLETVM_MAX_MODEL_BYTES"],
                                  {"SIMPLETVM_MAX_MODEL_BYTES": "100"}),
    # values, by simpletvm's own rules
    "unknown target": ("superb", ["validate", "{in}/target.toml"],
                       ["key 'target'", "unknown target 'bogus'"]),
    "old-style target": ("superb", ["validate", "{in}/old-target.toml"], ["old CLI-string"]),
    "population 0": ("superb", ["validate", "{in}/population0.toml"],
                     ["key 'options'", "population-size must be >= 1"]),
    "population inf": ("superb", ["validate", "{in}/population-inf.toml"],
                       ["population-size must be a whole number, got inf"]),
    "trials 1e20": ("superb", ["validate", "{in}/trials-float.toml"],
                    ["key 'trials'", "whole number"]),
    "trials too large": ("superb", ["run", "{in}/trials-int.toml", "--dry-run"],
                         ["key 'trials'", "too large"]),
    "a million jobs": ("superb", ["validate", "{in}/jobs.toml"], ["key 'jobs'", "at most 256"]),
    # the matrix: bounded, the bound named with the ways to raise it
    "matrix over the limit": ("superb", ["validate", "{in}/matrix.toml"],
                              ["1,000,000 points", "limit of 10,000", "--max-points",
                               "SUPERB_MAX_POINTS"]),
    "matrix over the limit, dry run": ("superb", ["run", "{in}/matrix.toml", "--dry-run"],
                                       ["limit of 10,000"]),
    "matrix over --max-points": ("superb", ["validate", "{in}/two.toml", "--max-points", "1"],
                                 ["2 points", "limit of 1;"]),
    "matrix over SUPERB_MAX_POINTS": ("superb", ["run", "{in}/two.toml", "--dry-run"],
                                      ["2 points", "limit of 1;"], {"SUPERB_MAX_POINTS": "1"}),
    "matrix limit not a number": ("superb", ["validate", "{in}/mock.toml"],
                                  ["SUPERB_MAX_POINTS", "positive integer"],
                                  {"SUPERB_MAX_POINTS": "-5"}),
    # --work-dir: a directory; the default results.db in the cwd must not appear
    "work dir is a file": ("superb", ["run", "{in}/mock.toml", "--work-dir", "{in}/afile"],
                           ["--work-dir", "afile", "not a directory"]),
    "work dir under a file": ("superb", ["run", "{in}/mock.toml", "--work-dir", "{in}/afile/w"],
                              ["afile is a file"]),
    # usage errors: one line, pointing at the command's help
    "superb unknown option": ("superb", ["run", "{in}/mock.toml", "--bogus"],
                              ["No such option: --bogus", "(see superb run --help)"]),
    "superb missing argument": ("superb", ["validate"],
                                ["Missing argument", "(see superb validate --help)"]),
    "superb option without its value": ("superb", ["report", "--format"],
                                        ["--format", "requires an argument"]),
    "superb unknown command": ("superb", ["frobnicate"], ["No such command", "superb --help"]),
    "superb --max-points 0": ("superb", ["validate", "{in}/mock.toml", "--max-points", "0"],
                              ["--max-points"]),
    "simpletvm unknown option": ("simpletvm", ["--bogus"],
                                 ["No such option: --bogus", "(see simpletvm --help)"]),
    "simpletvm missing argument": ("simpletvm", ["tune"],
                                   ["Missing argument", "(see simpletvm tune --help)"]),
    "simpletvm bad integer": ("simpletvm", ["tune", "m.onnx", "--trials", "abc"],
                              ["'--trials'", "(see simpletvm tune --help)"]),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(name, inputs, tmp_path):
    prog, args, words, *env = CASES[name]
    args = [a.replace("{in}", str(inputs)) for a in args]
    work = tmp_path / "work"
    work.mkdir()
    proc = _cli(prog, *args, cwd=work, state=tmp_path / "state", env=env[0] if env else None)
    _assert_one_line_error(proc, words)
    assert os.listdir(work) == []  # nothing created: no results.db, no figures


@pytest.mark.slow
@pytest.mark.parametrize("prog", ["superb", "simpletvm"])
def test_help_still_works(prog, tmp_path):
    shown = _cli(prog, "--help", cwd=tmp_path, state=tmp_path / "state")
    assert shown.returncode == 0 and "Usage" in shown.stdout and shown.stderr == ""
    bare = _cli(prog, cwd=tmp_path, state=tmp_path / "state")  # no arguments: the help
    assert bare.returncode == 2 and "Usage" in bare.stdout + bare.stderr
    assert "Error" not in bare.stdout + bare.stderr


# -- the results database: refused with one line, left exactly as it was ----------------


def _damaged(kind: str, path: Path) -> None:
    if kind == "text":
        path.write_text("experiment,strategy,jobs\nquick,sequential,2\n")
    elif kind == "garbage":
        path.write_bytes(os.urandom(5000))
    elif kind == "truncated":
        _results_db(path, events=3000)
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 3)
    elif kind == "other sqlite":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
        conn.commit()
        conn.close()
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_text("x")


def _snapshot(path: Path) -> dict:
    """Every file next to the database (no -wal, -shm, -journal may appear), by content."""
    files = {}
    for item in sorted(path.parent.rglob("*")):
        if item.is_file():
            files[str(item)] = hashlib.sha256(item.read_bytes()).hexdigest()
    return files


DB_WORDS = {
    "text": "is not an SQLite file",
    "garbage": "is not an SQLite file",
    "truncated": "is truncated",
    "other sqlite": "not superb's results",
    "directory": "is a directory",
}
DB_COMMANDS = {
    "report": ["report", "--db", "{db}"],
    "plot": ["plot", "--db", "{db}", "--output", "figures"],
    "run": ["run", "{in}/mock.toml", "--db", "{db}"],
    "dry run": ["run", "{in}/mock.toml", "--db", "{db}", "--dry-run"],
}
DB_CASES = (
    [(kind, "report") for kind in DB_WORDS]
    + [(kind, "run") for kind in DB_WORDS]
    + [(kind, command) for kind in ("text", "truncated") for command in ("plot", "dry run")]
)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "command"), DB_CASES)
def test_bad_results_database_is_refused_and_kept(kind, command, inputs, tmp_path):
    db = tmp_path / "dbs" / "results.db"
    db.parent.mkdir()
    _damaged(kind, db)
    before = _snapshot(db)
    work = tmp_path / "work"
    work.mkdir()
    args = [a.replace("{in}", str(inputs)).replace("{db}", str(db)) for a in DB_COMMANDS[command]]
    proc = _cli("superb", *args, cwd=work, state=tmp_path / "state")
    line = _assert_one_line_error(proc, [str(db), DB_WORDS[kind], "--db"])
    assert "restore" in line or "pass --db" in line  # what to do
    assert _snapshot(db) == before  # not a byte changed, nothing added beside it
    assert os.listdir(work) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["run", "{in}/mock.toml", "--db", "{db}", "--work-dir", "{in}/afile", "--resume"],
        ["run", "{in}/matrix.toml", "--db", "{db}", "--resume"],
        ["run", "{in}/target.toml", "--db", "{db}", "--resume"],
        ["run", "{in}/mock.toml", "--db", "{db}"],  # without --resume: refused, not mixed in
        ["run", "{in}/mock.toml", "--db", "{db}", "--retry-failed"],
    ],
    ids=["work dir is a file", "matrix too big", "bad target", "no --resume", "retry alone"],
)
def test_bad_input_loses_no_recorded_row(args, inputs, tmp_path):
    db = _results_db(tmp_path / "results.db")
    before = _rows(db)
    assert before["points"] and before["events"]  # something to lose
    args = [a.replace("{in}", str(inputs)).replace("{db}", str(db)) for a in args]
    work = tmp_path / "work"
    work.mkdir()
    proc = _cli("superb", *args, cwd=work, state=tmp_path / "state")
    _assert_one_line_error(proc, [])
    assert _rows(db) == before
    assert os.listdir(work) == []


# -- files: the log and the work root are private, in the per-user state directory --------


def test_internal_error_log_is_private_and_never_follows_a_link(tmp_path, monkeypatch):
    state = tmp_path / "superb-state"
    monkeypatch.setenv("SUPERB_HOME", str(state))

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(superb_cli.schema, "load", boom)
    result = CliRunner().invoke(superb_cli.app, ["validate", "x.toml"])
    log = state / "superb.log"
    assert result.exit_code == 1
    assert f"Internal error: RuntimeError: boom; the traceback is in {log}" in result.stderr
    assert "Traceback" in log.read_text() and "boom" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    log.unlink()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    log.symlink_to(victim)  # planted: the log must not write through it
    result = CliRunner().invoke(superb_cli.app, ["validate", "x.toml"])
    assert result.exit_code == 1 and "could not be logged" in result.stderr
    assert victim.read_text() == "precious\n" and log.is_symlink()


def test_default_work_root_is_private_in_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERB_HOME", str(tmp_path / "superb-state"))
    seen = []

    def executor(point, work_dir, *, progress, should_stop):
        seen.append(work_dir)
        return PointOutcome(jobs=[JobOutcome(i, "mock", tuned_ms=1.0) for i in range(2)])

    points = expand_all(parse(MOCK, source="m").experiments)
    db = ResultsDB(tmp_path / "r.db")
    Runner(db, executors={matrix.PointKind.SCHED: executor}, keep_work=True).run(points)
    root = tmp_path / "superb-state" / "work"
    assert seen and all(w.parent == root for w in seen)
    for folder in (root.parent, root, *seen):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


# -- the matrix: counted without expanding, expanded lazily ------------------------------


def _huge() -> Experiment:
    return Experiment(
        name="huge", description="", mixes=(), mock=("rounds=1",), target=("llvm",),
        trials=tuple(range(1, 1001)), per_round=(16,), strategy=tuple(Strategy),
        jobs=tuple(range(1, 1001)), repeats=1_000_000, seed=(0,), baselines=(), timeout=None,
    )  # fmt: skip


def test_huge_matrix_is_refused_without_being_expanded():
    started = time.monotonic()
    assert matrix.count(_huge()) == 4 * 10**12
    with pytest.raises(SuperbError, match=r"4,000,000,000,000 points.*--max-points"):
        matrix.check_size([_huge()], 10_000)
    points = matrix.iter_points(_huge())  # lazy: the first point comes at once
    assert next(points).trials == 1
    assert time.monotonic() - started < 5


def test_count_matches_expansion_and_direct_points_have_no_strategy_axis():
    text = MOCK.replace('mock = "rounds=1"\njobs = [2]', 'models = ["tiny", "mlp"]\njobs = [1, 2]')
    text += 'strategy = ["sequential", "interleaved"]\nrepeats = 2\n'
    (experiment,) = parse(text, source="c").experiments
    assert matrix.count(experiment) == len(matrix.expand(experiment)) == 2 * (1 + 2)
    assert matrix.check_size([experiment], 6) == 6
    with pytest.raises(SuperbError, match="limit of 5"):
        matrix.check_size([experiment], 5)
