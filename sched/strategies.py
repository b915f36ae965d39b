"""Scheduling strategies behind one interface: ``decide(snapshot) -> Decision``.

A strategy sees the pending stage requests, the resources and the active leases at
``now`` and answers which requests to grant, with which concrete resources, and why
the others wait.  It does no I/O, so the daemon and the simulator share it unchanged.

Placement rules shared by all strategies (``place``):
- ``cpu: n`` takes n slots of the cpu pool (clamped to its capacity);
- ``device: 1`` takes one free exclusive device of the job's device kind;
- a stage on a ``cpu-device`` also claims every cpu slot, so no other job's CPU work
  runs while a CPU target is measured (it would distort the timings);
- a job placed on an agent's host (``Pending.host``) uses only that host's pool and
  local devices (``cpu@box-a``, ``cpu-device@box-a``); remote RPC devices serve any host.

Preemption (``preemption``): when such a stage waits only for other jobs' stages of
``PREEMPTIBLE_KINDS`` (search, build, compile), the controlled strategies grant it at
once and name those stages' leases to suspend.  The daemon stops their runners
(SIGSTOP) before the grant is visible and continues them (SIGCONT) when the
measurement's lease ends, so a short measurement never waits behind a long search and
no core idles meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .models import Held, Pending, Resource, ResourceKind

DEVICE_KINDS = (ResourceKind.GPU, ResourceKind.CPU_DEVICE, ResourceKind.DEVICE)
DEFAULT_STAGE_SECONDS = 1.0
# stages that may be suspended for a measurement: pure CPU work that holds no lock
# another job needs (update and prepare write tuning records, so they are left running;
# compile only reads them, and in WAL mode a paused reader blocks no writer)
PREEMPTIBLE_KINDS = frozenset({"search", "build", "compile"})


@dataclass
class Snapshot:
    resources: dict[str, Resource]
    pending: list[Pending]
    leases: list[Held]
    now: float
    # (per (job, stage kind), per stage kind) mean seconds; only for strategies that ask.
    estimates: tuple[dict[tuple[int, str], float], dict[str, float]] | None = None
    preempt: bool = False  # may a CPU-target measurement suspend other jobs' CPU stages?

    def free(self) -> dict[str, int]:
        """Units free now; a suspended lease's units are lent to the stage it paused for,
        only while that stage's lease is active (``lending``)."""
        free = {name: r.capacity for name, r in self.resources.items()}
        lent = lending(self.leases)
        for lease in self.leases:
            if lease.epoch in lent:
                continue
            for name, amount in lease.resources.items():
                if name in free:
                    free[name] -= amount
        return free

    def holders(self) -> dict[str, list[int]]:
        held: dict[str, list[int]] = {}
        for lease in self.leases:
            for name in lease.resources:
                held.setdefault(name, []).append(lease.job_id)
        return held


def lending(leases: list[Held]) -> set[int]:
    """Epochs of the suspended leases whose units are lent: those whose suspender (the
    measurement's request) holds an active lease among ``leases``. (A lease an agent
    suspended ahead of the grant lends its units to that request alone: ``reserved``.)

    Once the measurement has ended, a suspended lease holds its units again, though its
    runner is still stopped: the next pass resumes it, and a grant made meanwhile on its
    units would put one stage too many on the cores (issue 12).
    """
    active = {lease.request_id for lease in leases if lease.request_id is not None}
    return {
        lease.epoch
        for lease in leases
        if lease.suspended and lease.suspended_for is not None and lease.suspended_for in active
    }


def reserved(leases: list[Held], request_id: int) -> dict[str, int]:
    """The units that leases an agent suspended for the still ungranted ``request_id``
    lend to it, and to no other request (``remote_suspend``)."""
    active = {lease.request_id for lease in leases if lease.request_id is not None}
    units: dict[str, int] = {}
    for lease in leases:
        if lease.remote_suspend and lease.suspended_for == request_id and request_id not in active:
            for name, amount in lease.resources.items():
                units[name] = units.get(name, 0) + amount
    return units


