"""The CLI: help everywhere, one-line errors with exit status 2, and an end-to-end run."""

import json

import pytest  # noqa: E402

from tvmsched import api
from tvmsched.cli import app, main

COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "cli.db"
    yield str(path)
    if api.daemon_pid(path) is not None:
        api.stop_daemon(path)


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_has_help(capsys):
    assert set(COMMANDS) == {
        "start", "agent", "stop", "status", "jobs", "submit", "cancel", "logs", "result",
        "timeline", "strategy",
    }  # fmt: skip
    for command in COMMANDS:
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "Usage" in out, command
        assert len(out.strip().splitlines()) > 3, command


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "--mock", "rounds=x"], "mock spec rounds='x'"),
        (["submit"], "give exactly one of a MODEL path or --mock SPEC"),
        (["submit", "missing.onnx"], "does not exist"),
        (["submit", "--bogus"], "No such option"),
        (["start", "--strategy", "fastest"], "unknown strategy 'fastest'"),
        (["start", "--resource", "cpu=lots"], "capacity must be a whole number"),
        (["start", "--host-timeout", "-1"], "--host-timeout must be a finite number"),
        (["agent", "--name", "box-a", "--resource", "cpu=lots"], "capacity must be a whole"),
        (["strategy", "fastest"], "unknown strategy"),
        (["cancel", "42"], "no such job: 42"),
        (["result", "42"], "no such job: 42"),
        (["logs", "42"], "no such job: 42"),
        (["cancel", "not-a-number"], "valid integer"),
        (["timeline", "--output", "chart.txt"], "must end in .png or .svg"),
    ],
)
def test_bad_input_is_one_error_line_and_status_2(capsys, db, args, message):
    code, _, err = run(capsys, *args, "--db", db)
    assert code == 2
    assert err.startswith("Error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_submit_refuses_what_the_engine_would_refuse_and_records_nothing(capsys, db, tmp_path,
                                                                         tiny_model):
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model\n")
    for args, message in [([str(junk)], "not a valid ONNX model"),
                          ([str(tiny_model), "--target", "tpu9000"], "unknown target 'tpu9000'")]:
        code, _, err = run(capsys, "submit", *args, "--db", db)
        assert code == 2, err
        assert err.startswith("Error: ") and message in err
        assert len(err.strip().splitlines()) == 1
    assert api.jobs(db) == []
    code, _, err = run(capsys, "submit", str(tiny_model), "--db", db)
    assert code == 0, err
    assert len(api.jobs(db)) == 1


def test_without_a_daemon_submit_queues_and_stop_says_how_to_start(capsys, db):
    code, out, _ = run(capsys, "submit", "--mock", "rounds=1", "--db", db, "--json")
    assert code == 0 and json.loads(out) == {"id": 1}
    code, out, _ = run(capsys, "jobs", "--json", "--db", db)
    assert [j["state"] for j in json.loads(out)] == ["queued"]
    code, _, err = run(capsys, "stop", "--db", db)
    assert code == 2 and "no sched daemon runs" in err and "sched start" in err
    code, out, _ = run(capsys, "status", "--db", db)
    assert code == 0 and "start one with: sched start" in " ".join(out.split())
    code, out, _ = run(capsys, "status", "--json", "--db", db)
    assert json.loads(out)["daemon"]["running"] is False


@pytest.mark.slow
def test_end_to_end_mock_jobs(capsys, db, tmp_path):
    code, out, err = run(capsys, "start", "--resource", "cpu=2", "--resource", "cpu-device=1",
                         "--strategy", "interleaved", "--db", db)  # fmt: skip
    assert code == 0, err
    ids = []
    for seed in range(3):
        spec = f"rounds=2,search=0.05,build=0.05,measure=0.05,update=0.01,seed={seed}"
        code, out, _ = run(capsys, "submit", "--mock", spec, "--db", db, "--json")
        ids.append(json.loads(out)["id"])
    code, out, _ = run(capsys, "strategy", "predictive", "--db", db)
    assert code == 0 and "predictive" in out
    assert set(api.wait(db, ids, timeout=30).values()) == {"done"}
    code, out, _ = run(capsys, "status", "--json", "--db", db)
    status = json.loads(out)
    assert status["daemon"]["strategy"] == "predictive" and status["counts"]["done"] == 3
    code, out, _ = run(capsys, "result", str(ids[0]), "--json", "--db", db)
    assert json.loads(out)["trials"] == 32
    png = tmp_path / "timeline.png"
    code, out, _ = run(capsys, "timeline", "--output", str(png), "--db", db)
    assert code == 0 and png.stat().st_size > 1000
    code, out, _ = run(capsys, "timeline", "--json", "--job", str(ids[1]), "--db", db)
    assert {r["job_id"] for r in json.loads(out)} == {ids[1]}
    code, out, _ = run(capsys, "logs", str(ids[0]), "--json", "--db", db)
    assert "grant" in {e["kind"] for e in json.loads(out)["events"]}
    code, out, _ = run(capsys, "stop", "--db", db)
    assert code == 0 and "stopped" in out
