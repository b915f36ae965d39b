"""The shared cost model: one XGBoost model per target, kept in the tuning database.

MetaSchedule's ``XGBModel`` starts empty in every job and learns only from that job's
measurements (and the same workload's old records). Here every measured candidate's
features are stored in the tuning database (``cost_features``), and one model per
target is trained on all of them, across workloads, and stored beside them
(``cost_models``). A new job loads that model (only the booster: milliseconds) and
predicts with it from its first round; once the job's own model has enough data, the
two predictions are averaged.

The shared model is retrained in the update stage of the job whose records take the
number of unused features past ``shared_model_every``. One job trains at a time (a claim
row with a lease, taken without waiting: a job that finds it taken goes on), and the new
model replaces the old one in one transaction, so readers see the old or the new model,
never half of one. Nothing in the file is unpickled or executed: features are float32
arrays and the model is XGBoost's own UBJSON format.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.cost_model import PyCostModel
from tvm.s_tir.meta_schedule.cost_model.xgb_model import FeatureGroup, XGBModel
from tvm.s_tir.meta_schedule.utils import shash2hex

from . import sqlite

# A crashed trainer's claim expires after this long; training takes seconds.
CLAIM_LEASE_SECONDS = 600.0
# MetaSchedule predicts at random below this many samples; so does a shared model
MIN_TRAINING_ROWS = 100


class SharedModelStore:
    """The ``cost_features`` and ``cost_models`` rows of one target in one database."""

    def __init__(self, db_path: str | Path, target_key: str) -> None:
        from .database import connect

        self.db_path = str(db_path)
        self.target = target_key
        self._conn = connect(self.db_path)
        self._pid = os.getpid()

    def conn(self):
        from .database import connect

        if self._pid != os.getpid():  # a forked child opens its own connection
            self._conn, self._pid = connect(self.db_path), os.getpid()
        return self._conn

    def load(self) -> tuple[Any, dict] | None:
        """The stored booster and what it was trained on, or None."""
        import xgboost as xgb

        row = self.conn().execute(
            "SELECT booster, trained_on, last_feature_id FROM cost_models WHERE target = ?",
            (self.target,)).fetchone()
        if row is None:
            return None
        booster = xgb.Booster()
        booster.load_model(bytearray(row[0]))
        return booster, {"trained_on": row[1], "last_feature_id": row[2]}

    def add_features(self, group_hash: str, features: list[np.ndarray],
                     costs: np.ndarray) -> None:
        now = time.time()
        rows = [(self.target, group_hash, int(f.shape[0]), int(f.shape[1]),
                 np.ascontiguousarray(f, dtype="<f4").tobytes(), float(c), now)
                for f, c in zip(features, costs) if f.ndim == 2 and f.shape[0] > 0]
        if not rows:
            return
        with sqlite.immediate(self.conn()) as conn:
            conn.executemany(
                "INSERT INTO cost_features (target, group_hash, n_rows, n_cols, features, "
                "mean_secs, created) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def pending(self) -> int:
        """Feature rows newer than the stored model (all of them when there is none)."""
        return self.conn().execute(
            "SELECT COUNT(*) FROM cost_features WHERE target = ? AND id > COALESCE("
            "(SELECT last_feature_id FROM cost_models WHERE target = ?), 0)",
            (self.target, self.target)).fetchone()[0]

    def claim(self, holder: str) -> bool:
        """Take the right to train, without waiting; False if another job holds it."""
        now = time.time()
        with sqlite.immediate(self.conn()) as conn:
            cur = conn.execute(
                "INSERT INTO cost_model_claims (target, holder, until) VALUES (?, ?, ?) "
                "ON CONFLICT(target) DO UPDATE SET holder = excluded.holder, "
                "until = excluded.until WHERE cost_model_claims.until < ?",
                (self.target, holder, now + CLAIM_LEASE_SECONDS, now))
            return cur.rowcount == 1

    def release(self, holder: str) -> None:
        with sqlite.immediate(self.conn()) as conn:
            conn.execute("DELETE FROM cost_model_claims WHERE target = ? AND holder = ?",
                         (self.target, holder))

    def training_data(self) -> tuple[OrderedDict, int, int]:
        """Every stored feature of this target, grouped by workload as XGBModel groups
        them; the row count and the last row id."""
        groups: dict[str, tuple[list, list]] = OrderedDict()
        last, count = 0, 0
        for fid, group, n_rows, n_cols, blob, secs in self.conn().execute(
                "SELECT id, group_hash, n_rows, n_cols, features, mean_secs FROM cost_features "
                "WHERE target = ? ORDER BY id", (self.target,)):
            feats, costs = groups.setdefault(group, ([], []))
            feats.append(np.frombuffer(blob, dtype="<f4").reshape(n_rows, n_cols))
            costs.append(secs)
            last, count = fid, count + 1
        data = OrderedDict((g, FeatureGroup(g, f, np.array(c, dtype="float32")))
                           for g, (f, c) in groups.items())
        return data, count, last

    def train_and_save(self, *, threads: int) -> dict | None:
        """Train on every stored feature of the target and store the model, unless a
        model trained on more is already there. Returns what was stored, or None."""
        started = time.time()
        data, count, last = self.training_data()
        if count < MIN_TRAINING_ROWS:
            return None
        model = XGBModel(num_tuning_cores=threads, adaptive_training=False)
        xs, ys = [], []
        with np.errstate(divide="ignore", invalid="ignore"):
            for group in data.values():
                xs.extend(group.features)
                ys.append(np.divide(group.min_cost, group.costs,
                                    out=np.zeros_like(group.costs), where=group.costs != 0))
        model._train(xs=xs, ys=np.concatenate(ys))  # noqa: SLF001 - XGBModel's trainer
        blob = bytes(model.booster.save_raw(raw_format="ubj"))
        seconds = time.time() - started
        with sqlite.immediate(self.conn()) as conn:
            cur = conn.execute(
                "INSERT INTO cost_models (target, trained_on, last_feature_id, booster, "
                "train_seconds, trained_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(target) DO UPDATE SET trained_on = excluded.trained_on, "
                "last_feature_id = excluded.last_feature_id, booster = excluded.booster, "
                "train_seconds = excluded.train_seconds, trained_at = excluded.trained_at "
                "WHERE excluded.last_feature_id > cost_models.last_feature_id",
                (self.target, count, last, blob, seconds, time.time()))
        if cur.rowcount != 1:
            return None
        return {"trained_on": count, "last_feature_id": last, "seconds": seconds}


def model_stats(conn) -> list[dict]:
    """Per target: the shared model's size, what it was trained on, and what is new."""
    rows = conn.execute(
        "SELECT f.target, COUNT(f.id), m.trained_on, m.last_feature_id, "
        "LENGTH(m.booster), m.train_seconds, m.trained_at "
        "FROM cost_features f LEFT JOIN cost_models m ON m.target = f.target "
        "GROUP BY f.target, m.trained_on, m.last_feature_id, m.booster, m.train_seconds, "
        "m.trained_at ORDER BY f.target").fetchall()
    out = []
    for target, features, trained_on, last, size, seconds, when in rows:
        pending = conn.execute("SELECT COUNT(*) FROM cost_features WHERE target = ? AND id > ?",
                               (target, last or 0)).fetchone()[0]
        out.append({"target_config": target, "features": features, "trained_on": trained_on,
                    "pending": pending, "model_bytes": size, "train_seconds": seconds,
                    "trained_at": when})
    return out


