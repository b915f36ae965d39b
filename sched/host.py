"""What runs jobs' runners on one host: fork, reap, kill, and the silent and cancelled.

The daemon is the head host's runner host (its runners have no ``host``); an agent
(``sched agent``) is one on another host, named by ``--name``. Both fork runners from a
process that has already imported what the jobs need, reap them, and kill the silent
ones. Only the daemon decides (grants, placement, fencing); a host only acts on its own.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback
from dataclasses import dataclass

import psutil

from . import runner
from .paths import runner_log, runner_log_dir

HOST_TIMEOUT_KEY = "host_timeout"  # the daemon's T, in settings: agents beat every T/4


@dataclass
class Runner:
    job_id: int
    attempt: int
    pid: int
    started: float
    wake_fd: int | None = None  # our end of the runner's wake-up pipe (None when adopted)
    child: bool = True


class RunnerHost:
    """Mixin: the runners of one host. Expects ``registry``, ``db``, ``db_path``,
    ``config``, ``runners``, ``pidfile``, ``_wake_r``/``_wake_w``, ``host`` (None: the
    daemon's own) and ``_check_registry``."""

    host: str | None = None
    die_with_host = False  # runners get SIGKILL when their host process dies (agents)
    listener = None  # PostgreSQL: the session that hears NOTIFYs (None on SQLite)
    stopping = False

    def install_signals(self) -> None:
        """Handlers only set a flag; the wake-up fd makes the main loop notice at once."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _on_stop(self, *_: object) -> None:
        self.stopping = True

    def _wait_for_wakeup(self, timeout: float) -> list[tuple[str, str]]:
        """Until a runner or signal writes to our pipe or a NOTIFY is heard, or
        ``timeout``; the NOTIFYs heard, as (channel, payload)."""
        waits = [self._wake_r] + ([self.listener] if self.listener is not None else [])
        ready, _, _ = select.select(waits, [], [], timeout)
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 65536):
                    pass
            except BlockingIOError:
                pass
        if self.listener is not None and self.listener in ready:
            return self.listener.drain()
        return []

    def _fork(self, batch: list[tuple[int, int]], now: float | None) -> None:
        """Fork one runner per (job, attempt) already claimed."""
        if not batch:
            return
        self._check_registry()  # closing a connection checkpoints: never a damaged log
        # SQLite state must not cross fork (its per-inode lock bookkeeping would be
        # inherited): close our connection; the next registry call reopens it.
        self.registry.close()
        sys.stdout.flush()
        sys.stderr.flush()
        forked = []
        for job_id, attempt in batch:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # the runner
                code = runner.EXIT_FAILED
                try:
                    # its own process group, which its worker processes join: one signal
                    # suspends, continues or kills the runner with its workers
                    os.setpgid(0, 0)
                    os.close(write_fd)  # else we would never see EOF when the daemon dies
                    self._become_runner(read_fd, job_id)
                    code = runner.run(
                        self.db,
                        job_id,
                        attempt,
                        wake_fd=read_fd,
                        notify_fd=self._wake_w,
                        heartbeat=self.config.heartbeat,
                    )
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            os.close(read_fd)
            try:
                os.setpgid(pid, pid)  # also here: whichever of the two runs first
            except OSError:
                pass
            os.set_blocking(write_fd, False)
            try:
                started = psutil.Process(pid).create_time()
            except psutil.NoSuchProcess:
                started = 0.0
            self.runners[job_id] = Runner(job_id, attempt, pid, started, write_fd)
            forked.append((job_id, attempt, pid, started))
        self.registry.set_runners(forked, now=now)


    def _become_runner(self, read_fd: int, job_id: int) -> None:
        """Drop what belongs to the daemon: its signals, lock, pipes and log."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        # If the daemon dies while this runner is suspended, its process group is orphaned
        # and the kernel sends SIGHUP, then SIGCONT: ignored (and so inherited by the
        # workers), the runner goes on with its stage instead of dying.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if self.pidfile.fd is not None:
            os.close(self.pidfile.fd)  # the flock must die with the daemon, not its runners
        os.close(self._wake_r)
        for other in self.runners.values():
            if other.wake_fd is not None:
                os.close(other.wake_fd)
        if self.die_with_host:  # an agent's runners must not outlive it (self-fencing)
            _die_with_parent()
        os.umask(0o077)  # what the job writes (tuning database, module) is the user's only
        runner_log_dir(self.db_path).mkdir(mode=0o700, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        out = os.open(runner_log(self.db_path, job_id), flags, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)


    def _reap(self, now: float | None) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            found = next((r for r in self.runners.values() if r.pid == pid), None)
            if found is not None:
                self._gone(found, _describe(status), now=now)


    def _check_adopted(self, now: float | None) -> None:
        for found in [r for r in self.runners.values() if not r.child]:
            if not _alive(found.pid, found.started):
                self._gone(found, "adopted runner exited", now=now)


    def _gone(
        self, found: Runner, reason: str, *, charge: bool = True, now: float | None = None
    ) -> None:
        self.runners.pop(found.job_id, None)
        if found.wake_fd is not None:
            os.close(found.wake_fd)
        self.registry.runner_gone(
            found.job_id,
            found.attempt,
            reason=reason,
            charge=charge,
            retry_limit=self.config.retry_limit,
            now=now,
        )


    def _kill(self, found: Runner) -> None:
        """SIGKILL a runner and wait until it is really gone (so its lease can be reused)."""
        if not _alive(found.pid, found.started):
            return
        try:
            _signal_group(found.pid, signal.SIGKILL)  # with its build workers
        except ProcessLookupError:
            return
        if found.child:
            try:
                os.waitpid(found.pid, 0)
            except ChildProcessError:
                pass
            return
        deadline = time.time() + 5
        while _alive(found.pid, found.started) and time.time() < deadline:
            time.sleep(0.01)


    def _kill_silent(self, now: float | None) -> None:
        ref = self.registry.clock() if now is None else now  # the clock of the heartbeats
        stale = self.registry.stale_leases(ref - self.config.heartbeat_timeout, host=self.host)
        for lease in stale:
            found = self.runners.get(lease["job_id"])
            if found is None:
                found = Runner(
                    lease["job_id"],
                    lease["attempt"],
                    lease["holder_pid"] or 0,
                    lease["holder_started"] or 0.0,
                    child=False,
                )
            self._kill(found)
            self._gone(found, f"heartbeat stopped for {ref - lease['heartbeat_at']:.1f} s", now=now)


    def _cancel_flagged(self, now: float | None) -> None:
        for job in self.registry.running_jobs(host=self.host):
            if job["cancel_requested"] and job["id"] in self.runners:
                found = self.runners[job["id"]]
                self._kill(found)
                self._gone(found, "cancelled", charge=False, now=now)


def _alive(pid: int, started: float | None) -> bool:
    """Is this exact process (pid plus start time) still alive and not a zombie?"""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if started and abs(proc.create_time() - started) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

def _signal_group(pid: int, sig: int) -> None:
    """Signal a runner's process group if it leads one (runners do), else the process."""
    if os.getpgid(pid) == pid:
        os.killpg(pid, sig)
    else:
        os.kill(pid, sig)

def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"runner killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"runner exited with status {os.waitstatus_to_exitcode(status)}"


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the call: go now
        os._exit(runner.EXIT_FENCED)
