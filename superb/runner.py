"""Run every point of a matrix unattended, resumably, recording each one as it ends.

A point is claimed in the results store (pid plus process start time) before it runs and
recorded in one transaction after, so:
- a finished point is skipped on the next run;
- a point whose superb process was killed is seen as abandoned and run again;
- a failed point is recorded with its error and the run goes on.
Signal handlers only set a flag; the executors poll it and stop their point cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from . import SuperbError, environment
from .direct import Interrupted, run_direct_point
from .matrix import PointKind, RunPoint
from .outcome import PointFailed, PointOutcome
from .paths import default_work_root, make_work_root
from .results import PointStatus, ResultsDB, RunStatus
from .schedpoint import run_sched_point, stop_leftover_daemon

Executor = Callable[..., PointOutcome]
EXECUTORS: dict[PointKind, Executor] = {
    PointKind.DIRECT: run_direct_point,
    PointKind.SCHED: run_sched_point,
}


class Reporter(Protocol):
    """What the runner tells its audience (the CLI's rich progress, or nobody)."""

    def start(self, *, total: int, skipped: int) -> None: ...
    def point_started(self, point: RunPoint, number: int) -> None: ...
    def point_progress(self, fraction: float | None, text: str) -> None: ...
    def point_finished(
        self, point: RunPoint, status: PointStatus, seconds: float, error: str | None
    ) -> None: ...


class SilentReporter:
    def start(self, *, total: int, skipped: int) -> None:
        pass

    def point_started(self, point: RunPoint, number: int) -> None:
        pass

    def point_progress(self, fraction: float | None, text: str) -> None:
        pass

    def point_finished(
        self, point: RunPoint, status: PointStatus, seconds: float, error: str | None
    ) -> None:
        pass


@dataclass
class RunSummary:
    run_id: int
    total: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    busy_elsewhere: int = 0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return self.total - self.skipped - self.done - self.failed


def owner_identity(pid: int | None = None) -> tuple[int, float]:
    pid = os.getpid() if pid is None else pid
    return pid, psutil.Process(pid).create_time()


def owner_alive(pid: int | None, started: float | None) -> bool:
    """Whether the process that claimed a point still runs (pid reuse ruled out)."""
    if pid is None or started is None:
        return False
    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


class Runner:
    def __init__(
        self,
        db: ResultsDB,
        *,
        work_root: str | Path | None = None,
        reporter: Reporter | None = None,
        retry_failed: bool = False,
        keep_work: bool = False,
        executors: dict[PointKind, Executor] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.work_root = Path(work_root) if work_root else None  # None: the default
        self.reporter = reporter or SilentReporter()
        self.retry_failed = retry_failed
        self.keep_work = keep_work
        self.executors = {**EXECUTORS, **(executors or {})}
        self.clock = clock
        self.stop_requested = False

    def check_resume(self, points: list[RunPoint], *, resume: bool) -> dict[str, PointStatus]:
        """Existing statuses; without --resume, refuse to mix into earlier results."""
        existing = self.db.statuses([p.key for p in points])
        if existing and not resume:
            done = sum(s is PointStatus.DONE for s in existing.values())
            failed = sum(s is PointStatus.FAILED for s in existing.values())
            raise SuperbError(
                f"{self.db.path} already holds {len(existing)} of these {len(points)} points "
                f"({done} done, {failed} failed); pass --resume to continue them, or choose "
                "another --db"
            )
        return existing

    def run(self, points: list[RunPoint], *, file: str = "", resume: bool = False) -> RunSummary:
        existing = self.check_resume(points, resume=resume)
        finished = {PointStatus.DONE} | ({PointStatus.FAILED} if not self.retry_failed else set())
        todo = [p for p in points if existing.get(p.key) not in finished]
        experiments = sorted({p.experiment for p in points})
        run_id = self.db.start_run(
            file=file, experiments=experiments, environment=environment.capture(), now=self.clock()
        )
        self.db.register_points(points)
        summary = RunSummary(run_id=run_id, total=len(points), skipped=len(points) - len(todo))
        self.reporter.start(total=len(todo), skipped=summary.skipped)
        owner = owner_identity()
        restore = self._install_signal_handlers()
        try:
            for number, point in enumerate(todo, 1):
                if self.stop_requested:
                    summary.interrupted = True
                    break
                self._run_one(point, number, run_id, owner, summary)
                if summary.interrupted:
                    break
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            restore()
            status = RunStatus.INTERRUPTED if summary.interrupted else RunStatus.FINISHED
            self.db.finish_run(run_id, status, now=self.clock())
        return summary

    def _run_one(
        self,
        point: RunPoint,
        number: int,
        run_id: int,
        owner: tuple[int, float],
        summary: RunSummary,
    ) -> None:
        """Claim, run and record one point (or leave it, if another process holds it)."""
        work_dir = self._claim(point, run_id, owner)
        if work_dir is None:
            summary.busy_elsewhere += 1
            return
        self.reporter.point_started(point, number)
        started = time.perf_counter()
        try:
            outcome, error = self._execute(point, work_dir)
        except (Interrupted, KeyboardInterrupt):
            self.db.release(point.key, owner=owner)
            shutil.rmtree(work_dir, ignore_errors=True)
            summary.interrupted = True
            return
        seconds = time.perf_counter() - started
        if outcome.wall_s is None:
            outcome.wall_s = seconds
        status = self.db.finish_point(
            point.key, owner=owner, outcome=outcome, error=error, now=self.clock()
        )
        if status is PointStatus.DONE:
            summary.done += 1
            if not self.keep_work:
                shutil.rmtree(work_dir, ignore_errors=True)
        else:
            summary.failed += 1
            summary.failures.append((point.label(), error or ""))
        self.reporter.point_finished(point, status, seconds, error)

    def _claim(self, point: RunPoint, run_id: int, owner: tuple[int, float]) -> Path | None:
        """The point's new work dir once claimed; None if another live process holds it.
        What a dead earlier attempt left (a daemon, a work dir) is cleared away."""
        root = make_work_root(self.work_root or default_work_root())
        work_dir = Path(tempfile.mkdtemp(prefix=f"{point.key}-", dir=root))
        claimed, previous = self.db.claim(
            point.key,
            run_id=run_id,
            owner=owner,
            work_dir=str(work_dir),
            now=self.clock(),
            retry_failed=self.retry_failed,
            owner_alive=owner_alive,
        )
        if not claimed:
            shutil.rmtree(work_dir, ignore_errors=True)
            return None
        if previous:  # an earlier attempt died mid-point: stop what it left running
            stop_leftover_daemon(previous)
            shutil.rmtree(previous, ignore_errors=True)
        return work_dir

    def _execute(self, point: RunPoint, work_dir: Path) -> tuple[PointOutcome, str | None]:
        """The point's outcome and its error (None when it succeeded); a failed point is a
        result, not a crash. Raises Interrupted when the user stops the run."""
        try:
            outcome = self.executors[point.kind](
                point,
                work_dir,
                progress=self.reporter.point_progress,
                should_stop=lambda: self.stop_requested,
            )
            return outcome, None
        except PointFailed as failed:
            return failed.outcome or PointOutcome(), str(failed) or "failed"
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - a failed point is a result, not a crash
            (work_dir / "superb-error.log").write_text(traceback.format_exc())
            return PointOutcome(), f"{type(exc).__name__}: {exc}"

    def _install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT/SIGTERM set a flag; a second SIGINT interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def request_stop(signum, frame) -> None:
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True

        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore
