"""The scheduler daemon: forks runners, reaps them, reclaims leases and grants stages.

Shaped like a huey worker: ``initialize()``, ``loop(now=None)`` (one pass; tests call
it with an injected clock) and ``shutdown()``.  Signal handlers only set flags.  All
state lives in the registry, so a daemon killed with SIGKILL and started again picks
up where it was: live runners are adopted (pid plus start time), dead ones reaped.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import runner
from .devices import backoff, probe
from .dispatch import Dispatcher
from .host import HOST_TIMEOUT_KEY, Runner, RunnerHost, _alive, _signal_group
from .jobs import kind_of_target, preload, target_kind
from .limits import HEARTBEAT_S, check_daemon_limits, check_seconds
from .models import JobKind, Resource, ResourceKind
from .paths import (
    display,
    local_base,
    locator,
    log_file,
    pid_file,
    resolve_db,
)
from .pidfile import PidFile, running_pid
from .registry import PassView, Registry, RegistryError
from .registry.health import check_file, damaged
from .registry.stages import WAKE_CHANNEL
from .resources import detect
from .strategies import get_strategy


@dataclass
class DaemonConfig:
    strategy: str | None = None  # None keeps the one stored in the registry
    resources: list[Resource] | None = None
    max_jobs: int = 64  # runners alive at once
    retry_limit: int = 3
    heartbeat: float = HEARTBEAT_S  # seconds between a runner's heartbeats
    heartbeat_timeout: float = 10.0  # a lease silent this long gets its runner killed
    stop_timeout: float = 30.0  # how long a graceful stop lets running stages finish
    preload: list[str] = field(default_factory=list)
    probe_backoff: float = 2.0  # seconds before a down remote device is probed again ...
    probe_backoff_max: float = 120.0  # ... doubling after each failed probe, up to this
    preempt: bool | None = None  # None keeps the stored setting (on unless turned off)
    local_jobs: bool = True  # run jobs on this host too, besides the agents' hosts
    host_timeout: float = 10.0  # T: an agent silent this long is fenced, its jobs requeued
    standby: bool = False  # PostgreSQL: wait for the serving daemon to die, then serve


STANDBY_POLL_S = 0.2  # how often a standby tries the daemon lock
SPAWN_BATCH = 4  # runners forked per pass (see Daemon._spawn)
STOP_WAIT_S = 1.0  # how long a suspension waits for a runner's processes to stop


class AlreadyRunning(RuntimeError):
    pass


class RegistryLost(RuntimeError):
    """The registry file was removed, replaced or damaged under the daemon."""


class Daemon(RunnerHost):
    def __init__(self, db_path: str | Path, config: DaemonConfig | None = None) -> None:
        self.db = locator(db_path)  # a file or a URL
        self.db_path = local_base(self.db)  # the file, or where a URL's local files go
        self.config = config or DaemonConfig()
        self.registry = Registry(self.db, priority=True)
        self.dispatcher = Dispatcher(
            self.registry, suspend=self._suspend_holders, resume=self._resume_holders
        )
        self.pidfile = PidFile(pid_file(self.db_path))
        self.runners: dict[int, Runner] = {}
        self.stopping = False
        self.stop_deadline: float | None = None
        self._wake_r = self._wake_w = -1
        self.listener = None  # PostgreSQL: the session that hears runners on other hosts
        self.leader = None  # PostgreSQL: the session holding the daemon lock
        self._alive_stop = threading.Event()  # ends the thread that touches it
        self._preloaded: set[str] = set()
        self._last_housekeeping = 0.0
        self._spawn_pending = False  # queued jobs left for the next pass to fork
        self.identity: tuple[int, int] | None = None  # the registry's (device, inode)
        self.abandoned = False  # stopped without touching a lost registry (_abandon)

    # -- life cycle ------------------------------------------------------------------
    def initialize(self, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.registry.check()  # before the pid lock: a new registry may be created
        if self.registry.backend == "postgresql":
            self._lead()  # on any host: one daemon per registry; a standby waits here
        if not self.pidfile.acquire():
            pid = running_pid(self.pidfile.path)
            raise AlreadyRunning(
                f"a daemon already runs for {display(self.db)} (pid {pid}); "
                f"stop it first with: sched stop --db {display(self.db)}"
            )
        if self.registry.backend == "sqlite":  # a file that can be removed or replaced
            info = os.stat(self.db_path)
            self.identity = (info.st_dev, info.st_ino)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # PostgreSQL: runners on agents' hosts wake us with a NOTIFY, not a pipe
        self.listener = self.registry.store.listener([WAKE_CHANNEL])
        if self.config.resources is not None:
            self.registry.replace_resources(self.config.resources)
        elif not any(r.kind is not ResourceKind.REMOTE for r in self.registry.resources().values()):
            self.registry.replace_resources(detect())
        if self.config.strategy is not None:
            get_strategy(self.config.strategy)
            self.registry.set_setting("strategy", self.config.strategy, now=now)
        if self.config.preempt is not None:
            self.registry.set_setting("preempt", "on" if self.config.preempt else "off")
        self.registry.set_setting(HOST_TIMEOUT_KEY, repr(self.config.host_timeout))
        for target in self.config.preload:
            try:
                self._preload(kind_of_target(target))
            except ValueError:  # a malformed --preload target: say so, serve anyway
                traceback.print_exc()
        self._recover(now)
        self.registry.mark_daemon(os.getpid(), now=now)

    def _lead(self) -> None:
        """Take the registry's daemon lock (PostgreSQL): at once, or, for a standby, as
        soon as the serving daemon dies or loses its session."""
        store = self.registry.store
        session = store.session()
        if store.try_daemon_lock(session):
            self.leader = session
            self._keep_alive()
            return
        if not self.config.standby:
            session.close()
            pid = self.registry.get_setting("daemon_pid") or "?"
            raise AlreadyRunning(
                f"a daemon already serves {display(self.db)} (pid {pid}, maybe on another "
                f"host); stop it first, or start this one as its standby: sched start --standby"
            )
        self.registry.set_setting("standby", f"{os.getpid()}@{socket.gethostname()}")
        print(f"sched daemon {os.getpid()}: standby for {display(self.db)}", flush=True)
        while True:
            time.sleep(STANDBY_POLL_S)
            try:
                if session.closed:
                    session = store.session()
                if store.try_daemon_lock(session):
                    break
                self._end_silent_leader(session)
            except Exception:  # the server is away, or dropped this session: again
                if not session.closed:
                    session.close()
        self.leader = session
        self._keep_alive()
        print(f"sched daemon {os.getpid()}: the daemon lock is ours; taking over", flush=True)

    def _end_silent_leader(self, session) -> None:
        """A standby: end the serving daemon's session if it has been silent for T (the
        daemon stopped or hung: it touches its session every T/4 from a thread of its
        own), so that its lock passes here. If it goes on later, its next housekeeping
        pass finds the lock gone and it stops (``_check_leader``)."""
        stored = self.registry.get_setting(HOST_TIMEOUT_KEY)
        timeout = float(stored) if stored else self.config.host_timeout
        ended = self.registry.store.end_silent_daemon(session, timeout)
        if ended is not None:
            print(f"sched daemon {os.getpid()}: the serving daemon's session was silent for "
                  f"{ended:.1f} s (stopped or hung); ended it", flush=True)  # fmt: skip

    def _keep_alive(self) -> None:
        """Touch the daemon lock's session every T/4, whatever the loop is busy with (a
        first TVM import takes seconds): a standby takes over a session silent for T."""
        stop = self._alive_stop = threading.Event()

        def touch() -> None:
            while not stop.wait(self.config.host_timeout / 4):
                leader = self.leader
                if leader is None:
                    return
                try:
                    self.registry.store.touch(leader)
                except Exception:  # a lost session: _check_leader finds out
                    pass

        threading.Thread(target=touch, name="daemon-lock-touch", daemon=True).start()

    def _check_leader(self) -> None:
        """Each housekeeping pass (PostgreSQL): still the one daemon? A session that the
        server dropped may have let a standby take over: then stop, and let it serve."""
        store = self.registry.store
        if self.leader is None or store.holds_daemon_lock(self.leader):
            return
        if not self.leader.closed:
            self.leader.close()
        self.leader = store.session()
        if not store.try_daemon_lock(self.leader):
            raise RegistryLost("the daemon lock passed to another daemon (a standby)")

    def run_forever(self) -> int:
        """Serve until stopped: 0, or 1 if the registry was lost (``_abandon``)."""
        fault = None
        while True:
            try:
                self._check_registry()
                self.loop()
                fault = None
            except RegistryLost as exc:
                return self._abandon(str(exc))
            except Exception as exc:
                lost = damaged(self.db_path, exc)
                if lost is not None:
                    return self._abandon(str(lost))
                fault = _log_fault(exc, fault)
            if self.stopping and self._stop_finished():
                break
            if self._spawn_pending:
                continue  # more queued jobs to fork: no sleep between batches
            self._wait(0.05 if self.stopping or self._adopted() else 0.5)
        self.shutdown()
        return 0

    def _check_registry(self) -> None:
        """Each pass: the registry is still the file we opened, and sound (its ``-wal``)."""
        if self.identity is None:
            return  # not initialised (tests drive loop() by hand)
        try:
            info = os.stat(self.db_path)
        except FileNotFoundError:
            raise RegistryLost(f"the registry {self.db_path} was removed") from None
        if (info.st_dev, info.st_ino) != self.identity:
            raise RegistryLost(f"the registry {self.db_path} was replaced by another file")
        try:
            check_file(self.db_path, header=False)
        except RegistryError as exc:
            raise RegistryLost(str(exc)) from None

    def _abandon(self, reason: str) -> int:
        """Stop at once without writing to the registry: kill the runners (their jobs stay
        ``running`` there; a daemon started on the restored file requeues them) and free
        the pid file. The SQLite connection is left open: closing it could checkpoint a
        damaged log into the file, so ``main`` ends the process with ``os._exit``."""
        print(f"sched daemon {os.getpid()} stops: {reason}; its runners were killed and the "
              f"registry was not touched", flush=True)  # fmt: skip
        for found in list(self.runners.values()):
            self._kill(found)
        self.runners.clear()
        self.pidfile.release()
        self.abandoned = True
        return 1

    def _adopted(self) -> bool:
        return any(not r.child for r in self.runners.values())

    def _wait(self, timeout: float) -> None:
        self._wait_for_wakeup(timeout)  # a NOTIFY from another host's runner only wakes us

    def loop(self, now: float | None = None) -> None:
        """One pass: reap, kill silent runners, cancel, start runners, grant stages."""
        given, now = now, time.time() if now is None else now
        # what the registry stamps: an injected clock, else the registry's own (on
        # PostgreSQL the database's, one clock for every host)
        stamp = now if given is not None or self.registry.backend == "sqlite" else None
        self._reap(stamp)
        if now - self._last_housekeeping >= 0.25:
            self._last_housekeeping = now
            self._check_adopted(stamp)
            self._kill_silent(stamp)
            self._cancel_flagged(stamp)
            self._probe_devices(stamp)
            self.registry.unblock_suspended(_stopped)
            self._fence_hosts(stamp)
            self._check_leader()
        if self.stopping:
            if self.stop_deadline is None:
                self.stop_deadline = now + self.config.stop_timeout
            self.dispatcher.resume_finished(given)  # no grants now, but no stage left paused
            return
        view = self.dispatcher.view(queued=SPAWN_BATCH + 1)  # one round trip on PostgreSQL
        self._spawn(stamp, view)
        for grant in self.dispatcher.dispatch(given, view):
            found = self.runners.get(grant.job_id)
            if found is not None and found.wake_fd is not None:
                runner.notify(found.wake_fd)

    def _stop_finished(self) -> bool:
        # the stages of our own runners (agents' runners are theirs to stop)
        busy = {lease.job_id for lease in self.registry.active_leases()} & set(self.runners)
        deadline_passed = self.stop_deadline is not None and time.time() >= self.stop_deadline
        return not busy or deadline_passed

    def shutdown(self, *, now: float | None = None) -> None:
        """Stop every runner; their jobs go back to the queue, to resume at the next start."""
        for found in list(self.runners.values()):
            self._kill(found)
            self._gone(found, "daemon stopped", charge=False, now=now)
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        self.registry.mark_daemon(None, now=now)
        self.registry.close()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.leader is not None:
            self._alive_stop.set()
            self.leader.close()  # frees the daemon lock for a standby
            self.leader = None
        self.pidfile.release()

    # -- runners ---------------------------------------------------------------------
    def _recover(self, now: float) -> None:
        """After a crash: adopt live runners of running jobs, requeue the others."""
        for job in self.registry.running_jobs(host=None):
            pid, started = job["runner_pid"], job["runner_started"]
            found = Runner(job["id"], job["attempt"], pid or 0, started or 0.0, child=False)
            if pid and _alive(pid, started):
                self.runners[job["id"]] = found
            else:
                self._gone(found, "runner lost while the daemon was down", charge=False, now=now)
        # stages suspended for a measurement that ended (or died) while we were down
        self.dispatcher.resume_finished(now)

    def _spawn(self, now: float | None, view: PassView) -> None:
        """Fork runners for queued jobs, at most ``SPAWN_BATCH`` per pass.

        A fork takes milliseconds; forking 64 runners in one pass kept the first ones
        waiting for their first grant until the last was forked (p99 grant latency 440 ms
        in benchmarks/sched_overhead.py). Between batches the pass grants what is asked.
        """
        load = view.host_load  # agents that are up: (running jobs, max_jobs)
        local = self.config.max_jobs if self.config.local_jobs else 0
        free: dict[str | None, int] = {None: local - len(self.runners)}
        free.update({name: most - running for name, (running, most) in load.items()})
        running = len(self.runners) + sum(running for running, _ in load.values())
        strategy = self.dispatcher.strategy_in(view.setting("strategy"))
        limit = strategy.max_active_jobs(local + sum(m for _, m in load.values()))
        room = min(limit - running, SPAWN_BATCH + 1)
        self._spawn_pending = False
        if room <= 0:
            return
        queued = view.queued[:room]
        self._spawn_pending = len(queued) > SPAWN_BATCH
        hosts = self._place(queued[:SPAWN_BATCH], free, load, view.resources)
        if not hosts:
            return
        for job in queued[:SPAWN_BATCH]:
            if job["id"] in hosts and hosts[job["id"]] is None and job["kind"] == JobKind.TVM.value:
                try:
                    self._preload(target_kind(job["spec"]))
                except ValueError:  # a malformed target in an old row: its runner says so
                    traceback.print_exc()
        claimed = self.registry.claim_jobs(list(hosts), now=now, hosts=hosts)
        self._fork([(job_id, n) for job_id, n in claimed.items() if hosts[job_id] is None], now)

    def _place(
        self,
        jobs: list[dict],
        free: dict[str | None, int],
        load: dict[str, tuple[int, int]],
        resources: dict[str, Resource],
    ) -> dict[int, str | None]:
        """Choose a host for each job: one with room whose resources can measure it (any
        host for a remote device), the least busy first, the daemon's own on a tie."""
        if not load:  # no agents: everything runs here
            return {job["id"]: None for job in jobs[: max(0, free[None])]}
        busy = {None: self.config.max_jobs - free[None], **{n: r for n, (r, _) in load.items()}}
        kinds: dict[str | None, set[str]] = {}
        for res in resources.values():
            kinds.setdefault(res.host, set()).add(res.device_kind)
        placed: dict[int, str | None] = {}
        for job in jobs:
            kind = job["device_kind"]
            fits = [
                host
                for host, room in free.items()
                if room > 0
                and (host is not None or self.config.local_jobs)
                and (kind is None or kind.startswith("remote:") or kind in kinds.get(host, ()))
            ]
            if not fits:
                continue
            host = min(fits, key=lambda h: (busy[h], h is not None, h or ""))
            placed[job["id"]] = host
            free[host] -= 1
            busy[host] += 1
        return placed

    def _preload(self, kind: str) -> None:
        """Import what jobs on targets of this TVM kind need, once, before forking."""
        if kind in self._preloaded:
            return
        self._preloaded.add(kind)
        try:
            preload(kind)
        except Exception:
            traceback.print_exc()

    def _suspend_holders(self, leases: list[dict]) -> list[int]:
        """``stop_holders``: called by ``Registry.grant`` while it holds both locks."""
        return stop_holders(leases)

    def _resume_holders(self, leases: list[dict]) -> None:
        continue_holders(leases)

    def _fence_hosts(self, now: float | None) -> None:
        """Fence each agent whose heartbeat (database clock) is older than T: withdraw its
        resources and requeue its jobs, for other hosts to resume."""
        for host in self.registry.stale_hosts(self.config.host_timeout):
            reason = f"host {host['name']} silent for {host['age']:.1f} s"
            print(f"sched daemon: fencing {reason}", flush=True)
            for job_id in self.registry.fence_host(host["name"], reason):
                job = self.registry.job(job_id)
                if job is not None:
                    self.registry.runner_gone(
                        job_id, job["attempt"], reason=reason, charge=False,
                        retry_limit=self.config.retry_limit, now=now,
                    )  # fmt: skip

    def _probe_devices(self, now: float | None) -> None:
        """Probe each down remote device whose backoff has passed; mark it up if it answers."""
        for device in self.registry.devices_to_probe(self.registry.clock() if now is None else now):
            reason = probe(device["rpc"])
            wait = backoff(
                device["failures"], first=self.config.probe_backoff,
                limit=self.config.probe_backoff_max,
            )  # fmt: skip
            self.registry.device_probed(device["name"], reason, backoff=wait, now=now)
            if reason is None:
                print(f"remote device {device['name']} answers again", flush=True)



