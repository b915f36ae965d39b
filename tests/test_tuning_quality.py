"""What makes a tuned model good: coverage of every task, the time budget, never worse
than the default schedule, and the output check (real TVM, small models, shrunk search)."""

import time

import numpy as np
import pytest

from simpletvm import finalize
from simpletvm.bench import LatencyStats
from simpletvm.check import OutputMismatchError, compare
from simpletvm.compile import compile_untuned
from simpletvm.engine import TuningJob
from simpletvm.samples import write_sample
from simpletvm.stages import StageKind
from simpletvm.threads import runtime_threads


def test_compare_is_normwise_and_catches_a_wrong_output():
    want = [np.array([1.0, -2.0, 0.0], dtype=np.float32)]
    close = compare([want[0] + 1e-5], want, rtol=1e-3, atol=1e-4)
    assert close.ok and close.max_abs_err == pytest.approx(1e-5, rel=1e-2)
    wrong = compare([want[0] * 1.1], want, rtol=1e-3, atol=1e-4)
    assert not wrong.ok and wrong.max_rel_err == pytest.approx(0.1, rel=1e-3)
    assert not compare([np.array([np.nan, 0, 0])], want, rtol=1, atol=1).ok
    assert not compare([want[0][:2]], want, rtol=1, atol=1).ok  # wrong shape


@pytest.mark.slow
def test_coverage_reaches_every_task_before_any_search_round(cnn_model, tmp_path,
                                                             fast_options):
    job = TuningJob.from_model(cnn_model, options=fast_options(trials=None, coverage_measured=2,
                                                                coverage_samples=16,
                                                                per_round=4),
                               db_path=tmp_path / "t.db", measure_baselines=False)
    rounds = []
    # run until two evolutionary rounds have been asked for: the coverage is all done
    while (request := job.next_stage()) is not None:
        if request.kind == StageKind.SEARCH:
            rounds.append((request.info["task"], request.info["coverage"]))
            if sum(not is_coverage for _, is_coverage in rounds) == 2:
                break
        job.run_stage()
    job.close()
    tasks = job.tasks
    coverage = [name for name, is_coverage in rounds if is_coverage]
    # the floor: one coverage round per task, all before the first evolutionary round
    assert sorted(coverage) == sorted(t.name for t in tasks)
    assert all(is_coverage for _, is_coverage in rounds[:len(tasks)])
    assert len(rounds) == len(tasks) + 2 and not any(c for _, c in rounds[len(tasks):])
    # heaviest task (weight x FLOPs) first
    by_work = sorted(tasks, key=lambda t: -t.weight * t.flops)
    assert coverage[0] == by_work[0].name
    # every task has its default time and at least one measured record
    assert all(t.default_secs is not None and t.trials_done >= 1 for t in tasks)
    # the default budget is sized from the task count
    assert job.trials >= len(tasks) * 2 and job.coverage["tasks"] == len(tasks)


@pytest.mark.slow
def test_time_budget_stops_on_time(cnn_model, tmp_path, fast_options):
    budget = 10.0
    job = TuningJob.from_model(cnn_model, options=fast_options(trials=None,
                                                                time_budget_seconds=budget),
                               db_path=tmp_path / "t.db", measure_baselines=False)
    started = time.time()
    while (request := job.next_stage()) is not None:
        if request.kind == StageKind.COMPILE:
            stopped = time.time() - started
        job.run_stage()
    rounds = job._round_seconds[True] + job._round_seconds[False]
    assert job.stop_reason == "time budget"
    assert budget * 0.5 <= stopped <= budget + max(rounds) + 1.0
    assert job.result()["trials"] > 0


@pytest.mark.slow
def test_a_record_slower_than_the_default_schedule_is_not_applied(tiny_model, tmp_path,
                                                                 fast_options):
    db = tmp_path / "t.db"
    first = TuningJob.from_model(tiny_model, options=fast_options(), db_path=db,
                                 measure_baselines=False).run_all()
    (task,) = first.tasks
    assert task.default_secs is not None and first.kept_default in ([], [task.name])
    # make the default look faster than every record: the build must not apply them
    _, mod = first._contexts[0]
    first.database.record_default_seconds(mod, task.best / 100)
    again = TuningJob.from_model(tiny_model, options=fast_options(trials=0), db_path=db,
                                 measure_baselines=False).run_all()
    assert again.kept_default == [task.name]
    assert again.result()["tasks_kept_default"] == [task.name]
    assert len(again.apply_database().get_all_tuning_records()) == 0
    third = TuningJob.from_model(tiny_model, options=fast_options(trials=0), db_path=db,
                                 measure_baselines=False)
    third.run_stage()  # prepare reads the default time from the database
    third._tasks[0].default_secs = task.best * 100
    assert len(third.apply_database().get_all_tuning_records()) == 1


