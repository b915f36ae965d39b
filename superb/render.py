"""Rich rendering for the CLI: the run's progress bars and the tables. No logic lives here."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .matrix import RunPoint
from .report import Report, cell, header
from .results import PointStatus


class RichReporter:
    """Two bars: the runs of this invocation, and the current run's own progress."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.runs = self.current = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def start(self, *, total: int, skipped: int) -> None:
        if skipped:
            self.console.print(f"resuming: {skipped} point(s) already recorded are skipped")
        self.runs = self.progress.add_task("runs", total=total)
        self.current = self.progress.add_task("", total=None, visible=False)

    def point_started(self, point: RunPoint, number: int) -> None:
        self.progress.update(self.runs, description=f"run {number}: {point.label()}")
        self.progress.update(
            self.current, description="  starting", total=None, completed=0, visible=True
        )

    def point_progress(self, fraction: float | None, text: str) -> None:
        if fraction is None:
            self.progress.update(self.current, description=f"  {text}", total=None)
        else:
            self.progress.update(
                self.current,
                description=f"  {text}",
                total=100,
                completed=round(100 * min(1.0, fraction)),
            )

    def point_finished(
        self, point: RunPoint, status: PointStatus, seconds: float, error: str | None
    ) -> None:
        self.progress.advance(self.runs)
        self.progress.update(self.current, visible=False)
        colour = "green" if status is PointStatus.DONE else "red"
        line = f"[{colour}]{status.value}[/] {point.label()} ({seconds:.1f} s)"
        if error:
            line += f"\n    [red]{error}[/]"
        self.progress.console.print(line, markup=True, highlight=False)


def report_table(report: Report, title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold")
    for column in report.columns:
        numeric = column not in report.group_by
        table.add_column(header(column), justify="right" if numeric else "left")
    for row in report.rows:
        table.add_row(*(cell(row.get(c), c) for c in report.columns))
    return table


def failures_table(report: Report) -> Table:
    table = Table(title="failed points", header_style="bold")
    for column in ("experiment", "strategy", "jobs", "workload", "repeat", "error"):
        table.add_column(column, overflow="fold")
    for failure in report.failures:
        table.add_row(
            *(
                cell(failure.get(c))
                for c in ("experiment", "strategy", "jobs", "workload", "repeat", "error")
            )
        )
    return table


def plan_table(plan: list[dict]) -> Table:
    table = Table(header_style="bold")
    for column in (
        "#",
        "experiment",
        "strategy",
        "jobs",
        "workload",
        "target",
        "trials",
        "per round",
        "seed",
        "repeat",
        "status",
        "estimate",
    ):
        table.add_column(column, justify="right" if column in ("#", "estimate") else "left")
    for number, item in enumerate(plan, 1):
        table.add_row(
            str(number),
            item["experiment"],
            item["strategy"],
            str(item["jobs"]),
            item["workload"],
            item["target"],
            str(item["trials"]),
            str(item["per_round"]),
            str(item["seed"]),
            str(item["repeat"]),
            item["status"],
            duration(item["estimate_s"]),
        )
    return table


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
