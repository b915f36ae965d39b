"""SLA-driven jobs: done at once from the database, stop soon after meeting, or at budget."""

import pytest

from simpletvm.engine import TuningJob

pytestmark = pytest.mark.slow


def kinds_of(job):
    kinds = []
    while (request := job.next_stage()) is not None:
        job.run_stage()
        kinds.append(request.kind.value)
    return kinds


def test_database_already_meets_the_sla(tiny_model, tmp_path, fast_options):
    db = tmp_path / "shared.db"
    TuningJob.from_model(tiny_model, options=fast_options(trials=4), db_path=db,
                         measure_baselines=False).run_all()
    job = TuningJob.from_model(tiny_model, options=fast_options(trials=64, sla_ms=1000.0),
                               db_path=db, measure_baselines=False)
    assert kinds_of(job) == ["prepare", "evaluate", "compile", "finalize"]
    result = job.result()
    assert result["trials"] == 0 and result["sla_met"] and result["stop_reason"] == "sla met"


def test_achievable_sla_stops_soon_after_it_is_met(cnn_model, tmp_path, fast_options):
    # what the first evaluation sees: the model built from an empty database
    before = TuningJob.from_model(cnn_model, db_path=tmp_path / "empty.db",
                                  options=fast_options(trials=0), measure_baselines=False)
    sla = before.run_all().result()["tuned_ms"] * 0.5
    job = TuningJob.from_model(cnn_model, db_path=tmp_path / "s.db", measure_baselines=False,
                               options=fast_options(trials=96, per_round=8, sla_ms=sla,
                                                    evaluate_every=1))
    kinds = kinds_of(job)
    result = job.result()
    assert result["sla_met"], result["sla_history"]
    assert result["stop_reason"] == "sla met"
    assert result["trials"] < 96
    # the first evaluation (before any tuning) missed it, the last one met it
    assert result["sla_history"][0]["latency_ms"] > sla
    assert result["sla_history"][-1]["latency_ms"] <= sla
    assert kinds[-3:] == ["evaluate", "compile", "finalize"]


def test_impossible_sla_stops_at_the_budget_with_a_report(tiny_model, tmp_path, fast_options):
    job = TuningJob.from_model(tiny_model, db_path=tmp_path / "i.db", measure_baselines=False,
                               options=fast_options(trials=8, sla_ms=1e-6))
    kinds_of(job)
    result = job.result()
    assert result["trials"] == 8
    assert not result["sla_met"]
    assert result["stop_reason"] == "budget"
    assert result["gap_ms"] == pytest.approx(result["best_ms"] - 1e-6)
    assert result["gap_ms"] > 0


def test_deadline_stops_tuning(tiny_model, tmp_path, fast_options):
    job = TuningJob.from_model(tiny_model, db_path=tmp_path / "d.db", measure_baselines=False,
                               options=fast_options(trials=400, sla_ms=1e-6,
                                                    deadline_seconds=0.001))
    kinds_of(job)
    assert job.result()["stop_reason"] == "deadline"
    assert job.result()["trials"] < 400
