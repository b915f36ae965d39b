"""The simpletvm CLI end to end on the tiny model, and help text on every command."""

import json

import pytest
from typer.testing import CliRunner

from simpletvm.cli import app

runner = CliRunner()
FAST = ["--population", "16", "--per-round", "4", "--number", "1", "--min-repeat-ms", "0"]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr + result.stdout
    return result.stdout


@pytest.mark.parametrize(
    "command",
    [[], ["tune"], ["bench"], ["inspect"], ["compare"], ["sample"], ["db"], ["db", "stats"]],
)
def test_every_command_has_help(command):
    out = invoke(*command, "--help")
    assert "Usage" in out
    assert len(out.strip().splitlines()) > 3


def test_sample_list_json():
    data = json.loads(invoke("sample", "--list", "--json"))
    names = {s["name"] for s in data["samples"]}
    assert {"cnn", "resnet", "mlp", "attention"} <= names


@pytest.mark.slow
def test_tune_twice_then_build_from_db_and_bench(tmp_path):
    model = tmp_path / "tiny.onnx"
    invoke("sample", "tiny", "-o", model)
    db = tmp_path / "t.db"
    first = json.loads(
        invoke("tune", model, "--trials", "4", "--db", db, "-o", tmp_path / "t.so", "--json", *FAST)
    )
    assert first["trials"] == 4 and first["served_from_db"]["records"] == 0
    assert first["untuned_ms"] > 0 and first["onnxruntime_ms"] > 0
    second = invoke("tune", model, "--trials", "4", "--db", db, *FAST)
    assert "Served from the database: 4 records for 1 of" in second
    assert "untuned ms" in second and "time per stage" in second
    zero = json.loads(invoke("tune", model, "--trials", "0", "--db", db, "--json"))
    assert zero["trials"] == 0 and zero["tuned_ms"] > 0
    stats = json.loads(invoke("db", "stats", "--db", db, "--json"))
    assert sum(w["records"] for w in stats["workloads"]) == 8
    bench = json.loads(invoke("bench", tmp_path / "t.so", "--json"))
    assert bench["kind"] == "exported" and bench["median_ms"] > 0
    compared = json.loads(invoke("compare", model, "--db", db, "--json"))
    assert compared["tuned_ms"] > 0 and compared["untuned_ms"] > 0
