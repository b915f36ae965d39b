"""The stage-by-stage engine on real TVM with a tiny model and shrunk search settings."""

import numpy as np
import onnxruntime as ort
import pytest

from simpletvm.bench import run_tvm_once
from simpletvm.engine import TuningJob
from simpletvm.model import random_inputs
from simpletvm.stages import StageKind

pytestmark = pytest.mark.slow


def test_stages_run_one_at_a_time_and_announce_resources(tiny_model, tmp_path, fast_options):
    job = TuningJob.from_model(
        tiny_model, options=fast_options(), db_path=tmp_path / "t.db", output=tmp_path / "tiny.so"
    )
    kinds = []
    while (request := job.next_stage()) is not None:
        if request.kind == StageKind.MEASURE:
            assert request.needs == {"device": 1}
        elif request.kind == StageKind.FINALIZE:
            assert request.needs == {"cpu": 1, "device": 1}
        else:
            assert set(request.needs) == {"cpu"}
        outcome = job.run_stage()
        assert outcome.kind == request.kind
        kinds.append(outcome.kind.value)
    # the tuned model is compiled on the CPU alone; finalize holds the device only to time it
    assert kinds[0] == "prepare" and kinds[-2:] == ["compile", "finalize"]
    assert kinds[1:5] == ["search", "build", "measure", "update"]
    assert kinds.count("measure") == 2  # 8 trials / 4 per round
    result = job.result()
    assert result["trials"] == 8
    assert (tmp_path / "tiny.so").exists() and (tmp_path / "tiny.so.json").exists()
    assert result["tuned_ms"] > 0 and result["untuned_ms"] > 0
    assert set(result["stage_seconds"]) >= {"prepare", "search", "build", "measure", "update"}
    with pytest.raises(RuntimeError):
        job.run_stage()


def test_tuned_module_matches_onnxruntime(tiny_model, tmp_path, fast_options):
    job = TuningJob.from_model(
        tiny_model, options=fast_options(), db_path=tmp_path / "t.db", measure_baselines=False
    )
    job.run_all()
    feeds = random_inputs(job.inputs, seed=3)
    ours = run_tvm_once(job.executable, "cpu", feeds)
    session = ort.InferenceSession(tiny_model.read_bytes(), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, feeds)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_records_shared_reuse_and_zero_trials(tiny_model, tmp_path, fast_options):
    db = tmp_path / "shared.db"
    first = TuningJob.from_model(
        tiny_model, options=fast_options(), db_path=db, measure_baselines=False
    ).run_all()
    assert first.served == {"tasks": 0, "records": 0}
    # the second job warm-starts: it sees the records of the first
    second = TuningJob.from_model(
        tiny_model, options=fast_options(reuse=True), db_path=db, measure_baselines=False
    ).run_all()
    assert second.served["records"] == 8
    assert second.served["tasks"] >= 1
    assert second.result()["trials"] == 0  # --reuse: every task already has records
    # --trials 0 builds from the database alone
    zero = TuningJob.from_model(
        tiny_model, options=fast_options(trials=0), db_path=db, measure_baselines=False
    ).run_all()
    assert zero.result()["trials"] == 0
    assert zero.stage_seconds.keys() == {"prepare", "compile", "finalize"}


def test_restarted_job_resumes_its_budget(tiny_model, tmp_path, fast_options):
    db = tmp_path / "resume.db"
    job = TuningJob.from_model(
        tiny_model, options=fast_options(), db_path=db, job_tag="job-7", measure_baselines=False
    )
    for _ in range(5):  # prepare + one full round, then the process "dies"
        job.run_stage()
    job.close()
    again = TuningJob.from_model(
        tiny_model, options=fast_options(), db_path=db, job_tag="job-7", measure_baselines=False
    )
    again.run_stage()  # prepare counts this job's records
    assert again.progress()["trials_done"] == 4
    again.run_all()
    assert again.result()["trials"] == 8


def test_random_cost_model(tiny_model, tmp_path, fast_options):
    job = TuningJob.from_model(
        tiny_model,
        options=fast_options(cost_model="random", trials=4),
        db_path=tmp_path / "r.db",
        measure_baselines=False,
    ).run_all()
    assert job.result()["trials"] == 4
