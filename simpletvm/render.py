"""Rendering helpers for the CLI (rich tables, progress), kept apart from the core."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import UserInputError
from .stages import StageKind

console = Console()
err_console = Console(stderr=True)


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def log_path() -> Path:
    from .paths import state_dir

    return state_dir() / "simpletvm.log"


def run_cli(fn: Callable[[], None]) -> None:
    """Run a command body: bad input -> one line and exit 2; a fault -> exit 1 and a log."""
    try:
        fn()
    except UserInputError as exc:
        err_console.print(f"[red]Error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        err_console.print("Interrupted; records measured so far are kept in the database.")
        raise SystemExit(130) from None
    except (SystemExit, BrokenPipeError):
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        path = log_path()
        with open(path, "a") as fh:
            traceback.print_exc(file=fh)
        err_console.print(f"[red]Internal error:[/red] {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''} "
                          f"(details in {path})", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


def tuning_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("trials · best {task.fields[best]} ms · {task.fields[stage]} "
                   "[dim]{task.fields[task_name]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def result_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"{result.get('model', 'model')} on {result.get('target', '?')}")
    for col in ("untuned ms", "tuned ms", "onnxruntime ms", "speed-up", "trials",
                "tuning s"):
        table.add_column(col, justify="right")
    speedup = result.get("speedup")
    table.add_row(fmt_ms(result.get("untuned_ms")), fmt_ms(result.get("tuned_ms")),
                  fmt_ms(result.get("onnxruntime_ms")),
                  f"{speedup:.2f}x" if speedup else "-", str(result.get("trials", 0)),
                  f"{result.get('tuning_seconds', 0.0):.1f}")
    return table


def stage_table(stage_seconds: dict[str, float]) -> Table:
    table = Table(title="time per stage")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for kind in StageKind:
        if kind.value in stage_seconds:
            table.add_row(kind.value, f"{stage_seconds[kind.value]:.2f}")
    return table


def rows_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[fmt_ms(row[c]) if isinstance(row[c], float) else str(row[c])
                        for c in columns])
    return table
