"""superb's side of the scheduler: plain imports of tvmsched, and what its typed records
(JobRecord, StageRow, Usage) become in a point's outcome."""

from __future__ import annotations

from pathlib import Path

import pytest

from superb.matrix import RunPoint
from superb.outcome import PointFailed
from superb.schedpoint import collect
from tvmsched import api
from tvmsched.models import JobState, Resource, ResourceKind
from tvmsched.registry import Registry
from tvmsched.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent
MOCK = "rounds=2,search=1,build=1,measure=1,update=0.5,finalize=1,device=cpu"
RESOURCES = [Resource("cpu", ResourceKind.CPU, 2, False),
             Resource("cpu-device", ResourceKind.CPU_DEVICE, 1, True)]  # fmt: skip


def test_no_package_reaches_another_through_importlib():
    for package in ("sched", "superb"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert "import_module(" not in text and "__import__(" not in text, path


def _point(jobs: int) -> RunPoint:
    return RunPoint(experiment="e", models=(), mock=MOCK, target="llvm", trials=8,
                    per_round=4, strategy="interleaved", jobs=jobs, seed=0, repeat=0)  # fmt: skip


def test_a_finished_batch_becomes_the_points_outcome(tmp_path):
    db = tmp_path / "sched.db"
    simulate([MOCK] * 3, strategy="interleaved", resources=RESOURCES, db_path=db)
    ids = [job["id"] for job in api.jobs(db)]
    outcome = collect(_point(3), api.jobs(db), api.events(db), api.utilisation(db),
                      api.makespan(db), ids, wall_s=1.0)  # fmt: skip
    assert [j.status for j in outcome.jobs] == ["done"] * 3
    assert all(j.tuned_ms is None for j in outcome.jobs)  # a MockJob's latency is made up
    assert outcome.trials == 3 * 2 * 16 and outcome.makespan_s == api.makespan(db)
    assert min(e.start for e in outcome.events) == 0.0
    measures = [e for e in outcome.events if e.kind == "measure" and e.resource == "cpu"]
    assert measures and all(e.amount == 2 for e in measures)  # it held every slot
    assert outcome.resources["cpu-device"]["busy"] == api.utilisation(db)["cpu-device"]["busy"]
    assert outcome.jobs[0].stage_seconds["search"] == pytest.approx(2.0)


def test_a_job_that_did_not_finish_fails_the_point_with_its_state(tmp_path):
    db = tmp_path / "sched.db"
    simulate([MOCK], strategy="interleaved", resources=RESOURCES, db_path=db)
    queued = Registry(db).submit("mock", {"mock": MOCK})
    Registry(db).cancel(queued)
    ids = [job["id"] for job in api.jobs(db)]
    assert api.job(db, queued)["state"] is JobState.CANCELLED
    with pytest.raises(PointFailed, match="job 1 \\(mock\\) cancelled: no error given") as failed:
        collect(_point(2), api.jobs(db), api.events(db), api.utilisation(db), api.makespan(db),
                ids, wall_s=1.0)  # fmt: skip
    assert [j.status for j in failed.value.outcome.jobs] == ["done", "cancelled"]
