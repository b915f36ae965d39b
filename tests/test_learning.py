"""Learning across jobs: the shared cost model in the tuning database, and schedule
transfer between workloads of one structure (real TVM where it tunes; small models)."""

import json
import multiprocessing
import sqlite3

import numpy as np
import pytest

from simpletvm import costmodel
from simpletvm.costmodel import SharedModelStore
from simpletvm.coverage import ranked_samples
from simpletvm.database import SQLiteDatabase, connect
from simpletvm.engine import TuningJob

from .tvm_helpers import extract_task_mods, write_dense_model

TARGET = '{"kind":"llvm"}'


def _features(rng, count, groups=3):
    for i in range(count):
        yield f"g{i % groups}", rng.random((2, 164), dtype=np.float32), rng.random() + 0.1


def _store(tmp_path) -> SharedModelStore:
    connect(tmp_path / "t.db").close()
    return SharedModelStore(tmp_path / "t.db", TARGET)


def _add(store, rng, count):
    for group, feats, cost in _features(rng, count):
        store.add_features(group, [feats], np.array([cost], dtype="float32"))


def test_training_claim_is_exclusive_and_a_dead_holders_claim_expires(tmp_path):
    store = _store(tmp_path)
    assert store.claim("a") and not store.claim("b")
    store.release("b")  # not the holder: changes nothing
    assert not store.claim("b")
    store.release("a")
    assert store.claim("b")
    with sqlite3.connect(tmp_path / "t.db") as conn:  # b died long ago
        conn.execute("UPDATE cost_model_claims SET until = 0")
    assert store.claim("c") and not store.claim("a")


def test_the_model_carries_its_record_count_and_only_a_newer_one_replaces_it(tmp_path):
    store, rng = _store(tmp_path), np.random.default_rng(0)
    _add(store, rng, costmodel.MIN_TRAINING_ROWS - 1)
    assert store.train_and_save(threads=1) is None  # too little to learn from
    assert store.load() is None
    _add(store, rng, 1)
    stored = store.train_and_save(threads=1)
    assert stored["trained_on"] == costmodel.MIN_TRAINING_ROWS and store.pending() == 0
    booster, info = store.load()
    assert info["trained_on"] == stored["trained_on"] and booster.num_boosted_rounds() > 0
    assert store.train_and_save(threads=1) is None  # nothing new: the stored one stays
    _add(store, rng, 7)
    assert store.pending() == 7


def _train_concurrently(db_path, seed, barrier):
    store = SharedModelStore(db_path, TARGET)
    _add(store, np.random.default_rng(seed), 60)
    barrier.wait()
    model = costmodel.SharedCostModel(threads=1, store=store, train_every=1)
    model._retrain()
    return model.trainings


def test_jobs_training_at_once_leave_one_whole_model(tmp_path):
    connect(tmp_path / "t.db").close()
    ctx = multiprocessing.get_context("spawn")  # xgboost's OpenMP threads do not survive fork
    barrier = ctx.Manager().Barrier(4)
    with ctx.Pool(4) as pool:
        trainings = pool.starmap(_train_concurrently,
                                 [(tmp_path / "t.db", s, barrier) for s in range(4)])
    store = SharedModelStore(tmp_path / "t.db", TARGET)
    booster, info = store.load()  # loads: never half written
    assert info["trained_on"] == max(t["trained_on"] for ts in trainings for t in ts)
    assert 100 <= info["trained_on"] <= 240 and booster.num_boosted_rounds() > 0
    with sqlite3.connect(tmp_path / "t.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM cost_model_claims").fetchone()[0] == 0


class _Strategy:
    def __init__(self, samples):
        self.samples = samples

    def generate_measure_candidates(self):
        return list(self.samples)


class _Ctx:
    def __init__(self, samples):
        self.search_strategy = _Strategy(samples)


class _Model:
    """Scores candidates by a table (higher is faster)."""

    def __init__(self, scores, informed):
        self.scores, self.informed = scores, informed

    def predict(self, _ctx, candidates):
        return np.array([self.scores[c] for c in candidates])


