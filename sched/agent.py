"""``sched agent``: one per host beside the daemon's, running the jobs placed on it.

The agent registers its host and resources (``cpu@NAME``, ``cpu-device@NAME``) in the
registry, renews its heartbeat there (on the database's clock), forks the runners of the
jobs the daemon places on it, reaps them and kills the silent ones. It decides nothing:
the daemon places jobs, grants stages and fences hosts.

Failure model (docs/multihost.md):
- its runners die with it (``PR_SET_PDEATHSIG``), so a killed agent leaves no runner;
- the daemon fences an agent whose heartbeat is older than the host timeout T: its
  resources are withdrawn and its jobs requeued on other hosts (a new attempt fences
  every later write of the old runners);
- an agent that cannot renew its heartbeat for T/2 kills its own runners
  (self-fencing), so that a partitioned runner never keeps a device that the daemon
  may grant again after T; one that finds itself fenced does the same, then registers
  again and goes on serving.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import runner
from .daemon import continue_holders, stop_holders
from .host import HOST_TIMEOUT_KEY, Runner, RunnerHost, _signal_group
from .jobs import preload, target_kind
from .limits import HEARTBEAT_S, check_daemon_limits
from .models import JobKind, Resource
from .paths import agent_pid_file, display, ensure_private_dir, local_base, locator, resolve_db
from .pidfile import PidFile, running_pid
from .registry import Registry
from .registry.stages import GRANT_CHANNEL, PLACE_CHANNEL, SUSPEND_CHANNEL
from .resources import cpu_count, parse_resource

HOST_TIMEOUT_S = 10.0  # the default T: a host silent this long is fenced
# the longest wait between passes: what an agent acts on wakes it sooner (a placement or
# a grant NOTIFY, a suspension asked, a runner's stage done, a runner's exit); what is
# left is housekeeping, which runs every 0.25 s anyway (cancels, silent runners)
IDLE_WAIT_S = 0.25


class AgentRunning(RuntimeError):
    pass


@dataclass
class AgentConfig:
    name: str
    resources: list[Resource] = field(default_factory=list)
    max_jobs: int = 64
    retry_limit: int = 3
    heartbeat: float = HEARTBEAT_S  # runners' lease heartbeats
    heartbeat_timeout: float = 10.0  # a lease silent this long gets its runner killed
    preload: list[str] = field(default_factory=list)


def host_resources(name: str, texts: list[str]) -> list[Resource]:
    """``--resource`` values as this host's resources, named ``NAME@host``."""
    found: list[Resource] = []
    for text in texts or [f"cpu={cpu_count()}"]:
        found += parse_resource(text)
    if not any(r.kind.value == "cpu" for r in found):
        found += parse_resource(f"cpu={cpu_count()}")
    return [
        Resource(f"{r.name}@{name}", r.kind, r.capacity, r.exclusive, host=name) for r in found
    ]