def stop_holders(leases: list[dict]) -> list[int]:
    """SIGSTOP the runners (and their workers) of ``leases``; the epochs now stopped.

    Called while the registry's two locks are held (``Registry.grant`` on the daemon's
    host, ``Registry.suspend_on_host`` on an agent's), so no runner is stopped inside a
    registry write. Every thread must have stopped before the locks are released: a
    thread still running then could take the gate and stop holding it, and the
    measurement could never record its end. A holder that does not stop within
    ``STOP_WAIT_S`` is continued and left out; one that is gone is left out too (its
    lease is reclaimed as for any dead runner).
    """
    signalled: dict[int, int] = {}
    for lease in leases:
        pid = _signal_holder(lease, signal.SIGSTOP)
        if pid is not None:
            signalled[lease["epoch"]] = pid
    deadline = time.monotonic() + STOP_WAIT_S
    waiting = dict(signalled)
    while waiting and time.monotonic() < deadline:
        waiting = {epoch: pid for epoch, pid in waiting.items() if not _stopped(pid)}
        if waiting:
            time.sleep(0.001)
    for lease in leases:  # would not stop in time: let it go on, unsuspended
        if lease["epoch"] in waiting:
            _signal_holder(lease, signal.SIGCONT)
    return [epoch for epoch in signalled if epoch not in waiting]