@dataclass
class Decision:
    grants: list[tuple[Pending, dict[str, int]]] = field(default_factory=list)
    waits: dict[int, str] = field(default_factory=dict)  # job id -> why it waits
    suspend: dict[int, list[int]] = field(default_factory=dict)  # request id -> epochs to pause


def _matches(resource: Resource, device_kind: str | None, host: str | None = None) -> bool:
    if resource.kind is ResourceKind.REMOTE:  # only for jobs that ask for its kind
        return resource.device_kind == device_kind  # on any host
    if resource.kind not in DEVICE_KINDS or resource.host != host:
        return False  # a local device measures only the jobs on its own host
    return device_kind is None or resource.kind.value == device_kind


def cpu_pool(snap: Snapshot, host: str | None) -> Resource | None:
    """The cpu pool of ``host`` (an agent's name; None: the daemon's own host)."""
    return next(
        (r for r in snap.resources.values() if r.kind is ResourceKind.CPU and r.host == host),
        None,
    )


def stage_device_kind(p: Pending) -> str | None:
    """The device kind this stage measures on: the job's, unless the stage says otherwise
    (a remote job's evaluate and finalize stages run on the scheduler's host)."""
    return p.info.get("device_kind", p.device_kind)


def wanted(
    p: Pending,
    snap: Snapshot,
    free: dict[str, int],
    *,
    check: bool = True,
    blocked: frozenset[str] | set[str] = frozenset(),
) -> tuple[dict[str, int] | None, str]:
    """Concrete resources for ``p``; with ``check``, only if free now (else None and why)."""
    extra = reserved(snap.leases, p.request_id)
    if extra:  # what an agent suspended for p is free for p alone
        free = {name: units + extra.get(name, 0) for name, units in free.items()}
    pool = cpu_pool(snap, p.host)
    want: dict[str, int] = {}
    cpus = p.needs.get("cpu", 0)
    if cpus:
        if pool is None:
            return None, "no cpu resource is configured"
        want[pool.name] = min(cpus, pool.capacity)
    if p.needs.get("device", 0):
        device_kind = stage_device_kind(p)
        candidates = [r for r in snap.resources.values() if _matches(r, device_kind, p.host)]
        if not candidates:
            kind = device_kind or "measurement"
            how = "sched device add" if kind.startswith("remote:") else "--resource"
            return None, f"no {kind} device is configured (add one with {how})"
        up = [r for r in candidates if r.down is None]
        if not up:
            down = "; ".join(f"{r.name}: {r.down}" for r in candidates)
            return None, f"no {device_kind} device is up ({down})"
        usable = [r for r in up if not check or (free[r.name] >= 1 and r.name not in blocked)]
        if not usable:
            holders = snap.holders()
            busy = ", ".join(
                f"{r.name} held by job {holders[r.name][0]}"
                if r.name in holders
                else f"{r.name} reserved"
                if r.down is None
                else f"{r.name} down"
                for r in candidates
            )
            return None, f"waiting for a device ({busy})"
        device = usable[0]
        want[device.name] = 1
        if device.kind is ResourceKind.CPU_DEVICE and pool is not None:
            want[pool.name] = pool.capacity  # measuring a CPU target owns every core
    if check and pool is not None and pool.name in want:
        need = want[pool.name]
        if pool.name in blocked or free[pool.name] < need:
            why = (
                "reserved for an earlier request"
                if pool.name in blocked
                else (f"{free[pool.name]} free")
            )
            return None, f"waiting for {need} cpu slot(s) ({why})"
    return want, ""


