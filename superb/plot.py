"""Figures from the results store, as PNG and SVG (matplotlib, Agg backend).

- gantt: resource use over time, one panel per strategy: shows idle time and interleaving;
- convergence: best latency against trials and against wall time, per job;
- bars: makespan and tuned latency per strategy and job count.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from . import SuperbError
from .report import STRATEGY_ORDER, axis_values, build_report
from .results import PointStatus, ResultsDB
from .timeline import is_device

FORMATS = ("png", "svg")
# Axes that identify one figure; strategy (and jobs, for bars) vary inside it.
FIGURE_AXES = ("experiment", "workload", "target", "trials", "per_round", "seed")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80]


def _save(fig, output: Path, name: str, written: list[Path]) -> None:
    for fmt in FORMATS:
        path = output / f"{name}.{fmt}"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)
    _pyplot().close(fig)


def _strategy_rank(strategy: str) -> int:
    return STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)


def _figure_names(groups: dict[tuple, list], prefix: str) -> dict[tuple, str]:
    """Short file names: the experiment, plus whatever else tells its figures apart."""
    names = {}
    for key in groups:
        siblings = [k for k in groups if k[0] == key[0]]
        parts = [str(key[0])] + [
            f"{FIGURE_AXES[i]}{key[i]}"
            for i in range(1, len(key))
            if len({k[i] for k in siblings}) > 1
        ]
        names[key] = _slug(f"{prefix}-" + "-".join(parts))
    return names


def write_plots(
    db: ResultsDB, output: str | Path, *, experiments: list[str] | None = None
) -> list[Path]:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    points = db.points(experiments=experiments, statuses=[PointStatus.DONE])
    if not points:
        raise SuperbError(f"{db.path} holds no finished points to plot; run `superb run` first")
    written: list[Path] = []
    gantt(db, points, output, written)
    convergence(db, points, output, written)
    bars(db, points, output, written, experiments)
    return written


def _first_repeats(points: list[dict]) -> dict[tuple, dict[tuple[int, str], dict]]:
    """Per figure: (jobs, strategy) -> the point of the lowest repeat."""
    figures: dict[tuple, dict[tuple[int, str], dict]] = defaultdict(dict)
    for point in sorted(points, key=lambda p: p["params"]["repeat"]):
        values = axis_values(point)
        figure = tuple(values[a] for a in FIGURE_AXES)
        figures[figure].setdefault((values["jobs"], values["strategy"]), point)
    return figures


def _lanes(events: list[dict]) -> list[tuple[str, list[dict]]]:
    """One lane per device; CPU events spread over as many lanes as overlap needs."""
    by_resource: dict[str, list[dict]] = defaultdict(list)
    for event in events:
        by_resource[event["resource"]].append(event)
    lanes: list[tuple[str, list[dict]]] = []
    for resource in sorted(by_resource, key=lambda r: (not is_device(r), r)):
        slots: list[list[dict]] = []
        for event in sorted(by_resource[resource], key=lambda e: e["start"]):
            for slot in slots:
                if slot[-1]["end"] <= event["start"] + 1e-9:
                    slot.append(event)
                    break
            else:
                slots.append([event])
        for index, slot in enumerate(slots):
            label = resource if len(slots) == 1 else f"{resource}[{index}]"
            lanes.append((label, slot))
    return lanes


def gantt(db: ResultsDB, points: list[dict], output: Path, written: list[Path]) -> None:
    plt = _pyplot()
    events_by_point: dict[str, list[dict]] = defaultdict(list)
    for event in db.events([p["key"] for p in points]):
        events_by_point[event["point_key"]].append(event)
    figures = _first_repeats(points)
    names = _figure_names(figures, "gantt")
    colours = plt.get_cmap("tab10")
    for figure, members in figures.items():
        for jobs in sorted({j for j, _ in members}):
            chosen = sorted(
                (
                    (s, p)
                    for (j, s), p in members.items()
                    if j == jobs and events_by_point[p["key"]]
                ),
                key=lambda item: _strategy_rank(item[0]),
            )
            if not chosen:
                continue
            fig, axes = plt.subplots(
                len(chosen),
                1,
                sharex=True,
                squeeze=False,
                figsize=(11, 1.0 + 1.3 * len(chosen) + 0.25 * jobs),
            )
            for ax, (strategy, point) in zip(axes[:, 0], chosen, strict=True):
                lanes = _lanes(events_by_point[point["key"]])
                for row, (_, lane) in enumerate(lanes):
                    for event in lane:
                        ax.broken_barh(
                            [(event["start"], event["end"] - event["start"])],
                            (row - 0.4, 0.8),
                            facecolor=colours(event["job_index"] % 10),
                            edgecolor="black",
                            linewidth=0.3,
                            hatch="///" if event["kind"] == "measure" else None,
                        )
                ax.set_yticks(range(len(lanes)), [label for label, _ in lanes])
                ax.invert_yaxis()
                span = point["makespan_s"] or point["wall_s"] or 0.0
                ax.set_title(f"{strategy}: makespan {span:.1f} s", fontsize=9, loc="left")
            axes[-1, 0].set_xlabel("seconds since the point started")
            handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i % 10)) for i in range(jobs)]
            fig.legend(
                handles,
                [f"job {i}" for i in range(jobs)],
                loc="upper right",
                ncol=min(jobs, 6),
                fontsize=8,
            )
            fig.suptitle(
                f"{figure[0]}: resource use, {jobs} job(s) (hatched: measure)",
                fontsize=10,
                x=0.01,
                ha="left",
            )
            _save(fig, output, f"{names[figure]}-jobs{jobs}", written)


def convergence(db: ResultsDB, points: list[dict], output: Path, written: list[Path]) -> None:
    plt = _pyplot()
    series: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in db.convergence([p["key"] for p in points]):
        if row["best_ms"] is not None:
            series[row["point_key"]][row["job_index"]].append(row)
    figures = _first_repeats(points)
    names = _figure_names(figures, "convergence")
    for figure, members in figures.items():
        for jobs in sorted({j for j, _ in members}):
            chosen = sorted(
                ((s, p) for (j, s), p in members.items() if j == jobs and series[p["key"]]),
                key=lambda item: _strategy_rank(item[0]),
            )
            if not chosen:
                continue
            fig, (by_trials, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
            for strategy, point in chosen:
                labels = point["params"]["models"] or ["mock"] * jobs
                for job_index, rows in sorted(series[point["key"]].items()):
                    label = f"{strategy} j{job_index} {labels[job_index % len(labels)]}"
                    best = [r["best_ms"] for r in rows]
                    by_trials.step(
                        [r["trials"] for r in rows],
                        best,
                        where="post",
                        marker="o",
                        markersize=3,
                        label=label,
                    )
                    by_time.step(
                        [r["seconds"] for r in rows],
                        best,
                        where="post",
                        marker="o",
                        markersize=3,
                        label=label,
                    )
            by_trials.set_xlabel("trials")
            by_time.set_xlabel("tuning wall time (s)")
            for ax in (by_trials, by_time):
                ax.set_ylabel("best latency so far (ms, log scale)")
                ax.set_yscale("log")  # models of very different sizes share the axes
                ax.grid(alpha=0.3)
            by_time.legend(fontsize=7, loc="upper right")
            fig.suptitle(f"{figure[0]}: convergence, {jobs} job(s)", fontsize=10)
            _save(fig, output, f"{names[figure]}-jobs{jobs}", written)


def bars(
    db: ResultsDB,
    points: list[dict],
    output: Path,
    written: list[Path],
    experiments: list[str] | None,
) -> None:
    """Per figure (experiment and target): makespan, each model's tuned latency and the
    device idle %, as bars per strategy, grouped by job count."""
    plt = _pyplot()
    report = build_report(db, experiments=experiments, group_by=[*FIGURE_AXES, "strategy", "jobs"])
    figures: dict[tuple, list[dict]] = defaultdict(list)
    for row in report.rows:
        if row["points"]:
            figures[tuple(row[a] for a in FIGURE_AXES)].append(row)
    names = _figure_names(figures, "bars")
    latency_columns = [
        c
        for c in report.columns
        if c.endswith(" ms") and not c.endswith("untuned_ms") and not c.endswith("onnxruntime_ms")
    ]
    for figure, rows in figures.items():
        panels = _bar_panels(rows, latency_columns)
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
        for ax, (column, title) in zip(axes[0], panels, strict=True):
            _bar_panel(ax, rows, column, title)
        axes[0, 0].legend(fontsize=8)
        fig.suptitle(f"{figure[0]}: medians over repeats", fontsize=10)
        _save(fig, output, names[figure], written)


def _bar_panels(rows: list[dict], latency_columns: list[str]) -> list[tuple[str, str]]:
    """(column, title) of each panel: makespan, the latencies the rows have, device idle."""
    latencies = [
        (c, f"{c[:-3]}: tuned latency (ms)")
        for c in latency_columns
        if any(r.get(c) is not None for r in rows)
    ]
    return [("makespan_s", "makespan (s)"), *latencies, ("device_idle_pct", "device idle (%)")]


def _bar_panel(ax, rows: list[dict], column: str, title: str) -> None:
    """One bar per strategy and job count; a latency panel also draws the untuned line."""
    strategies = sorted({r["strategy"] for r in rows}, key=_strategy_rank)
    jobs_values = sorted({r["jobs"] for r in rows})
    width = 0.8 / max(len(strategies), 1)
    for offset, strategy in enumerate(strategies):
        heights = [_value(rows, column, strategy, jobs) for jobs in jobs_values]
        ax.bar([i + offset * width for i in range(len(jobs_values))], heights, width,
               label=strategy)  # fmt: skip
    if column.endswith(" ms"):  # a latency panel: show the untuned baseline
        untuned = [r.get(column.replace(" ms", " untuned_ms")) for r in rows]
        untuned = [u for u in untuned if u is not None]
        if untuned:
            ax.axhline(min(untuned), color="grey", linestyle="--", label="untuned")
    ax.set_xticks(
        [i + width * (len(strategies) - 1) / 2 for i in range(len(jobs_values))],
        [f"{j} jobs" for j in jobs_values],
    )
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def _value(rows: list[dict], column: str, strategy: str, jobs: int) -> float:
    """The row's value for this strategy and job count (0 where there is none)."""
    found = (r[column] for r in rows if r["strategy"] == strategy and r["jobs"] == jobs)
    return next((v for v in found if v is not None), 0.0)
