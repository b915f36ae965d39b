"""Figures derived from a timeline of stage events: busy/idle fractions, stage totals.

The makespan and the utilisation are sched's (``tvmsched.analysis``): one definition.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from tvmsched import analysis

from .outcome import Event


def rows(events: list[Event]) -> list[dict]:
    """The events as sched's interval rows (``tvmsched.analysis.resource_intervals``)."""
    return [
        {"job_id": e.job_index, "stage": e.kind, "resource": e.resource, "amount": e.amount,
         "start": e.start, "end": e.end}
        for e in events
    ]  # fmt: skip


def makespan(events: list[Event]) -> float:
    return analysis.makespan(rows(events))


def utilisation(events: list[Event], capacities: Mapping[str, int]) -> dict[str, dict]:
    """Each resource's busy and idle fraction, as sched defines it (capacity-weighted:
    ``tvmsched.analysis.utilisation``); ``capacities`` default to 1 unit."""
    held = {e.resource for e in events}
    units = {name: capacities.get(name, 1) for name in sorted(held)}
    return {
        name: {"busy": use["busy"], "idle": use["idle"]}
        for name, use in analysis.utilisation(rows(events), units).items()
    }


def stage_seconds(events: list[Event], job_index: int | None = None) -> dict[str, float]:
    """Seconds per stage kind; an event that holds two resources counts once."""
    seen: set[tuple[int, str, float, float]] = set()
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if job_index is not None and event.job_index != job_index:
            continue
        ident = (event.job_index, event.kind, event.start, event.end)
        if ident in seen:
            continue
        seen.add(ident)
        totals[event.kind] += event.end - event.start
    return dict(totals)


def is_device(resource: str) -> bool:
    """Whether a resource is a measurement device rather than CPU slots."""
    name = resource.lower()
    return not (
        name == "cpu"
        or name.startswith("cpu:")
        or name.startswith("cpu-slot")
        or name.startswith("cpu_slot")
        or name == "cpus"
    )