@pytest.mark.slow
def test_the_untuned_build_is_exported_when_it_is_faster(tiny_model, tmp_path, fast_options,
                                                        monkeypatch):
    job = TuningJob.from_model(tiny_model, options=fast_options(), db_path=tmp_path / "t.db",
                               output=tmp_path / "tiny.so")
    while job.next_stage().kind != StageKind.FINALIZE:
        job.run_stage()
    compiled = job._compiled

    def fake_bench(executable, device_type, feeds, **kwargs):
        ms = 1.0 if executable is compiled.untuned else 2.0
        return LatencyStats(ms, ms, 0.0, ms, 3)

    asked = {}

    def fake_pair(executable, device_type, feeds, model_bytes, **kwargs):
        asked.update(kwargs)
        return fake_bench(executable, device_type, feeds), LatencyStats(0.5, 0.5, 0.0, 0.5, 3)

    monkeypatch.setattr(finalize.bench, "bench_tvm", fake_bench)
    monkeypatch.setattr(finalize.bench, "time_against_onnxruntime", fake_pair)
    job.run_stage()
    result = job.result()
    assert result["tuned_ms"] == 2.0 and result["untuned_ms"] == 1.0
    assert result["exported"] == "untuned" and result["output_check"]["ok"]
    assert job.executable is compiled.untuned
    assert (tmp_path / "tiny.so").exists()
    # onnxruntime is timed on as many threads as TVM's runtime uses, and the result says so
    assert asked["threads"] == result["threads"] == runtime_threads()


@pytest.mark.slow
def test_the_output_check_fails_on_a_wrong_module(tiny_model, tmp_path, fast_options):
    other = write_sample("tiny", tmp_path / "other.onnx", seed=5)  # same shapes, other weights
    wrong = TuningJob.from_model(other, options=fast_options(trials=0))
    wrong.run_stage()  # prepare: imports the other model
    wrong_module = compile_untuned(wrong.relax_mod, wrong.target)
    job = TuningJob.from_model(tiny_model, options=fast_options(), db_path=tmp_path / "t.db",
                               output=tmp_path / "tiny.so", measure_baselines=False)
    while job.next_stage().kind != StageKind.FINALIZE:
        job.run_stage()
    job._compiled.tuned = wrong_module
    with pytest.raises(OutputMismatchError, match="differ from onnxruntime"):
        job.run_stage()
    assert not (tmp_path / "tiny.so").exists()
    assert (tmp_path / "tiny.so.rejected").exists()


@pytest.mark.slow
@pytest.mark.parametrize("failures", [1, 99])
def test_a_coverage_batch_that_fails_to_replay_is_sampled_again(tiny_model, tmp_path,
                                                                fast_options, monkeypatch,
                                                                failures):
    """ReplayTrace fails a whole batch when one sampled trace cannot be replayed: the round
    samples again with another seed, and after three failures measures only what was
    transferred (nothing here) beside the default schedule, and the job goes on."""
    from simpletvm import engine

    real, calls = engine.ranked_samples, []

    def flaky(ctx, cost_model, keep, *, seeded=(), sample=True):
        calls.append((id(ctx), sample))
        if sample and len(calls) <= failures:
            raise RuntimeError("The block no longer exists in the IRModule")
        return real(ctx, cost_model, keep, seeded=seeded, sample=sample)

    monkeypatch.setattr(engine, "ranked_samples", flaky)
    job = TuningJob.from_model(tiny_model, options=fast_options(trials=4, per_round=4),
                               db_path=tmp_path / "t.db", measure_baselines=False)
    job.run_stage()  # prepare
    assert job.next_stage().info["coverage"]
    job.run_stage()  # the coverage search
    sampled = [ctx for ctx, sample in calls if sample]
    if failures == 1:
        assert len(sampled) == 2 and sampled[0] != sampled[1]  # a fresh context, reseeded
        assert job._round.candidates  # the second batch was sampled
    else:
        assert len(sampled) == engine.COVERAGE_ATTEMPTS and calls[-1][1] is False
        assert job._round.candidates == [] and job._round.default is not None
    job.run_all()
    assert job.result()["trials"] >= 0 and job.executable is not None