@derived_object
class SharedCostModel(PyCostModel):
    """MetaSchedule's XGBModel for this job, with the target's shared model beside it.

    ``store=None`` (no database): exactly the job-local XGBModel. ``use_shared=False``
    (``--no-shared-model``): the local model alone, but measured features are still
    stored so that later jobs can learn from them.
    """

    def __init__(self, *, threads: int, store: SharedModelStore | None = None,
                 use_shared: bool = True, train_every: int = 256) -> None:
        super().__init__()
        self.local = XGBModel(num_tuning_cores=threads)
        self.threads = threads
        self.store = store
        self.use_shared = use_shared and store is not None
        self.train_every = train_every
        self.shared = None
        self.shared_info: dict | None = None
        self.trainings: list[dict] = []
        self.load_seconds = 0.0
        if self.use_shared:
            self.reload()
        # what the job started from (a retrain in this job reloads a newer model)
        self.loaded_records = self.shared_info["trained_on"] if self.shared_info else 0

    def reload(self) -> None:
        started = time.time()
        loaded = self.store.load()
        if loaded is not None and loaded[1]["trained_on"] >= MIN_TRAINING_ROWS:
            self.shared, self.shared_info = loaded
        self.load_seconds = time.time() - started

    @property
    def informed(self) -> bool:
        """Whether predictions come from a trained model (shared or local), not chance."""
        return self.shared is not None or self._local_ready()

    def _local_ready(self) -> bool:
        return (self.local.booster is not None
                and self.local.data_size >= self.local.num_warmup_samples)

    def load(self, path: str) -> None:
        self.local.load(path)

    def save(self, path: str) -> None:
        self.local.save(path)

    def warm(self, context, candidates, results) -> None:
        """Train the local model on old records (already stored: not stored again)."""
        self.local.update(context, candidates, results)

    def update(self, context, candidates, results) -> None:
        group_hash = shash2hex(context.mod)
        group = self.local.data.get(group_hash)
        before = len(group.features) if group is not None else 0
        self.local.update(context, candidates, results)
        group = self.local.data.get(group_hash)
        if self.store is None or group is None:
            return
        self.store.add_features(group_hash, group.features[before:], group.costs[before:])
        if self.use_shared and self.store.pending() >= self.train_every:
            self._retrain()

    def _retrain(self) -> None:
        holder = f"{os.getpid()}:{id(self)}"
        if not self.store.claim(holder):
            return  # another job is training: go on with the model we have
        try:
            stored = self.store.train_and_save(threads=self.threads)
        finally:
            self.store.release(holder)
        if stored is not None:
            self.trainings.append(stored)
            self.reload()

    def predict(self, context, candidates) -> np.ndarray:
        local_ready = self._local_ready()
        if self.shared is None or not self.use_shared:
            return self.local.predict(context, candidates)
        xs = [x.numpy().astype("float32")
              for x in self.local.extractor.extract_from(context, candidates)]
        predictions = [self._shared_predict(xs)]
        if local_ready:
            predictions.append(self.local._predict(xs))  # noqa: SLF001
        return np.mean(predictions, axis=0).astype("float64")

    def _shared_predict(self, xs: list[np.ndarray]) -> np.ndarray:
        from tvm.s_tir.meta_schedule.cost_model.xgb_model import PackSum

        packed = PackSum(xs=xs, ys=None)
        return packed.predict_with_score(self.shared.predict(packed.dmatrix))

    def summary(self) -> dict:
        """For the job's result: what the shared model was and what this job added."""
        return {"enabled": self.use_shared,
                "loaded_records": self.loaded_records,
                "load_seconds": round(self.load_seconds, 3),
                "trainings": list(self.trainings)}