def test_transferred_schedules_take_at_least_half_of_the_measured_places():
    seeds, samples = ["s1", "s2", "s3"], ["r1", "r2", "r3", "r4"]
    scores = {"s1": 0.1, "s2": 0.9, "s3": 0.2, "r1": 0.5, "r2": 0.95, "r3": 0.3, "r4": 0.0}
    # a trained model: the best-scored seeds, then the best-scored of the rest
    picked = ranked_samples(_Ctx(samples), _Model(scores, True), 4, seeded=seeds)
    assert picked == ["s2", "s3", "r2", "r1"]
    # an untrained model's scores are noise: seeds in their given order (best first)
    picked = ranked_samples(_Ctx(samples), _Model(scores, False), 3, seeded=seeds)
    assert picked[:2] == ["s1", "s2"]
    # no seeds: the samples by score, as before transfer existed
    assert ranked_samples(_Ctx(samples), _Model(scores, True), 2) == ["r2", "r1"]


@pytest.fixture(scope="module")
def dense_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    return (write_dense_model(root / "a.onnx", inputs=64, outputs=64),
            write_dense_model(root / "b.onnx", inputs=96, outputs=48, seed=1))


@pytest.mark.slow
def test_structure_key_ignores_shapes_but_not_operators(dense_models, cnn_model):
    from simpletvm.transfer import structure_key

    _, (a,) = extract_task_mods(dense_models[0])
    _, (b,) = extract_task_mods(dense_models[1])
    _, cnn = extract_task_mods(cnn_model)
    assert structure_key(a) == structure_key(b)
    assert structure_key(a) not in {structure_key(m) for m in cnn}


def _tuned_db(model, db, **options):
    """``model`` tuned into a fresh database ``db``: 24 measurements of its one task."""
    from simpletvm.options import SHRUNK_SEARCH, TuningOptions

    options = TuningOptions(trials=24, per_round=8, seed=1, search_threads=1,
                            builder_workers=1, **SHRUNK_SEARCH, **options)
    TuningJob.from_model(model, options=options, db_path=db, measure_baselines=False).run_all()
    return db


@pytest.fixture(scope="module")
def warm_db(dense_models, tmp_path_factory):
    """Model a tuned as jobs tune it (weights' layout rewritten by the schedules)."""
    return _tuned_db(dense_models[0], tmp_path_factory.mktemp("warm") / "warm.db")


@pytest.fixture(scope="module")
def plain_db(dense_models, tmp_path_factory):
    """Model a tuned with the weights' layout kept, so its kernels take the plain weights."""
    return _tuned_db(dense_models[0], tmp_path_factory.mktemp("plain") / "plain.db",
                     layout_rewrite=False)


def _tiles_fit(trace, mod) -> list[bool]:
    """For each tile split of the trace applied to ``mod``: whether its factors
    multiply to the loop's extent."""
    from tvm.s_tir import Schedule

    sch, fits = Schedule(mod), []

    def provider(inst, inputs, _attrs, decision):
        if inst.kind.name == "SamplePerfectTile":
            extent = sch.get(inputs[0]).extent.value
            fits.append(int(np.prod([int(f) for f in decision])) == extent)
        return decision

    trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=provider)
    return fits


@pytest.mark.slow
def test_a_trace_replays_on_another_shape_with_its_tiles_resampled(dense_models, plain_db):
    import tvm
    import tvm_ffi
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import Workload

    from simpletvm.coverage import coverage_context
    from simpletvm.transfer import replay

    spec, (a,) = extract_task_mods(dense_models[0], "llvm")  # the warm job's target
    _, (b,) = extract_task_mods(dense_models[1], "llvm")
    db = SQLiteDatabase(plain_db, target_key=spec.key)
    (similar,) = db.similar_workloads(b, limit=4)
    assert tvm_ffi.structural_equal(similar.mod, a)
    records = db.get_top_k(Workload(a), 8)
    # replayed as recorded, tile sizes chosen for 64x64 do not divide 96x48 exactly
    assert not all(all(_tiles_fit(r.trace, b)) for r in records)
    ctx = coverage_context(b, spec.tvm_target(), task_name="b", threads=1, seed=1, samples=4,
                           database=db, cost_model=None)
    replayed = [replay(r.trace, b, list(ctx.space_generator.postprocs), seed=i)
                for i, r in enumerate(records)]
    assert all(s is not None for s in replayed)
    for sch in replayed:  # re-sampled where they did not fit
        fits = _tiles_fit(sch.trace, b)
        assert fits and all(fits)
    # each replayed schedule computes relu(x @ w + b) on the new shape
    rng = np.random.default_rng(0)
    x, w, bias = (rng.standard_normal(s).astype("float32") for s in [(1, 96), (96, 48), (48,)])
    want = np.maximum(x @ w + bias, 0)
    for sch in replayed[:3]:
        lib = tvm.compile(sch.mod, target=spec.tvm_target())
        shapes = [tuple(int(d) for d in info.shape)
                  for info in ArgInfo.from_prim_func(sch.mod["main"])]
        by_shape = {(1, 96): x, (96, 48): w, (48,): bias}
        args = [tvm.runtime.tensor(np.zeros((1, 48), "float32") if i == len(shapes) - 1
                                   else by_shape[shape]) for i, shape in enumerate(shapes)]
        lib["main"](*args)
        np.testing.assert_allclose(args[-1].numpy(), want, rtol=1e-4, atol=1e-4)


