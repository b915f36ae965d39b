"""A Gantt chart of stages per resource and job, drawn from the event log (Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STAGE_COLOURS = {
    "prepare": "#8c564b",
    "search": "#1f77b4",
    "build": "#ff7f0e",
    "measure": "#d62728",
    "update": "#2ca02c",
    "compile": "#17becf",
    "finalize": "#9467bd",
    "evaluate": "#e377c2",
}


def draw(rows: list[dict[str, Any]], output: str | Path, *, title: str = "sched timeline") -> Path:
    """One lane per resource (cpu pools get one sub-lane per concurrent stage)."""
    output = writable_output(output)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lanes, placed = place_in_lanes(rows)
    fig, ax = plt.subplots(figsize=(12, 1 + 0.45 * max(1, len(lanes))))
    origin = min((r["start"] for r in rows), default=0.0)
    for lane, row in placed:
        _bar(ax, lane, row, origin)
    _decorate(ax, lanes, title)
    fig.tight_layout()
    try:
        fig.savefig(output)
    except OSError as exc:
        raise ValueError(
            f"cannot write {output} ({exc.strerror or exc}); choose another --output"
        ) from None
    finally:
        plt.close(fig)
    return output


def writable_output(output: str | Path) -> Path:
    """The chart's path, checked before drawing: a .png or .svg file whose directory
    exists, or is one new level under an existing one (made then); never a whole chain
    of directories from a mistyped path."""
    output = Path(output)
    if output.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"timeline output {output.name!r} must end in .png or .svg")
    parent = output.parent
    if not parent.is_dir():
        if not parent.parent.is_dir():
            raise ValueError(
                f"cannot write {output}: the directory {parent.parent} does not exist; "
                f"create it first or choose another --output"
            )
        try:
            parent.mkdir()
        except OSError as exc:
            raise ValueError(
                f"cannot create {parent} ({exc.strerror}); choose another --output"
            ) from None
    if output.is_dir():
        raise ValueError(f"{output} is a directory; give a file name ending in .png or .svg")
    return output


def place_in_lanes(rows: list[dict[str, Any]]) -> tuple[list[str], list[tuple[int, dict]]]:
    """Lane names, and each row with its lane's index: a resource's first free sub-lane
    (``cpu``, ``cpu#1``, ...), so stages sharing a cpu pool do not overlap in the chart."""
    lanes: list[str] = []
    placed: list[tuple[int, dict[str, Any]]] = []
    ends: dict[str, list[float]] = {}
    for row in sorted(rows, key=lambda r: (r["resource"], r["start"])):
        slots = ends.setdefault(row["resource"], [])
        slot = next((i for i, end in enumerate(slots) if end <= row["start"] + 1e-9), None)
        if slot is None:
            slots.append(row["end"])
            slot = len(slots) - 1
        else:
            slots[slot] = row["end"]
        lane = f"{row['resource']}#{slot}" if slot else row["resource"]
        if lane not in lanes:
            lanes.append(lane)
        placed.append((lanes.index(lane), row))
    return lanes, placed


def _bar(ax, lane: int, row: dict[str, Any], origin: float) -> None:
    """One stage: a bar in its stage's colour, labelled with its job id."""
    width = row["end"] - row["start"]
    colour = STAGE_COLOURS.get(row["stage"], "#7f7f7f")
    ax.barh(lane, width, left=row["start"] - origin, color=colour, edgecolor="black",
            linewidth=0.3)  # fmt: skip
    if width > 0:
        ax.text(row["start"] - origin + width / 2, lane, str(row["job_id"]), ha="center",
                va="center", fontsize=6, clip_on=True)  # fmt: skip


def _decorate(ax, lanes: list[str], title: str) -> None:
    from matplotlib.patches import Patch

    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first stage")
    ax.set_title(title)
    ax.legend(
        handles=[Patch(color=c, label=s) for s, c in STAGE_COLOURS.items()],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
    )
