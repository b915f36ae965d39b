"""A point with several jobs (or MockJobs): a private sched daemon on its own database.

Each point gets a fresh daemon and registry in its work dir, so strategies never share
state or history between points, and the registry's event log gives the timeline,
utilisation and makespan of exactly this batch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tvmsched import api
from tvmsched.models import JobRecord, JobState, StageRow, Usage

from .direct import Interrupted, ProgressFn, StopFn, kill_tree, model_path
from .matrix import RunPoint
from .outcome import Event, PointFailed, PointOutcome, job_outcome
from .timeline import stage_seconds

SCHED_DB = "sched.db"
WAIT_SLICE_S = 1.0
STOP_TIMEOUT_S = 30.0


def stop_daemon(db: str, pid: int | None = None) -> None:
    """Stop a point's daemon; if it will not stop in time, kill it and its runners."""
    try:
        api.stop_daemon(db, timeout=STOP_TIMEOUT_S)
        return
    except api.DaemonError:  # not running, or stuck: check below
        pass
    pid = pid or api.daemon_pid(db)
    if pid and pid > 0:
        kill_tree(pid)


def stop_leftover_daemon(work_dir: str | Path | None) -> None:
    """Stop the daemon of an attempt whose superb process died (best effort)."""
    if work_dir and (Path(work_dir) / SCHED_DB).exists():
        stop_daemon(str(Path(work_dir) / SCHED_DB))


def run_sched_point(
    point: RunPoint, work_dir: Path, *, progress: ProgressFn, should_stop: StopFn
) -> PointOutcome:
    db = str(work_dir / SCHED_DB)
    started = time.perf_counter()
    progress(None, f"starting a sched daemon ({point.strategy})")
    pid = api.start_daemon(db, strategy=point.strategy)
    try:
        ids = [api.submit(db, **_submission(point, index, work_dir)) for index in range(point.jobs)]
        _wait_all(db, ids, point, progress=progress, should_stop=should_stop, started=started)
        return collect(
            point,
            api.jobs(db),
            api.events(db),
            api.utilisation(db),
            api.makespan(db),
            ids,
            wall_s=time.perf_counter() - started,
        )
    finally:
        stop_daemon(db, pid)


def _submission(point: RunPoint, index: int, work_dir: Path) -> dict[str, Any]:
    """``api.submit``'s arguments for job ``index``: a JobSpec, or a MockJob spec."""
    args: dict[str, Any] = {"name": f"{point.experiment}-{index}-{point.job_labels()[index]}"}
    if point.mock is not None:
        args["mock"] = point.mock
    else:
        args["job"] = point.job_spec(
            index,
            model_path(point.models[index], work_dir),
            output=str(work_dir / f"job{index}.so"),
            tuning_db=str(work_dir / f"job{index}.tuning.db"),
        )
    return args


def _wait_all(
    db: str,
    ids: list[int],
    point: RunPoint,
    *,
    progress: ProgressFn,
    should_stop: StopFn,
    started: float,
) -> None:
    while True:
        if should_stop():
            raise Interrupted()
        elapsed = time.perf_counter() - started
        if point.timeout and elapsed > point.timeout:
            raise PointFailed(f"timeout: the point ran longer than {point.timeout:g} s")
        try:
            api.wait(db, ids, timeout=WAIT_SLICE_S)
            return
        except TimeoutError:
            progress(*_progress_of(api.jobs(db), ids))


def _progress_of(jobs: list[JobRecord], ids: list[int]) -> tuple[float | None, str]:
    mine = [job for job in jobs if job["id"] in ids]
    done = sum(job["progress"].get("trials_done") or 0 for job in mine)
    total = sum(job["progress"].get("trials_total") or 0 for job in mine)
    finished = sum(job["state"].terminal for job in mine)
    fraction = done / total if total else None
    return fraction, f"{finished}/{len(ids)} jobs finished, {done}/{total} trials"


# what a job's result says about the tuned model's speed (a MockJob's are synthetic)
_LATENCIES = ("tuned_ms", "tuned", "untuned_ms", "onnxruntime_ms", "convergence")


def collect(
    point: RunPoint,
    jobs: list[JobRecord],
    rows: list[StageRow],
    usage: dict[str, Usage],
    makespan_s: float,
    ids: list[int],
    *,
    wall_s: float,
) -> PointOutcome:
    """Turn sched's jobs, stage rows and utilisation into the point's outcome."""
    index_of = {job_id: index for index, job_id in enumerate(ids)}
    timeline = _timeline(rows, index_of)
    outcome = PointOutcome(
        wall_s=wall_s,
        makespan_s=makespan_s,
        tuning_s=makespan_s,
        events=timeline,
        resources={name: {"busy": use["busy"], "idle": use["idle"]} for name, use in usage.items()},
    )
    failures = []
    for job in sorted((j for j in jobs if j["id"] in index_of), key=lambda j: j["id"]):
        index = index_of[job["id"]]
        one, convergence = _job(point, index, job, stage_seconds(timeline, index))
        outcome.jobs.append(one)
        outcome.convergence += convergence
        if job["state"] is not JobState.DONE:
            failures.append(
                f"job {index} ({one.model}) {job['state']}: {job['error'] or 'no error given'}"
            )
    outcome.summarise_jobs()
    if len(outcome.jobs) != len(ids):
        failures.append(f"sched reported {len(outcome.jobs)} of {len(ids)} jobs")
    if failures:
        raise PointFailed("; ".join(failures), outcome)
    return outcome


def _timeline(rows: list[StageRow], index_of: dict[int, int]) -> list[Event]:
    """The point's stage rows as events, in seconds since its first stage started."""
    origin = min((r["start"] for r in rows), default=0.0)
    return [
        Event(index_of[r["job_id"]], r["stage"], r["resource"], r["start"] - origin,
              r["end"] - origin, r["amount"])
        for r in rows
        if r["job_id"] in index_of
    ]  # fmt: skip


def _job(point: RunPoint, index: int, job: JobRecord, stages: dict[str, float]):
    """One job's outcome and convergence; a MockJob's latencies are made up: never kept."""
    result: dict[str, Any] = job["result"] or {}
    if point.mock is not None:
        result = {k: v for k, v in result.items() if k not in _LATENCIES}
    return job_outcome(
        index,
        point.job_labels()[index],
        result,
        point.baselines,
        status=job["state"].value,
        error=job["error"],
        stage_seconds=stages,
    )