def preemption(
    p: Pending, snap: Snapshot, free: dict[str, int], blocked: set[str]
) -> tuple[dict[str, int], list[Held]] | None:
    """Resources for a CPU-target stage that waits only for other jobs' preemptible
    stages, and the leases to suspend while it runs; None if it must wait after all.

    Only the cpu pool may be taken this way: the device itself must be free and not
    reserved, and every running holder of the pool must be a preemptible stage of
    another job (a stage that holds a device, even a GPU, is never paused mid-timing).
    """
    if not snap.preempt or not p.needs.get("device"):
        return None
    pool = cpu_pool(snap, p.host)  # only the measurement's own host's stages
    if pool is None:
        return None
    lent = lending(snap.leases)
    holders = [
        lease
        for lease in snap.leases
        if lease.epoch not in lent and lease.resources.get(pool.name, 0) > 0
    ]
    if not holders or any(
        lease.suspended  # suspended for a measurement that has ended: resumed next pass
        or lease.job_id == p.job_id
        or lease.kind not in PREEMPTIBLE_KINDS
        or set(lease.resources) != {pool.name}
        for lease in holders
    ):
        return None
    lent = sum(lease.resources[pool.name] for lease in holders)
    trial = dict(free)
    trial[pool.name] = free[pool.name] + lent
    want, _ = wanted(p, snap, trial, blocked=blocked - {pool.name})
    if want is None or not any(
        snap.resources[name].kind is ResourceKind.CPU_DEVICE for name in want
    ):
        return None
    return want, holders


class Strategy:
    """Base: grant in order while resources are free, reserving for blocked requests."""

    name: ClassVar[str] = "base"
    uses_estimates: ClassVar[bool] = False
    oversubscribes: ClassVar[bool] = False  # True only for the uncontrolled strategy
    preempts: ClassVar[bool] = True  # may suspend CPU stages for a CPU-target measurement

    def max_active_jobs(self, limit: int) -> int:
        return limit

    def order(self, snap: Snapshot) -> list[Pending]:
        return sorted(snap.pending, key=lambda p: (-p.priority, p.requested_at, p.request_id))

    def eligible(self, snap: Snapshot) -> tuple[set[int] | None, str]:
        return None, ""

    def decide(self, snap: Snapshot) -> Decision:
        decision = Decision()
        free = snap.free()
        blocked: set[str] = set()
        allowed, not_allowed_why = self.eligible(snap)
        for p in self.order(snap):
            if allowed is not None and p.job_id not in allowed:
                decision.waits[p.job_id] = not_allowed_why
                continue
            want, why = wanted(p, snap, free, blocked=blocked)
            if want is None and self._preempt(p, snap, free, blocked, decision):
                continue
            if want is None:
                decision.waits[p.job_id] = why
                # Reserve what it waits for: later requests may not starve it.
                full, _ = wanted(p, snap, free, check=False)
                blocked.update(full or {})
                continue
            for name, amount in want.items():
                free[name] -= amount
            decision.grants.append((p, want))
        return decision

    def _preempt(
        self,
        p: Pending,
        snap: Snapshot,
        free: dict[str, int],
        blocked: set[str],
        decision: Decision,
    ) -> bool:
        """Grant ``p`` by suspending the CPU stages in its way, if it may (``preemption``)."""
        if not self.preempts:
            return False
        found = preemption(p, snap, free, blocked)
        if found is None:
            return False
        want, holders = found
        for lease in holders:
            for name, amount in lease.resources.items():
                free[name] += amount  # lent to p until it ends
        for name, amount in want.items():
            free[name] -= amount
        decision.grants.append((p, want))
        decision.suspend[p.request_id] = [lease.epoch for lease in holders]
        return True


class Interleaved(Strategy):
    """Load-aware: exclusive devices never shared, cpu never oversubscribed, gaps filled."""

    name = "interleaved"


class Sequential(Strategy):
    """One job at a time, start to end: the safe default of plain TVM practice."""

    name = "sequential"

    def max_active_jobs(self, limit: int) -> int:
        return 1

    def eligible(self, snap: Snapshot) -> tuple[set[int] | None, str]:
        holding = {lease.job_id for lease in snap.leases}
        if holding:
            current = min(holding)
        elif snap.pending:
            current = min(snap.pending, key=lambda p: (-p.priority, p.job_id)).job_id
        else:
            return None, ""
        return {current}, f"sequential: job {current} runs first"


class Synchronous(Strategy):
    """No control: every stage runs as soon as it is asked for, capacity ignored."""

    name = "synchronous"
    oversubscribes = True
    preempts = False

    def decide(self, snap: Snapshot) -> Decision:
        decision = Decision()
        free = snap.free()
        for p in self.order(snap):
            want, why = wanted(p, snap, free, check=False)
            if want is None:
                decision.waits[p.job_id] = why
            else:
                decision.grants.append((p, want))
        return decision