def continue_holders(leases: list[dict]) -> None:
    for lease in leases:
        _signal_holder(lease, signal.SIGCONT)


def _log_fault(exc: Exception, last: str | None) -> str:
    """An internal fault: log it and keep serving (the state is in the db). The same fault
    again is not logged again until a pass has succeeded; returns its text."""
    text = f"{type(exc).__name__}: {exc}"
    if text != last:
        traceback.print_exc()
        sys.stderr.flush()
    time.sleep(1.0)
    return text




def _signal_holder(lease: dict, sig: int) -> int | None:
    """Signal the runner holding ``lease`` (its group); its pid, or None if it is gone."""
    pid, started = lease["holder_pid"], lease["holder_started"]
    if not pid or not _alive(pid, started):
        return None
    try:
        _signal_group(pid, sig)
    except ProcessLookupError:
        return None
    return pid


def _stopped(pid: int) -> bool:
    """Are every thread of this process and of its descendants stopped (or gone)?

    A process's own state is its main thread's: the other threads of a SIGSTOPped
    process stop a moment later, each when it next runs. So every thread is checked.
    """
    try:
        pids = [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return True
    return all(_threads_stopped(one) for one in pids)


def _threads_stopped(pid: int) -> bool:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # that thread is gone
        if state not in (b"T", b"Z", b"X"):
            return False
    return True



def main(argv: list[str] | None = None) -> int:
    """Foreground entry point (``python -m sched.daemon``); ``sched start`` calls it."""
    parser = argparse.ArgumentParser(prog="sched-daemon")
    parser.add_argument("--db")
    parser.add_argument("--strategy")
    parser.add_argument("--resource", action="append", default=[])
    parser.add_argument("--max-jobs", type=int, default=64)
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT_S)
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0)
    parser.add_argument("--retry-limit", type=int, default=3)
    parser.add_argument("--preload", action="append", default=[])
    parser.add_argument("--no-preempt", dest="preempt", action="store_false", default=None)
    parser.add_argument("--preempt", dest="preempt", action="store_true")
    parser.add_argument("--no-local-jobs", dest="local_jobs", action="store_false")
    parser.add_argument("--host-timeout", type=float, default=10.0)
    parser.add_argument("--standby", action="store_true")
    args = parser.parse_args(argv)
    db = resolve_db(args.db)
    try:
        check_daemon_limits(args.max_jobs, args.heartbeat, args.heartbeat_timeout)
        check_seconds("--host-timeout", args.host_timeout, above=0.5)
        daemon = Daemon(db, _config(args))
        daemon.initialize()
    except (AlreadyRunning, ValueError) as exc:  # a RegistryError is a ValueError
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    daemon.install_signals()
    print(f"sched daemon {os.getpid()} serving {display(db)} (log {log_file(db)})", flush=True)
    code = daemon.run_forever()
    if daemon.abandoned:  # exit without closing SQLite (see Daemon._abandon)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _config(args: argparse.Namespace) -> DaemonConfig:
    return DaemonConfig(
        strategy=args.strategy,
        resources=detect(args.resource) if args.resource else None,
        max_jobs=args.max_jobs,
        heartbeat=args.heartbeat,
        heartbeat_timeout=args.heartbeat_timeout,
        retry_limit=args.retry_limit,
        preload=args.preload,
        preempt=args.preempt,
        local_jobs=args.local_jobs,
        host_timeout=args.host_timeout,
        standby=args.standby,
    )


if __name__ == "__main__":
    sys.exit(main())
