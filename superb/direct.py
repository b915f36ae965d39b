"""A single-job point: the simpletvm engine, stage by stage, in a child process.

The child isolates the run: a segfault in TVM, an out-of-memory kill or a hang ends the
child, and the parent records it as a failed point and goes on. The child is spawned, not
forked (see run_in_child); the engine's trimmed imports make that start cost about 3 s.
"""

from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from simpletvm.stages import CPU, DEVICE

from .matrix import RunPoint
from .outcome import Event, PointFailed, PointOutcome, job_outcome
from .timeline import makespan, utilisation

ProgressFn = Callable[[float | None, str], None]
StopFn = Callable[[], bool]
_PR_SET_PDEATHSIG = 1


class Interrupted(Exception):
    """The user asked the run to stop; the point goes back to pending."""


def model_path(ref, work_dir: Path) -> str:
    """A file path for a model: its own path, or the sample written into the work dir."""
    if ref.path is not None:
        return ref.path
    from simpletvm.samples import write_sample

    return str(write_sample(ref.sample, work_dir / f"{ref.sample}.onnx"))


def run_in_child(
    target: Callable[..., None],
    args: tuple,
    *,
    on_message: Callable[[Any], None],
    should_stop: StopFn,
    timeout: float | None,
    log_path: Path,
) -> None:
    """Run ``target(conn, *args)`` in a child process, passing its messages to ``on_message``.

    Raises PointFailed if the child dies, exceeds ``timeout`` or sends ("error", text);
    Interrupted if ``should_stop()`` turns true. The child never outlives this call.
    """
    # spawn, not fork: the caller may already have run TVM kernels, and forking a process
    # whose TVM thread pool is live deadlocks the child. A fresh child pays only the
    # trimmed import (about 3 s, see simpletvm.intrin), small beside a tuning point.
    context = multiprocessing.get_context("spawn")
    parent_conn, child_conn = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(child_conn, target, args, log_path))
    process.start()
    child_conn.close()
    deadline = time.monotonic() + timeout if timeout else None
    error: str | None = None
    try:
        while True:
            if should_stop():
                raise Interrupted()
            if deadline is not None and time.monotonic() > deadline:
                raise PointFailed(
                    f"timeout: the point ran longer than {timeout:g} s; see {log_path}"
                )
            try:
                ready = parent_conn.poll(0.5)
                message = parent_conn.recv() if ready else None
            except (EOFError, OSError):  # the child is gone without saying "done"
                process.join(5)
                raise PointFailed(_death_message(process.exitcode, log_path)) from None
            if message is None:
                if not process.is_alive():
                    raise PointFailed(_death_message(process.exitcode, log_path))
                continue
            kind, payload = message
            if kind == "error":
                error = payload
                break
            if kind == "done":
                break
            on_message((kind, payload))
    finally:
        if process.is_alive():
            kill_tree(process.pid)
        process.join(5)
        parent_conn.close()
    if error:
        raise PointFailed(f"{error}; see {log_path}")


def kill_tree(pid: int) -> None:
    """Kill a process we started and everything it started, children first."""
    try:
        root = psutil.Process(pid)
        family = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for process in family:
        try:
            process.kill()
        except psutil.Error:
            pass


def _death_message(exitcode: int | None, log_path: Path) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else ""
        return f"tuning process died with signal {-exitcode} {name}; see {log_path}".rstrip()
    return f"tuning process exited with status {exitcode} without a result; see {log_path}"


def _child_main(conn, target: Callable[..., None], args: tuple, log_path: Path) -> None:
    """Child side: output to the log, die with the parent, report errors as messages."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the child
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    # New stream objects: a lock held by a parent thread at fork time is never released.
    sys.stdout = sys.stderr = log
    faulthandler.enable(file=log)  # a segfault's Python stack goes to the point's log
    try:
        target(conn, *args)
        conn.send(("done", None))
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a message
        traceback.print_exc()
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()
        log.flush()
        os._exit(0)


def _engine_child(conn, spec: dict[str, Any]) -> None:
    """Child side: the job from its JobSpec's JSON, run stage by stage."""
    from simpletvm.spec import JobSpec
    from simpletvm.targets import host_cores

    job = JobSpec.from_json(spec).tuning_job()
    # the units a stage may hold: the cores the engine sized its threads from, one device
    cores = int(job.target.config.get("num-cores") or host_cores())
    conn.send(("capacities", {CPU: cores, DEVICE: 1}))
    origin = time.perf_counter()
    while (request := job.next_stage()) is not None:
        start = time.perf_counter() - origin
        outcome = job.run_stage()
        conn.send(
            (
                "stage",
                {
                    "kind": request.kind.value,
                    "resources": dict(request.needs),
                    "start": start,
                    "end": time.perf_counter() - origin,
                    "trials_done": outcome.trials_done,
                    "trials_total": outcome.trials_total,
                    "best_ms": outcome.best_latency_ms,
                },
            )
        )
    conn.send(("result", job.result()))


def run_direct_point(
    point: RunPoint, work_dir: Path, *, progress: ProgressFn, should_stop: StopFn
) -> PointOutcome:
    """Tune the point's one model with the engine in a child process."""
    ref = point.models[0]
    spec = point.job_spec(
        0,
        model_path(ref, work_dir),
        output=str(work_dir / "model.so"),
        tuning_db=str(work_dir / "tuning.db"),
    )
    progress(None, f"importing TVM for {point.target}")
    events: list[Event] = []
    result: dict[str, Any] = {}
    capacities: dict[str, int] = {}
    started = time.perf_counter()

    def on_message(message: tuple[str, Any]) -> None:
        kind, payload = message
        if kind == "capacities":
            capacities.update(payload)
        elif kind == "stage":
            for resource, amount in payload["resources"].items():
                events.append(
                    Event(0, payload["kind"], resource, payload["start"], payload["end"], amount)
                )
            total = payload["trials_total"] or 0
            done = payload["trials_done"] or 0
            progress(
                done / total if total else None,
                f"{ref.label}: {payload['kind']} done, {done}/{total} trials",
            )
        elif kind == "result":
            result.update(payload)

    def outcome() -> PointOutcome:
        return direct_outcome(point, result, events, time.perf_counter() - started, capacities)

    try:
        run_in_child(
            _engine_child,
            (spec.to_json(),),
            on_message=on_message,
            should_stop=should_stop,
            timeout=point.timeout,
            log_path=work_dir / "tuning.log",
        )
    except PointFailed as failed:
        raise PointFailed(str(failed), outcome()) from None
    if not result:
        raise PointFailed("the engine finished without a result", outcome())
    return outcome()


def direct_outcome(
    point: RunPoint,
    result: dict,
    events: list[Event],
    wall_s: float,
    capacities: dict[str, int],
) -> PointOutcome:
    job, convergence = job_outcome(
        0, point.models[0].label, result, point.baselines, status="done" if result else "failed"
    )
    out = PointOutcome(
        wall_s=wall_s,
        makespan_s=makespan(events) or None,
        tuning_s=job.tuning_s,
        jobs=[job],
        resources=utilisation(events, capacities),
        events=events,
        convergence=convergence,
        detail={"artifact": result.get("artifact")},
    )
    out.summarise_jobs()
    return out
