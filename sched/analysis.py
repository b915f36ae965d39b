"""Figures computed from the event log: intervals per resource, utilisation, makespan and
its lower bound. The one definition of each; docs/sched.md describes them."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .models import Resource, ResourceKind, StageRow, Usage


def resource_intervals(
    stage_intervals: list[dict[str, Any]], *, held: bool = False, now: float | None = None
) -> list[StageRow]:
    """One row per (lease, resource): job_id, stage, resource, amount, start, end.

    ``held`` uses grant..release (when the resource was reserved); otherwise
    start..end (when the stage ran), falling back to the lease times when a runner died.
    Open intervals end at ``now``, or are skipped when ``now`` is None.  A lease that was
    suspended for a measurement gives one row per piece around its ``paused`` windows:
    meanwhile its units were lent to the measurement.
    """
    rows: list[StageRow] = []
    for it in stage_intervals:
        pieces = _pieces(it, held=held, now=now)
        for name, amount in it["resources"].items():
            for start, end in pieces:
                rows.append(
                    {
                        "job_id": it["job_id"],
                        "stage": it["stage"],
                        "epoch": it["epoch"],
                        "resource": name,
                        "amount": amount,
                        "start": start,
                        "end": end,
                    }
                )
    return rows


def _pieces(it: dict[str, Any], *, held: bool, now: float | None) -> list[tuple[float, float]]:
    """The lease's [start, end] interval with its paused windows cut out."""
    if held:
        start, end = it["granted"], it["released"]
    else:
        start = it["started"] if it["started"] is not None else it["granted"]
        end = it["ended"] if it["ended"] is not None else it["released"]
    if end is None:
        if now is None:
            return []
        end = now
    pieces = []
    for paused_from, paused_to in sorted(it.get("paused") or []):
        paused_to = end if paused_to is None else min(paused_to, end)
        if paused_from > start:
            pieces.append((start, min(paused_from, end)))
        start = max(start, paused_to)
    if end > start or not pieces:
        pieces.append((min(start, end), end))
    return pieces


def makespan(rows: list[StageRow]) -> float:
    """Seconds from the first start to the last end of the rows."""
    if not rows:
        return 0.0
    return max(r["end"] for r in rows) - min(r["start"] for r in rows)


def utilisation(rows: list[StageRow], capacities: Mapping[str, int]) -> dict[str, Usage]:
    """Each resource's busy fraction: the unit-seconds held over capacity x makespan.

    ``busy = sum((end - start) * amount) / (capacity * makespan)``, over the rows of that
    resource (``resource_intervals``: one per stage and resource, with the units it held).
    A cpu pool of 4 slots with one 1-slot stage running all along is 25 % busy; an
    exclusive device is busy for the time any stage held it. Above 1 only where stages
    were granted more than the capacity (the ``synchronous`` strategy's oversubscription).
    ``idle`` is ``1 - busy``, at least 0.
    """
    span = makespan(rows)
    out: dict[str, Usage] = {}
    for name, capacity in capacities.items():
        busy = sum((r["end"] - r["start"]) * r["amount"] for r in rows if r["resource"] == name)
        frac = busy / (span * capacity) if span > 0 else 0.0
        out[name] = {
            "busy": round(frac, 4),
            "idle": round(max(0.0, 1 - frac), 4),
            "busy_seconds": round(busy, 4),
            "capacity": capacity,
        }
    return out


def capacities(resources: Mapping[str, Resource]) -> dict[str, int]:
    return {name: res.capacity for name, res in resources.items()}


ANY_DEVICE = "any"  # a stage that may run on any exclusive device


@dataclass(frozen=True)
class StageWork:
    """What one stage asks of the resources, for ``makespan_lower_bound``."""

    job: Hashable
    seconds: float
    cpu_slots: float = 0  # the cpu slots it holds
    device: str | None = None  # the kind of exclusive device it holds (ANY_DEVICE: any)


def makespan_lower_bound(stages: Iterable[StageWork], resources: Iterable[Resource]) -> float:
    """The shortest makespan any schedule could reach, in seconds; the largest of:

    - the longest job: a job's stages run one after another;
    - cpu slot-seconds over the cpu slots: a stage holds its slots for its duration, and
      a stage on a ``cpu-device`` holds every slot (it measures on those very cores);
    - for each kind of exclusive device, the seconds of the stages on it over the number
      of devices of that kind (one stage at a time on each); and all device seconds over
      all devices.
    """
    resources = list(resources)
    slots = sum(r.capacity for r in resources if r.kind is ResourceKind.CPU) or 1
    devices = Counter(r.kind.value for r in resources if r.exclusive)
    per_job: dict[Hashable, float] = defaultdict(float)
    device_seconds: dict[str, float] = defaultdict(float)
    slot_seconds = 0.0
    for stage in stages:
        per_job[stage.job] += stage.seconds
        held = slots if stage.device == ResourceKind.CPU_DEVICE.value else stage.cpu_slots
        slot_seconds += stage.seconds * min(held, slots)
        if stage.device is not None:
            device_seconds[stage.device] += stage.seconds
    terms = [max(per_job.values(), default=0.0), slot_seconds / slots]
    terms += [s / devices[k] for k, s in device_seconds.items() if devices.get(k)]
    if device_seconds and devices:
        terms.append(sum(device_seconds.values()) / sum(devices.values()))
    return max(terms)


def exclusive_overlaps(
    rows: list[dict[str, Any]], resources: dict[str, Resource], *, eps: float = 1e-9
) -> list[tuple[dict, dict]]:
    """Pairs of intervals that overlap on an exclusive resource (should be empty)."""
    bad = []
    for name, res in resources.items():
        if not res.exclusive:
            continue
        mine = sorted((r for r in rows if r["resource"] == name), key=lambda r: r["start"])
        for a, b in zip(mine, mine[1:], strict=False):
            if b["start"] < a["end"] - eps:
                bad.append((a, b))
    return bad


def peak_usage(rows: list[dict[str, Any]], name: str) -> int:
    """The most units of ``name`` in use at any instant."""
    points = []
    for r in rows:
        if r["resource"] == name:
            points += [(r["start"], 1, r["amount"]), (r["end"], 0, -r["amount"])]
    level = peak = 0
    for _, _, delta in sorted(points):
        level += delta
        peak = max(peak, level)
    return peak
