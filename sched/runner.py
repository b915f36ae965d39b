"""The runner: one forked process per job, driving its StagedJob one granted stage at a time.

It does nothing on its own: it asks for its next stage (a request row), waits for the
grant (the registry is the truth; a pipe from the daemon is only a wake-up hint),
runs the stage while a thread heartbeats the lease, then releases the lease, records
the stage and requests the next one in one transaction fenced by the lease epoch.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
import traceback
from pathlib import Path

from simpletvm.remote import DeviceUnavailable

from .jobs import build_job, stage_info
from .models import Fenced, JobState
from .paths import jobs_dir, local_base
from .registry import Registry

EXIT_OK, EXIT_FAILED, EXIT_FENCED = 0, 1, 3
WAKE_WAIT_S = 0.05  # the first wait for the daemon's wake-up after a request, doubling
POLL_CAP_S = 2.0  # ... up to this: with a pipe the wake-up comes, the poll is a fallback


class Heartbeat(threading.Thread):
    """Record the stage's start, then refresh the lease while the stage runs.

    The start is written only once the stage has run ``START_DELAY``: a stage shorter
    than that costs no extra transaction (``complete_stage`` records its start).
    """

    START_DELAY = 0.05

    def __init__(self, registry: Registry, epoch: int, interval: float, started: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{epoch}")
        self.registry, self.epoch, self.interval = registry, epoch, interval
        self.started = started
        self.stopped = threading.Event()

    def run(self) -> None:
        if self.stopped.wait(self.START_DELAY):
            return
        try:
            self.registry.start_stage(self.epoch, now=self.started)
        except Fenced:
            self._lost()
            return
        except Exception:
            pass  # the heartbeat below still keeps the lease alive
        while not self.stopped.wait(self.interval):
            try:
                if not self.registry.heartbeat(self.epoch):
                    self._lost()
                    return
            except Exception:  # a missed beat is retried; the daemon judges staleness
                continue

    def _lost(self) -> None:
        """The lease was taken back while the stage runs (the daemon reclaimed it, or
        fenced this host): stop using what it held now, workers included, rather than
        when the stage ends. Only a forked runner, which leads its process group, does."""
        if self.stopped.is_set() or os.getpgid(0) != os.getpid():
            return
        print(f"runner {os.getpid()}: lease {self.epoch} was taken back; stopping", flush=True)
        os.killpg(0, signal.SIGKILL)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


class Wakeup:
    """Wait for a byte on the daemon's pipe, or a timeout; degrade to sleeping on EOF."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def wait(self, timeout: float) -> None:
        if self.fd is None:
            time.sleep(timeout)
            return
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                if os.read(self.fd, 4096) == b"":
                    self.fd = None  # the daemon is gone: poll the registry instead
            except BlockingIOError:
                pass


