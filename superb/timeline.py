"""Figures derived from a timeline of stage events: busy/idle fractions, stage totals."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from .outcome import Event


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def makespan(events: list[Event]) -> float:
    if not events:
        return 0.0
    return max(e.end for e in events) - min(e.start for e in events)


def utilisation(events: list[Event]) -> dict[str, dict[str, float]]:
    """Each resource's busy and idle fraction of the makespan (time it was held at all)."""
    span = makespan(events)
    if span <= 0:
        return {}
    by_resource: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for event in events:
        by_resource[event.resource].append((event.start, event.end))
    result = {}
    for resource, intervals in sorted(by_resource.items()):
        busy = min(1.0, union_length(intervals) / span)
        result[resource] = {"busy": busy, "idle": 1.0 - busy}
    return result


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