class Predictive(Strategy):
    """Interleaved, ordered by learned stage durations to keep the bottleneck busy.

    Device stages go first (the device is the resource that must never idle while a
    measurement waits); the rest go longest-remaining-work first, which shortens the
    tail of the batch (the makespan) the way Johnson's rule orders a two-machine
    flow shop.  Durations are means from the event log, per job, then per stage kind.
    """

    name = "predictive"
    uses_estimates = True

    def _estimate(self, snap: Snapshot, job_id: int, kind: str) -> float:
        per_job, per_kind = snap.estimates or ({}, {})
        return per_job.get((job_id, kind), per_kind.get(kind, DEFAULT_STAGE_SECONDS))

    def remaining(self, snap: Snapshot, p: Pending) -> float:
        kinds = ("search", "build", "measure", "update")
        per_round = sum(self._estimate(snap, p.job_id, k) for k in kinds)
        rounds_left = max(0, int(p.info.get("rounds", 1)) - int(p.info.get("round", 1)))
        return rounds_left * per_round + self._estimate(snap, p.job_id, p.kind)

    def order(self, snap: Snapshot) -> list[Pending]:
        def key(p: Pending) -> tuple:
            device_first = 0 if p.needs.get("device") else 1
            return (-p.priority, device_first, -self.remaining(snap, p), p.request_id)

        return sorted(snap.pending, key=key)

    def decide(self, snap: Snapshot) -> Decision:
        """Grant in order, with EASY backfilling on learned durations.

        The base strategy reserves whatever a blocked request waits for, so a measure
        stage that needs every core (a CPU target) leaves freed cores idle until the
        last long stage on them ends. Here a later stage may use a reserved resource if
        its estimated duration ends before the blocked request could start anyway (the
        shadow time, from the running leases' estimated ends).
        """
        decision = Decision()
        free = snap.free()
        shadow: dict[str, float] = {}  # reserved resource -> when its waiter could start
        for p in self.order(snap):
            want, why = wanted(p, snap, free)
            if want is None and self._preempt(p, snap, free, set(shadow), decision):
                continue
            if want is None:
                decision.waits[p.job_id] = why
                full, _ = wanted(p, snap, free, check=False)
                start = self._shadow_time(snap, full or {}, free)
                for name in full or {}:
                    shadow[name] = min(shadow.get(name, start), start)
                continue
            limits = [shadow[name] for name in want if name in shadow]
            if limits and snap.now + self._estimate(snap, p.job_id, p.kind) > min(limits):
                decision.waits[p.job_id] = "reserved for an earlier request (too long to backfill)"
                continue
            for name, amount in want.items():
                free[name] -= amount
            decision.grants.append((p, want))
        return decision

    def _shadow_time(self, snap: Snapshot, want: dict[str, int], free: dict[str, int]) -> float:
        """Estimated time at which ``want`` is free, from the running leases' estimates."""
        latest = snap.now
        for name, amount in want.items():
            missing = amount - free.get(name, 0)
            if missing <= 0:
                continue
            ends = sorted(
                (
                    max(
                        snap.now,
                        (lease.started_at or lease.granted_at)
                        + self._estimate(snap, lease.job_id, lease.kind),
                    ),
                    held,
                )
                for lease in snap.leases
                for res, held in lease.resources.items()
                if res == name
            )
            for end, held in ends:
                missing -= held
                latest = max(latest, end)
                if missing <= 0:
                    break
        return latest


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Sequential, Synchronous, Interleaved, Predictive)
}


def get_strategy(name: str | Strategy) -> Strategy:
    """A strategy by name or by object, as MetaSchedule picks its parts."""
    if isinstance(name, Strategy):
        return name
    try:
        return STRATEGIES[name]()
    except KeyError:
        known = ", ".join(STRATEGIES)
        raise ValueError(f"unknown strategy {name!r}; choose one of {known}") from None