def _copy_db(src, dst) -> None:
    """A consistent copy (the WAL included: the fixture's job may still hold it open)."""
    with sqlite3.connect(src) as source, sqlite3.connect(dst) as copy:
        source.backup(copy)


def _options(**kw):
    from simpletvm.options import SHRUNK_SEARCH, TuningOptions

    base = dict(trials=8, per_round=4, seed=2, coverage_measured=4, search_threads=1,
                builder_workers=1, shared_model_every=8, **SHRUNK_SEARCH)
    return TuningOptions(**{**base, **kw})


@pytest.mark.slow
def test_a_new_job_learns_from_the_database_and_opting_out_restores_todays_behaviour(
        dense_models, warm_db, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from simpletvm.cli import app

    monkeypatch.setattr(costmodel, "MIN_TRAINING_ROWS", 8)
    db = tmp_path / "copy.db"
    _copy_db(warm_db, db)
    warm = TuningJob.from_model(dense_models[1], options=_options(), db_path=db,
                                measure_baselines=False).run_all().result()
    # the warm database's 24 measurements were past the threshold: this job trained the
    # shared model in its update stage, and its own task was seeded from model a's
    assert warm["shared_model"]["trainings"][0]["trained_on"] >= 24
    assert warm["transfer"]["tasks"] == 1 and warm["transfer"]["measured"] >= 2
    # and they ran: measured in the weight layout their schedule rewrote (none failed)
    with sqlite3.connect(db) as conn:
        failed = conn.execute("SELECT COUNT(*) FROM records WHERE mean_secs >= 1e9").fetchone()
    assert failed == (0,)
    stats = json.loads(CliRunner().invoke(app, ["db", "stats", "--db", str(db),
                                                "--json"]).stdout)
    (model,) = stats["shared_models"]
    assert model["trained_on"] == warm["shared_model"]["trainings"][-1]["trained_on"]
    assert model["features"] == 24 + warm["trials"]
    # a later job loads it; with both opted out, a job neither loads nor transfers
    later = TuningJob.from_model(dense_models[0], options=_options(trials=4), db_path=db,
                                 measure_baselines=False).run_all().result()
    assert later["shared_model"]["loaded_records"] == model["trained_on"]
    _copy_db(warm_db, tmp_path / "cold.db")
    cold = TuningJob.from_model(dense_models[1], options=_options(shared_model=False,
                                                                 transfer=False),
                                db_path=tmp_path / "cold.db",
                                measure_baselines=False).run_all().result()
    assert cold["shared_model"]["loaded_records"] == 0 and not cold["shared_model"]["enabled"]
    assert cold["transfer"] == {"tasks": 0, "candidates": 0, "measured": 0}


@pytest.mark.slow
def test_an_sla_met_by_transferred_schedules_needs_no_trials(dense_models, warm_db, tmp_path):
    db = tmp_path / "copy.db"
    _copy_db(warm_db, db)
    job = TuningJob.from_model(dense_models[1], options=_options(trials=64, sla_ms=1e5),
                               db_path=db, measure_baselines=False).run_all()
    result = job.result()
    assert result["stop_reason"] == "sla met" and result["trials"] == 0
    # the build that met it used the transferred schedule, and so does the export
    assert result["transfer"]["tasks"] == 1 and job._apply_transferred
