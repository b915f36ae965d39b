"""A point with several jobs (or MockJobs): a private sched daemon on its own database.

Each point gets a fresh daemon and registry in its work dir, so strategies never share
state or history between points, and the registry's event log gives the timeline,
utilisation and makespan of exactly this batch.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Any

from . import schedapi
from .direct import Interrupted, ProgressFn, StopFn, kill_tree, model_path
from .matrix import RunPoint
from .outcome import Event, PointFailed, PointOutcome, job_outcome
from .timeline import stage_seconds

SCHED_DB = "sched.db"
TERMINAL = {"done", "failed", "cancelled"}
WAIT_SLICE_S = 1.0
STOP_TIMEOUT_S = 30.0


def _text(value: Any) -> str:
    return str(value.value if isinstance(value, Enum) else value)


def stop_daemon(api, db: str, pid: int | None = None) -> None:
    """Stop a point's daemon; if it will not stop in time, kill it and its runners."""
    try:
        api.stop_daemon(db, timeout=STOP_TIMEOUT_S)
        return
    except Exception:  # noqa: BLE001 - not running, or stuck: check below
        pass
    try:
        pid = pid or api.daemon_pid(db)
    except Exception:  # noqa: BLE001 - no pid file: nothing left to stop
        return
    if pid and pid > 0:
        kill_tree(pid)


def stop_leftover_daemon(work_dir: str | Path | None) -> None:
    """Stop the daemon of an attempt whose superb process died (best effort)."""
    if not work_dir or not (Path(work_dir) / SCHED_DB).exists():
        return
    try:
        api = schedapi.module("api")
    except schedapi.SchedUnavailable:
        return
    stop_daemon(api, str(Path(work_dir) / SCHED_DB))


def run_sched_point(
    point: RunPoint, work_dir: Path, *, progress: ProgressFn, should_stop: StopFn
) -> PointOutcome:
    api = schedapi.module("api")
    db = str(work_dir / SCHED_DB)
    started = time.perf_counter()
    progress(None, f"starting a sched daemon ({point.strategy})")
    pid = api.start_daemon(db, strategy=point.strategy)
    try:
        ids = [api.submit(db, **_submission(point, index, work_dir)) for index in range(point.jobs)]
        _wait_all(api, db, ids, point, progress=progress, should_stop=should_stop, started=started)
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
        stop_daemon(api, db, pid)


def _submission(point: RunPoint, index: int, work_dir: Path) -> dict[str, Any]:
    label = point.job_labels()[index]
    args: dict[str, Any] = {
        "target": point.target,
        "trials": point.trials,
        "per_round": point.per_round,
        "seed": point.seed + index,
        "name": f"{point.experiment}-{index}-{label}",
    }
    if point.mock is not None:
        args["mock"] = point.mock
    else:
        if point.options:
            args["options"] = dict(point.options)
        args["model"] = model_path(point.models[index], work_dir)
        args["output"] = str(work_dir / f"job{index}.so")
        args["tuning_db"] = str(work_dir / f"job{index}.tuning.db")
    return args


def _wait_all(
    api,
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
            states = api.wait(db, ids, timeout=WAIT_SLICE_S)
        except TimeoutError:
            states = {}
        states = {int(k): _text(v) for k, v in (states or {}).items()}
        if all(states.get(i) in TERMINAL for i in ids):
            return
        progress(*_progress_of(api.jobs(db), ids))


def _progress_of(jobs: list[dict], ids: list[int]) -> tuple[float | None, str]:
    done = total = finished = 0
    for job in jobs:
        if job.get("id") not in ids:
            continue
        info = job.get("progress") or {}
        done += int(info.get("trials_done") or 0)
        total += int(info.get("trials_total") or 0)
        finished += _text(job.get("state")) in TERMINAL
    fraction = done / total if total else None
    return fraction, f"{finished}/{len(ids)} jobs finished, {done}/{total} trials"


# what a job's result says about the tuned model's speed (a MockJob's are synthetic)
_LATENCIES = ("tuned_ms", "tuned", "untuned_ms", "onnxruntime_ms", "convergence")


def _result(job: dict) -> dict:
    result = job.get("result") or {}
    if isinstance(result, str):
        try:
            result = json.loads(result)
        except ValueError:
            result = {}
    return result if isinstance(result, dict) else {}


def collect(
    point: RunPoint,
    jobs: list[dict],
    events: list[dict],
    resources: dict,
    makespan_s: float | None,
    ids: list[int],
    *,
    wall_s: float,
) -> PointOutcome:
    """Turn sched's jobs, events and utilisation into the point's outcome."""
    index_of = {job_id: index for index, job_id in enumerate(ids)}
    labels = point.job_labels()
    origin = min((e["start"] for e in events if e.get("start") is not None), default=0.0)
    timeline = [
        Event(
            index_of[e["job_id"]],
            _text(e.get("kind") or e.get("stage")),
            str(e["resource"]),
            e["start"] - origin,
            e["end"] - origin,
        )
        for e in events
        if e.get("job_id") in index_of and e.get("start") is not None and e.get("end") is not None
    ]
    outcome = PointOutcome(
        wall_s=wall_s,
        makespan_s=makespan_s,
        events=timeline,
        resources={
            str(name): {"busy": float(use.get("busy", 0.0)), "idle": float(use.get("idle", 0.0))}
            for name, use in (resources or {}).items()
        },
    )
    failures = []
    synthetic = point.mock is not None  # a MockJob's latencies are made up: never stored
    for job in sorted((j for j in jobs if j.get("id") in index_of), key=lambda j: j["id"]):
        index = index_of[job["id"]]
        result = _result(job)
        if synthetic:
            result = {k: v for k, v in result.items() if k not in _LATENCIES}
        state = _text(job.get("state") or job.get("status") or "unknown")
        one, convergence = job_outcome(
            index,
            labels[index],
            result,
            point.baselines,
            status=state,
            error=job.get("error"),
            stage_seconds=stage_seconds(timeline, index),
        )
        outcome.jobs.append(one)
        outcome.convergence += convergence
        if state != "done":
            failures.append(
                f"job {index} ({labels[index]}) {state}: {job.get('error') or 'no error given'}"
            )
    outcome.tuning_s = makespan_s
    outcome.summarise_jobs()
    if len(outcome.jobs) != len(ids):
        failures.append(f"sched reported {len(outcome.jobs)} of {len(ids)} jobs")
    if failures:
        raise PointFailed("; ".join(failures), outcome)
    return outcome
