"""The promises of a schedule, checked over the registry's event log.

``check_events`` replays the log in commit order (event ids: SQLite serialises the
writers, so the ids order every transaction) and, after each event that can start
holding something (a grant or a resume), checks the leases then *running*: granted, not
yet released or reclaimed, and not suspended (a suspended lease's units are cut out from
its ``suspend`` event to its ``resume``, as in ``analysis.resource_intervals``):

- ``over-grant``: the units of a shared resource (the cpu pool) held by running leases
  exceed its capacity;
- ``exclusive-overlap``: two running leases hold one exclusive device;
- ``distorted-measurement``: under ``interleaved`` and ``predictive``, a measurement (a
  lease on a ``cpu-device``) runs while a CPU stage of another job runs on its host.

The first two are checked under every strategy but ``synchronous``, which ignores
capacities by design. Checking between events, not at timestamps, makes the check exact
under an injected clock too, where a release and the next grant often share a time.
Capacities are the registry's resources as they are now.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .models import EventKind, Resource, ResourceKind

DEFAULT_STRATEGY = "interleaved"  # as in dispatch: the strategy before any is set
CAPACITY_KEPT = frozenset({"sequential", "interleaved", "predictive"})
MEASURES_ALONE = frozenset({"interleaved", "predictive"})


class Rule(StrEnum):
    OVER_GRANT = "over-grant"
    EXCLUSIVE_OVERLAP = "exclusive-overlap"
    DISTORTED_MEASUREMENT = "distorted-measurement"


@dataclass(frozen=True)
class Violation:
    rule: Rule
    event_id: int  # the event after which it first held
    ts: float
    resource: str
    epochs: tuple[int, ...]  # the running leases involved
    detail: str


@dataclass(frozen=True)
class _Lease:
    job_id: int
    resources: dict[str, int]


def check_events(
    events: list[dict[str, Any]],
    resources: dict[str, Resource],
    *,
    strategy: str | None = None,
) -> list[Violation]:
    """Every violation in ``events`` (``Registry.events()``), each reported once, at the
    event after which it first held. ``strategy`` fixes the strategy; None follows the
    log's ``strategy`` events (``interleaved`` before the first)."""
    current = strategy or DEFAULT_STRATEGY
    running: dict[int, _Lease] = {}
    suspended: dict[int, _Lease] = {}
    found: dict[tuple, Violation] = {}
    for event in sorted(events, key=lambda e: e["id"]):
        kind, epoch = event["kind"], event["epoch"]
        if kind == EventKind.STRATEGY and strategy is None:
            current = (event.get("detail") or {}).get("strategy", current)
        elif kind == EventKind.GRANT:
            running[epoch] = _Lease(event["job_id"], dict(event["resources"] or {}))
        elif kind == EventKind.SUSPEND and epoch in running:
            suspended[epoch] = running.pop(epoch)
        elif kind == EventKind.RESUME and epoch in suspended:
            running[epoch] = suspended.pop(epoch)
        elif kind in (EventKind.RELEASE, EventKind.RECLAIM):
            running.pop(epoch, None)
            suspended.pop(epoch, None)
        if kind in (EventKind.GRANT, EventKind.RESUME):
            for violation in _violations(running, resources, current, event):
                key = (violation.rule, violation.resource, violation.epochs)
                found.setdefault(key, violation)
    return sorted(found.values(), key=lambda v: v.event_id)


def check_registry(registry, *, strategy: str | None = None) -> list[Violation]:
    """``check_events`` over a registry's whole event log and its resources."""
    return check_events(registry.events(), registry.resources(), strategy=strategy)


def _violations(
    running: dict[int, _Lease],
    resources: dict[str, Resource],
    strategy: str,
    event: dict[str, Any],
) -> list[Violation]:
    out: list[Violation] = []
    if strategy in CAPACITY_KEPT:
        out += _capacity(running, resources, event)
    if strategy in MEASURES_ALONE:
        out += _measurements(running, resources, event)
    return out


def _capacity(
    running: dict[int, _Lease], resources: dict[str, Resource], event: dict[str, Any]
) -> list[Violation]:
    out = []
    for name, res in resources.items():
        holders = {
            e: lease.resources[name] for e, lease in running.items() if name in lease.resources
        }
        used = sum(holders.values())
        if res.exclusive and len(holders) > 1:
            rule, detail = Rule.EXCLUSIVE_OVERLAP, f"{len(holders)} leases hold {name}"
        elif not res.exclusive and used > res.capacity:
            rule, detail = Rule.OVER_GRANT, f"{used} units of {name} held, capacity {res.capacity}"
        else:
            continue
        out.append(Violation(rule, event["id"], event["ts"], name, tuple(sorted(holders)), detail))
    return out


def _measurements(
    running: dict[int, _Lease], resources: dict[str, Resource], event: dict[str, Any]
) -> list[Violation]:
    devices = {n for n, r in resources.items() if r.kind is ResourceKind.CPU_DEVICE}
    out = []
    for epoch, lease in running.items():
        device = next((n for n in lease.resources if n in devices), None)
        if device is None:
            continue
        host = resources[device].host  # only that host's cpu stages distort it
        pools = {n for n, r in resources.items() if r.kind is ResourceKind.CPU and r.host == host}
        others = sorted(
            e
            for e, other in running.items()
            if other.job_id != lease.job_id and pools & set(other.resources)
        )
        if others:
            detail = f"job {lease.job_id} measures on {device} while leases {others} run on the cpu"
            out.append(
                Violation(
                    Rule.DISTORTED_MEASUREMENT,
                    event["id"],
                    event["ts"],
                    device,
                    (epoch, *others),
                    detail,
                )
            )
    return out
