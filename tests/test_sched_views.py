"""What people read: ``sched result`` as a table of rounded figures (full precision with
--json), and the jobs table's whole-model latency saying what it is."""

from __future__ import annotations

import json

from rich.console import Console

from tvmsched import render, report
from tvmsched.cli import main
from tvmsched.dispatch import Dispatcher
from tvmsched.models import Resource, ResourceKind
from tvmsched.registry import Registry

RESULT = {
    "model": "cnn", "target": "llvm", "artifact": "/x/cnn.so", "exported": "tuned",
    "tuned_ms": 0.12345678901234568, "tuned": {"std_ms": 0.0012345678901234567},
    "untuned_ms": 0.49382716049382713, "onnxruntime_ms": 0.2469135802469136,
    "output_check": {"ok": True, "max_abs_err": 3.0517578125e-05},
    "trials": 64, "tasks": 5, "served_from_db": {"records": 0, "tasks": 0},
    "tuning_seconds": 61.23456789, "stop_reason": "budget",
    "stage_seconds": {"search": 11.94444, "prepare": 7.2111, "finalize": 1.25},
    "convergence": [{"trials": 16, "seconds": 10.123456, "best_ms": 0.3333333333333333},
                    {"trials": 32, "seconds": 20.98765, "best_ms": 0.14285714285714285}],
}  # fmt: skip


def finished(db, result=RESULT) -> int:
    registry = Registry(db)
    job_id = registry.submit("mock", {"mock": "rounds=1"})
    registry.finish_job(job_id, registry.claim_job(job_id), result=result)
    return job_id


def test_result_is_a_table_of_rounded_figures(capsys, tmp_path):
    db = str(tmp_path / "s.db")
    job_id = finished(db)
    assert main(["result", str(job_id), "--db", db]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "0.1235 ± 0.001235" in out and "0.4938" in out and "4.00x" in out
    assert "12345678" not in out and "{" not in out  # no dict reprs, no 17-digit floats
    assert "prepare 7.2, search 11.9, finalize 1.2" in out  # one row, in stage order
    assert "ok (max error 3.1e-05)" in out
    for round_row in ("1 16 10.1 0.3333", "2 32 21.0 0.1429"):  # convergence: one per row
        assert round_row in out
    assert main(["result", str(job_id), "--json", "--db", db]) == 0
    assert json.loads(capsys.readouterr().out) == RESULT  # --json: full precision


def test_a_mock_result_shows_only_what_it_has(tmp_path):
    db = tmp_path / "s.db"
    job = Registry(db).job(finished(db, {"tuned_ms": 0.5, "untuned_ms": 1.0, "trials": 16}))
    console = Console(width=100, record=True)
    console.print(render.result_table(job))
    text = console.export_text()
    assert "tuned ms" in text and "2.00x" in text and "convergence" not in text
    assert "artifact" not in text  # absent fields get no row


def test_the_jobs_table_says_what_its_latency_is(tmp_path):
    db = tmp_path / "s.db"
    registry = Registry(db)
    registry.replace_resources([Resource("cpu", ResourceKind.CPU, 1, False)])
    running = registry.submit("mock", {"mock": "rounds=1"})
    attempt = registry.claim_job(running)
    registry.request_stage(running, attempt, 0, "search", {"cpu": 1})
    (grant,) = Dispatcher(registry).dispatch()
    # after one round only one task is known: the engine's estimate is that task's time
    registry.complete_stage(grant.epoch, seconds=1.0, progress={"best_latency_ms": 0.0012})
    done = finished(db, {"tuned_ms": 0.1})
    rows = {j["id"]: report.job_summary(j) for j in registry.list_jobs()}
    assert (rows[running]["model_ms"], rows[running]["model_ms_is"]) == (0.0012, "estimate")
    assert (rows[done]["model_ms"], rows[done]["model_ms_is"]) == (0.1, "measured")
    console = Console(width=160, record=True)
    console.print(render.jobs_table(list(rows.values())))
    text = console.export_text()
    assert "model ms" in text and "~0.0012 (est.)" in text and "│ 0.1 " in text
    sla = {**registry.job(running), "progress": {"best_latency_ms": 0.0012, "model_ms": 0.09}}
    assert report.model_latency(sla) == {"model_ms": 0.09, "model_ms_is": "evaluated"}
