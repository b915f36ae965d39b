"""States, resource kinds and the plain records passed between registry, strategies and daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypedDict


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class RequestState(StrEnum):
    PENDING = "pending"
    GRANTED = "granted"
    DONE = "done"
    ABANDONED = "abandoned"
    RETRIED = "retried"  # its remote device failed; a new request asks again


class LeaseState(StrEnum):
    ACTIVE = "active"
    RELEASED = "released"
    RECLAIMED = "reclaimed"


class EventKind(StrEnum):
    SUBMIT = "submit"
    REQUEST = "request"
    GRANT = "grant"
    START = "start"
    END = "end"
    RELEASE = "release"
    RECLAIM = "reclaim"
    RUNNER_START = "runner_start"
    RUNNER_EXIT = "runner_exit"
    JOB_DONE = "job_done"
    JOB_FAILED = "job_failed"
    JOB_CANCELLED = "job_cancelled"
    KILL = "kill"
    DAEMON_START = "daemon_start"
    DAEMON_STOP = "daemon_stop"
    STRATEGY = "strategy"
    DEVICE_ADD = "device_add"
    DEVICE_REMOVE = "device_remove"
    DEVICE_DOWN = "device_down"
    DEVICE_UP = "device_up"
    SUSPEND = "suspend"  # a CPU stage paused (SIGSTOP) while a CPU target is measured
    RESUME = "resume"
    HOST_UP = "host_up"  # an agent registered its host
    HOST_FENCED = "host_fenced"  # an agent's heartbeat stopped: its jobs were requeued
    HOST_DOWN = "host_down"  # an agent stopped


class ResourceKind(StrEnum):
    CPU = "cpu"  # a pool of cpu slots, shared up to its capacity
    GPU = "gpu"  # an exclusive accelerator
    CPU_DEVICE = "cpu-device"  # the cores a CPU target is measured on, exclusive
    DEVICE = "device"  # any other exclusive measurement device
    REMOTE = "remote"  # one TVM RPC server (direct address, or a tracker and its key)


class JobKind(StrEnum):
    MOCK = "mock"
    TVM = "tvm"


@dataclass(frozen=True)
class Resource:
    name: str
    kind: ResourceKind
    capacity: int
    exclusive: bool
    # remote devices only: the kind jobs ask for, the RPC address, and why it is down
    group: str | None = None
    rpc: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    down: str | None = None
    host: str | None = None  # the agent's host it belongs to; None: the daemon's own

    @property
    def device_kind(self) -> str:
        """What a job's ``device_kind`` must be to measure on this resource."""
        if self.kind is ResourceKind.REMOTE:
            return remote_kind(self.group or "")
        return self.kind.value


REMOTE_PREFIX = "remote:"


def remote_kind(group: str) -> str:
    """A job's device kind for remote devices of ``group`` (kept apart from local kinds)."""
    return f"{REMOTE_PREFIX}{group}"


@dataclass(frozen=True)
class Pending:
    """A stage request waiting for a grant, as a strategy sees it."""

    request_id: int
    job_id: int
    kind: str
    needs: dict[str, int]
    requested_at: float
    priority: int = 0
    device_kind: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    host: str | None = None  # where the job runs (an agent's name); None: the daemon's host


@dataclass(frozen=True)
class Held:
    """An active lease: which job holds which concrete resources since when."""

    epoch: int
    job_id: int
    kind: str
    resources: dict[str, int]
    granted_at: float
    started_at: float | None = None
    suspended: bool = False  # paused (SIGSTOP) for a measurement
    # the measurement's request; the units are lent to it only while its lease is active
    suspended_for: int | None = None
    request_id: int | None = None
    # suspended by an agent (on its host) before the measurement was granted: its units
    # are lent to the measurement's request while that is pending, too
    remote_suspend: bool = False


@dataclass(frozen=True)
class Grant:
    request_id: int
    job_id: int
    epoch: int
    resources: dict[str, int]


class Fenced(Exception):
    """A runner acted with a stale epoch or attempt: it must stop at once."""


# -- what the registry and tvmsched.api return (superb reads these) ------------------------
class JobRecord(TypedDict):
    """One job: a row of the registry's ``jobs`` table, JSON columns decoded."""

    id: int
    name: str | None
    kind: str  # a JobKind value
    spec: dict[str, Any]  # {"mock": ...}, or a TVM job's (see jobs.py)
    priority: int
    device_kind: str | None
    state: JobState
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    stage: str | None
    wait_reason: str | None
    progress: dict[str, Any]  # the job's progress(): trials_done, trials_total, ...
    best_latency_ms: float | None
    result: dict[str, Any] | None  # the job's result() once done: TuningJob's or MockJob's
    error: str | None
    retries: int
    attempt: int
    stages_done: int
    runner_pid: int | None
    runner_started: float | None
    cancel_requested: bool
    parent_id: int | None


class StageRow(TypedDict):
    """One stage's hold on one resource (``analysis.resource_intervals``)."""

    job_id: int
    stage: str  # a StageKind value
    epoch: int
    resource: str
    amount: int  # the units held
    start: float  # epoch seconds
    end: float


class Usage(TypedDict):
    """One resource's utilisation (``analysis.utilisation``)."""

    busy: float
    idle: float
    busy_seconds: float
    capacity: int
