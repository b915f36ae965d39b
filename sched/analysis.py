"""Figures computed from the event log: intervals per resource, utilisation, makespan."""

from __future__ import annotations

from typing import Any

from .models import Resource


def resource_intervals(
    stage_intervals: list[dict[str, Any]], *, held: bool = False, now: float | None = None
) -> list[dict[str, Any]]:
    """One row per (lease, resource): job_id, stage, resource, amount, start, end.

    ``held`` uses grant..release (when the resource was reserved); otherwise
    start..end (when the stage ran), falling back to the lease times when a runner died.
    Open intervals end at ``now``, or are skipped when ``now`` is None.  A lease that was
    suspended for a measurement gives one row per piece around its ``paused`` windows:
    meanwhile its units were lent to the measurement.
    """
    rows = []
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


def makespan(rows: list[dict[str, Any]]) -> float:
    if not rows:
        return 0.0
    return max(r["end"] for r in rows) - min(r["start"] for r in rows)


def utilisation(
    rows: list[dict[str, Any]], resources: dict[str, Resource]
) -> dict[str, dict[str, float]]:
    """Busy and idle fractions of each resource's capacity over the makespan."""
    span = makespan(rows)
    out: dict[str, dict[str, float]] = {}
    for name, res in resources.items():
        busy = sum((r["end"] - r["start"]) * r["amount"] for r in rows if r["resource"] == name)
        frac = busy / (span * res.capacity) if span > 0 else 0.0
        out[name] = {
            "busy": round(frac, 4),
            "idle": round(max(0.0, 1 - frac), 4),
            "busy_seconds": round(busy, 4),
            "capacity": res.capacity,
        }
    return out


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