def notify(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.write(fd, b"r")
    except (BlockingIOError, BrokenPipeError, OSError):
        pass  # a full pipe already wakes the daemon; a dead one is replaced by polling


def wait_for_grant(registry: Registry, request_id: int, wakeup: Wakeup) -> dict:
    """Poll with backoff: up to 2 s apart while the daemon can wake us, 0.1 s once not.

    With a pipe, the first poll waits for the daemon's wake-up (it writes once it has
    granted), so a grant usually costs one poll: polling at 2, 4, 8 ms meanwhile cost
    four polls a grant, and their CPU slowed every grant on a busy host."""
    delay = WAKE_WAIT_S if wakeup.fd is not None else 0.002
    if wakeup.fd is not None:
        wakeup.wait(delay)
    while True:
        grant = registry.poll_grant(request_id)
        if grant is not None:
            return grant
        wakeup.wait(delay)
        delay = min(POLL_CAP_S if wakeup.fd is not None else 0.1, delay * 2)


def run(
    db_path: str | Path,
    job_id: int,
    attempt: int,
    *,
    wake_fd: int | None = None,
    notify_fd: int | None = None,
    heartbeat: float = 1.0,
) -> int:
    """The runner's whole life; returns its exit status."""
    registry = Registry(db_path)
    row = registry.job(job_id)
    if row is None or row["attempt"] != attempt or row["state"] is not JobState.RUNNING:
        return EXIT_FENCED
    life = _Life(registry, row, Wakeup(wake_fd), notify_fd, heartbeat)
    if registry.backend == "postgresql":  # a stage's start, on the database's clock
        life.offset = registry.clock() - time.time()
    try:
        tag = registry.location if registry.backend == "postgresql" else None
        life.run(build_job(row, db_path=local_base(db_path), registry=tag))
        return EXIT_OK
    except Fenced as exc:
        print(f"runner for job {job_id}: fenced: {exc}", flush=True)
        return EXIT_FENCED
    except Exception as exc:
        traceback.print_exc()
        stage = life.request.kind.value if life.request is not None else "job"
        error = f"{stage} stage failed: {type(exc).__name__}: {exc}"
        try:
            registry.finish_job(job_id, attempt, state=JobState.FAILED, error=error)
        except Fenced:
            return EXIT_FENCED
        notify(notify_fd)
        return EXIT_FAILED


class _Life:
    """A runner's loop: request a stage, wait for its grant, run it under a heartbeat,
    record it and request the next one (one transaction), until the job is finished."""

    def __init__(self, registry: Registry, row, wakeup: Wakeup, notify_fd: int | None,
                 heartbeat: float) -> None:  # fmt: skip
        self.registry, self.row, self.wakeup = registry, row, wakeup
        self.notify_fd, self.heartbeat = notify_fd, heartbeat
        self.job_id, self.attempt = row["id"], row["attempt"]
        self.request = None  # the stage asked for or running (named if it fails)
        self.offset = 0.0  # the registry's clock minus ours (PostgreSQL: another host's)

    def run(self, job) -> None:
        index = self.row["stages_done"]
        self.request = job.next_stage()
        if self.request is None:
            self._finish(job)
            return
        request_id = self.registry.request_stage(
            self.job_id, self.attempt, index, *self._asked(self.request)
        )
        notify(self.notify_fd)
        while True:
            grant = wait_for_grant(self.registry, request_id, self.wakeup)
            started = time.time() + self.offset
            try:
                outcome = self._run_stage(job, grant, started)
            except DeviceUnavailable as exc:
                # The stage did not run: mark the server down, ask again for another one.
                device = (grant.get("rpc") or {}).get("name", exc.device)
                request_id = self.registry.device_unavailable(grant["epoch"], device, exc.reason)
                print(f"runner for job {self.job_id}: {exc}; stage re-queued", flush=True)
                notify(self.notify_fd)
                continue
            index += 1
            self.request = job.next_stage()
            follow = (index, *self._asked(self.request)) if self.request is not None else None
            request_id = self.registry.complete_stage(
                grant["epoch"], seconds=outcome.seconds, progress=job.progress(),
                next_stage=follow, started_at=started,
            )  # fmt: skip
            notify(self.notify_fd)
            if self.request is None:
                self._finish(job)
                notify(self.notify_fd)
                return

    def _finish(self, job) -> None:
        """Record the result; a module exported into the job's directory is made 0600."""
        result = job.result()
        artifact = (result or {}).get("artifact")
        if artifact and os.path.isfile(artifact):
            inside = Path(artifact).resolve().is_relative_to(jobs_dir(self.registry.path).resolve())
            if inside:
                os.chmod(artifact, 0o600)
        self.registry.finish_job(self.job_id, self.attempt, result=result)

    def _asked(self, request) -> tuple:
        """A request's kind, needs and info, as the registry records them."""
        return request.kind.value, request.needs, stage_info(self.row, request)

    def _run_stage(self, job, grant: dict, started: float):
        """Run the granted stage while a heartbeat keeps its lease alive."""
        beat = Heartbeat(self.registry, grant["epoch"], self.heartbeat, started)
        beat.start()
        try:
            return job.run_stage(grant=grant)
        finally:
            beat.stop()