class Agent(RunnerHost):
    die_with_host = True

    def __init__(self, db: str | Path, config: AgentConfig) -> None:
        self.db = locator(db)
        self.db_path = local_base(self.db)
        self.config = config
        self.host = config.name
        self.registry = Registry(self.db)
        self.pidfile = PidFile(agent_pid_file(self.db, config.name))
        self.runners: dict[int, Runner] = {}
        self.stopping = False
        self._wake_r = self._wake_w = -1
        self.listener = None
        self.started = 0.0
        self.timeout = HOST_TIMEOUT_S
        self._last_beat = 0.0  # monotonic time of the last renewed heartbeat
        self._beats_stop = threading.Event()
        self._beats: threading.Thread | None = None
        self._fenced = False  # the heartbeat thread found this host fenced
        self._cut_off = False  # ... or could not renew for T/2
        self._notices: list[str] = []
        self._last_housekeeping = 0.0
        self._preloaded: set[str] = set()
        # what the next pass must read, as the NOTIFYs heard say: "suspend" (asked to),
        # "resume" (an ended measurement), "placed" (a job placed here); all at first
        self._due: set[str] = {"suspend", "resume", "placed"}
        self._suspended = False  # stages of this host are suspended (for a measurement)

    # -- life cycle ------------------------------------------------------------------
    def initialize(self) -> None:
        ensure_private_dir(self.db_path.parent)
        self.registry.check()
        if not self.pidfile.acquire():
            pid = running_pid(self.pidfile.path)
            raise AgentRunning(
                f"agent {self.host!r} already runs here for {display(self.db)} (pid {pid})"
            )
        self.started = psutil.Process().create_time()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # grants for its runners, jobs placed on it, suspensions asked (None on SQLite)
        channels = [GRANT_CHANNEL, PLACE_CHANNEL, SUSPEND_CHANNEL]
        self.listener = self.registry.store.listener(channels)
        for kind in self.config.preload:
            try:
                preload(kind)
            except Exception:
                traceback.print_exc()
        self._register()
        self._beats = threading.Thread(target=self._beat, name="host-heartbeat", daemon=True)
        self._beats.start()
        threading.Thread(target=self._watch, name="self-fence", daemon=True).start()

    def _register(self) -> None:
        stored = self.registry.get_setting(HOST_TIMEOUT_KEY)
        self.timeout = float(stored) if stored else HOST_TIMEOUT_S
        self.registry.register_host(
            self.host, pid=os.getpid(), started=self.started, max_jobs=self.config.max_jobs,
            resources=self.config.resources, timeout=self.timeout,
        )  # fmt: skip
        self._last_beat = time.monotonic()

    def _check_registry(self) -> None:
        """Nothing to check: the daemon watches the registry itself."""

    def run_forever(self) -> int:
        while not self.stopping:
            try:
                self.loop()
            except Exception:
                traceback.print_exc()
                sys.stderr.flush()
                time.sleep(0.5)
            self._wait(IDLE_WAIT_S)
        self.shutdown()
        return 0

    def _wait(self, timeout: float) -> None:
        """Until a runner or signal writes to our pipe, or a NOTIFY is heard. A grant is
        passed on at once to the runners it names; what the next pass must look at is
        noted (``_due``): a pass reads the registry only for what it was woken for, so
        a grant to another host's runners costs this agent no query."""
        for channel, payload in self._wait_for_wakeup(timeout):
            if channel == SUSPEND_CHANNEL and payload == self.host:
                self._due.add("suspend")
            elif channel == PLACE_CHANNEL and self.host in payload.split(","):
                self._due.add("placed")
            elif channel == GRANT_CHANNEL:
                for job_id in payload.split(","):
                    found = self.runners.get(int(job_id)) if job_id.isdigit() else None
                    if found is not None and found.wake_fd is not None:
                        runner.notify(found.wake_fd)

    def loop(self, now: float | None = None) -> None:
        """One pass: reap, renew the heartbeat (or fence itself), fork what is placed here.

        Without a listener (SQLite) every pass looks at everything; with one, a pass
        looks at what woke it, and the housekeeping pass (every 0.25 s) at everything."""
        given, now = now, time.time() if now is None else now
        stamp = now if given is not None or self.registry.backend == "sqlite" else None
        fenced = self._fenced  # read first: its notice is queued before it is set
        while self._notices:  # so the log says why before the host registers again
            print(self._notices.pop(0), flush=True)
        before = len(self.runners)
        self._reap(stamp)
        if len(self.runners) < before:
            self._due.add("placed")  # room for a job placed while there was none
        if fenced:  # its runners are gone: register again, and serve
            self._register()
            self._fenced = False
        if self._cut_off:  # no new runner while the database is out of reach
            return
        due, self._due = self._due, set()
        if self.listener is None or now - self._last_housekeeping >= 0.25:
            self._last_housekeeping = now
            due = {"suspend", "resume", "placed"}
            self._kill_silent(stamp)
            self._cancel_flagged(stamp)
        self._preempt(stamp, due)
        room = self.config.max_jobs - len(self.runners)
        if room > 0 and "placed" in due:
            placed = [
                job
                for job in self.registry.assigned_jobs(self.host)
                if job["id"] not in self.runners
            ][:room]
            for job in placed:  # import what the job needs once, before forking
                if job["kind"] == JobKind.TVM.value:
                    self._preload(job["spec"])
            self._fork([(job["id"], job["attempt"]) for job in placed], stamp)

    def _preempt(self, now: float | None, due: set[str]) -> None:
        """Suspend what the daemon asks (a CPU measurement on this host), confirming each
        in the registry; continue what was suspended for a measurement that has ended.
        While stages of this host stay suspended every pass looks for ended ones (the
        measuring runner's last write wakes this agent), else only when ``due``."""
        if "suspend" in due and self.registry.suspend_on_host(self.host, stop_holders, now=now):
            self._suspended = True
        if not (self._suspended or "resume" in due):
            return
        ended, waiting = self.registry.suspensions_on_host(self.host)
        self._suspended = waiting > 0
        if ended:
            continue_holders(ended)  # first: a crash in between leaves them resumable
            self.registry.resume_leases([lease["epoch"] for lease in ended], now=now)

    def _preload(self, spec: dict) -> None:
        try:
            kind = target_kind(spec)
        except ValueError:  # a malformed target in an old row: its runner says so
            return
        if kind not in self._preloaded:
            self._preloaded.add(kind)
            try:
                preload(kind)
            except Exception:
                traceback.print_exc()

    def _beat(self) -> None:
        """The heartbeat thread: renew every T/4, whatever the main loop is busy with (a
        first TVM import takes seconds); note when the daemon has fenced this host."""
        while not self._beats_stop.wait(self.timeout / 4):
            mono = time.monotonic()
            try:
                renewed = self.registry.host_heartbeat(self.host, os.getpid())
            except Exception:  # the database is out of reach: ``_watch`` counts the time
                continue
            if not renewed:  # the daemon fenced us: our jobs run elsewhere now
                if not self._fenced:
                    self._fence_self("the daemon fenced this host")
                    self._fenced = True
                continue
            self._last_beat = mono
            self._cut_off = False

    def _watch(self) -> None:
        """The self-fence, on this host's own clock, in a thread that never waits for the
        database: T/2 without a renewed heartbeat kills every runner, whether renewing
        failed or still waits for an answer (a partition that drops packets leaves a
        call waiting, and no error comes before the daemon has granted the stages again)."""
        while not self._beats_stop.wait(self.timeout / 8):
            silent = time.monotonic() - self._last_beat
            if silent < self.timeout / 2:
                continue
            first = not self._cut_off
            self._cut_off = True
            if self.runners:
                self._fence_self(f"no heartbeat renewed for {silent:.1f} s", say=first)

    def _fence_self(self, reason: str, *, say: bool = True) -> None:
        """Kill every runner at once (their reaping records them once the database
        answers again; the daemon may already have requeued their jobs). The main loop
        says why, in the agent's log (a thread does not print while the loop may fork)."""
        if say:
            self._notices.append(f"sched agent {self.host}: {reason}; killed its runners")
        while True:
            try:
                runners = list(self.runners.values())
                break
            except RuntimeError:  # the main loop changed the dict meanwhile
                continue
        for found in runners:
            try:
                _signal_group(found.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def shutdown(self) -> None:
        """Stop: no more jobs placed here, running ones requeued, resources withdrawn."""
        self._beats_stop.set()
        if self._beats is not None:
            self._beats.join(timeout=5)
        try:
            self.registry.fence_host(self.host, "agent stopped", state="stopped")
        except Exception:
            traceback.print_exc()
        for found in list(self.runners.values()):
            self._kill(found)
            self._gone(found, f"agent {self.host} stopped", charge=False)
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        self.registry.close()
        if self.listener is not None:
            self.listener.close()
        self.pidfile.release()


def main(argv: list[str] | None = None, *, db: str | Path | None = None) -> int:
    """Foreground entry point (``python -m sched.agent``, the registry from ``--db`` or
    ``SCHED_DB``); ``sched agent`` calls it with ``db``, never putting a URL in argv."""
    parser = argparse.ArgumentParser(prog="sched-agent")
    parser.add_argument("--db")
    parser.add_argument("--name", required=True)
    parser.add_argument("--resource", action="append", default=[])
    parser.add_argument("--max-jobs", type=int, default=64)
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0)
    parser.add_argument("--retry-limit", type=int, default=3)
    parser.add_argument("--preload", action="append", default=[])
    args = parser.parse_args(argv)
    db = resolve_db(db or args.db)
    try:
        check_agent_name(args.name)
        check_daemon_limits(args.max_jobs, HEARTBEAT_S, args.heartbeat_timeout)
        config = AgentConfig(
            name=args.name,
            resources=host_resources(args.name, args.resource),
            max_jobs=args.max_jobs,
            heartbeat_timeout=args.heartbeat_timeout,
            retry_limit=args.retry_limit,
            preload=args.preload,
        )
        agent = Agent(db, config)
        agent.initialize()
    except (AgentRunning, ValueError) as exc:  # a RegistryError is a ValueError
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    agent.install_signals()
    print(f"sched agent {args.name} ({os.getpid()}) serving {display(db)}", flush=True)
    return agent.run_forever()


def check_agent_name(name: str) -> None:
    """An agent's name becomes part of resource names (``cpu@NAME``) and file names."""
    import re

    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,62}", name or ""):
        raise ValueError(
            f"agent name {name!r} must start with a letter and hold only letters, digits, "
            f"'.', '_' and '-' (at most 63), e.g. --name box-a"
        )


__all__ = ["Agent", "AgentConfig", "host_resources", "main"]

if __name__ == "__main__":
    sys.exit(main())
