"""Rendering helpers for the CLI (rich tables, progress), kept apart from the core."""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .check import OutputMismatchError
from .errors import UserInputError
from .stages import StageKind


class _RealStdout:
    """A file that writes to the command's real stdout, wherever ``run_cli`` has put it.

    While a command body runs, file descriptor 1 and ``sys.stdout`` point at stderr (see
    ``stdout_to_stderr``); tables and JSON written here still reach the real stdout.
    Outside a command body it is simply the current ``sys.stdout``.
    """

    def _target(self):
        return _real_stdout[-1] if _real_stdout else sys.stdout

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        return self._target().fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._target(), "encoding", None) or "utf-8"


_real_stdout: list = []  # the real stdout while stdout_to_stderr is active (0 or 1 item)
real_stdout = _RealStdout()
console = Console(file=real_stdout)
err_console = Console(stderr=True)


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_json(obj: Any) -> None:
    """Write ``obj`` to the real stdout, the only thing a ``--json`` command writes there."""
    real_stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    real_stdout.flush()


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers: printf output to a pipe waits there until exit."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # pragma: no cover - no C library
        pass


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout meanwhile to stderr, except ``real_stdout``.

    TVM prints to stdout from Python (the ONNX frontend) and from C++ (printf, std::cout),
    which would corrupt ``--json`` output and tables piped to another program. So
    ``sys.stdout`` becomes ``sys.stderr`` and, at the OS level, file descriptor 1 becomes
    a duplicate of 2, which catches the C++ prints too; ``real_stdout`` (``print_json``,
    ``console``) writes to a saved duplicate of the original descriptor 1. When
    ``sys.stdout`` is not descriptor 1 (a test's CliRunner), the original ``sys.stdout``
    object is the real stdout.
    """
    if _real_stdout:  # already inside one: stdout is redirected
        yield
        return
    original = sys.stdout
    try:
        original.flush()
    except (OSError, ValueError):
        pass
    _flush_c_stdio()
    try:
        on_fd1 = original.fileno() == 1
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        on_fd1 = False
    try:
        saved = os.dup(1)
    except OSError:  # descriptor 1 is closed: nothing to protect
        saved = None
    real = original
    if saved is not None:
        try:
            os.dup2(2, 1)
        except OSError:  # descriptor 2 is closed
            os.close(saved)
            saved = None
        else:
            if on_fd1:
                real = open(saved, "w", encoding=getattr(original, "encoding", None) or "utf-8",
                            errors=getattr(original, "errors", None) or "strict",
                            closefd=False, buffering=1)
    _real_stdout.append(real)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = original
        _real_stdout.pop()
        with contextlib.suppress(OSError, ValueError):
            real.flush()
        if real is not original:
            with contextlib.suppress(OSError, ValueError):
                real.close()  # closefd=False: the saved descriptor stays open
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        _flush_c_stdio()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def log_path() -> Path:
    from .paths import state_dir

    return state_dir() / "simpletvm.log"


def run_cli(fn: Callable[[], None]) -> None:
    """Run a command body: bad input -> one line and exit 2; a fault -> exit 1 and a log.

    The body runs inside ``stdout_to_stderr``: only ``print_json`` and ``console`` reach
    stdout, so ``--json`` output stays parseable whatever TVM prints.
    """
    with stdout_to_stderr():
        _run_body(fn)


def _run_body(fn: Callable[[], None]) -> None:
    try:
        fn()
    except UserInputError as exc:
        err_console.print(f"[red]Error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except OutputMismatchError as exc:  # the tuning's fault, not the user's: status 1
        err_console.print(f"[red]Error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        err_console.print("Interrupted; records measured so far are kept in the database.")
        raise SystemExit(130) from None
    except (SystemExit, BrokenPipeError):
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        path = log_path()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(path, flags, 0o600), "a") as fh:  # private, never a link
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
    """One row per measure, so that the table fits a narrow terminal."""
    table = Table(title=f"{result.get('model', 'model')} on {result.get('target', '?')}",
                  show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    speedup = result.get("speedup")
    tuned = result.get("tuned_ms")
    ort = result.get("onnxruntime_ms")
    rows = [("untuned ms", fmt_ms(result.get("untuned_ms"))),
            ("tuned ms", fmt_ms(tuned)),
            ("onnxruntime ms", fmt_ms(ort)),
            ("speed-up over untuned", f"{speedup:.2f}x" if speedup else "-"),
            ("tuned / onnxruntime", f"{tuned / ort:.2f}x" if tuned and ort else "-"),
            ("exported build", result.get("exported") or "-"),
            ("output check", check_text(result.get("output_check"))),
            ("threads (TVM and onnxruntime)", str(result.get("threads") or "-")),
            ("trials", str(result.get("trials", 0))),
            ("tuning s", f"{result.get('tuning_seconds', 0.0):.1f}")]
    if result.get("sla_ms") is not None:
        rows.append(("SLA", f"{fmt_ms(result['sla_ms'])} ms, "
                            f"{'met' if result.get('sla_met') else 'missed'}"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def check_text(check: dict[str, Any] | None) -> str:
    if not check:
        return "not run"
    verdict = "ok" if check["ok"] else "FAILED"
    return f"{verdict} (max err {check['max_abs_err']:.1e})"


def export_line(result: dict[str, Any]) -> str:
    """Which build was exported, and why, in one line."""
    kept = result.get("tasks_kept_default") or []
    note = (f"; {len(kept)} task(s) kept their default schedule (faster than any record)"
            if kept else "")
    if result.get("exported") == "untuned":
        what = "the untuned build (it was faster than the tuned one)"
    else:
        what = "the tuned build"
    where = f"Exported {what} to {result['artifact']}" if result.get("artifact") else (
        f"Built {what}; nothing exported (no --output)")
    return where + note + "."


def learning_line(result: dict[str, Any]) -> str | None:
    """What the job took from earlier jobs: the shared cost model and transferred
    schedules (None when it took nothing)."""
    parts = []
    shared = result.get("shared_model") or {}
    if shared.get("loaded_records"):
        parts.append(f"shared cost model trained on {shared['loaded_records']} records "
                     f"(loaded in {shared['load_seconds']:.2f} s)")
    if shared.get("trainings"):
        last = shared["trainings"][-1]
        parts.append(f"retrained it {len(shared['trainings'])}x, last on "
                     f"{last['trained_on']} records in {last['seconds']:.1f} s")
    moved = result.get("transfer") or {}
    if moved.get("tasks"):
        parts.append(f"{moved['tasks']} task(s) seeded with {moved['candidates']} schedules "
                     f"from similar workloads, {moved['measured']} measured")
    return ("Learned from earlier jobs: " + "; ".join(parts) + ".") if parts else None


def plan_table(plan) -> Table:
    """The plan printed before tuning: budget, then the tasks that matter."""
    from .engine import UNBOUNDED_TRIALS

    if plan.time_budget_seconds is not None:
        budget = f"{plan.time_budget_seconds / 60:.1f} min of tuning"
        if plan.trials < UNBOUNDED_TRIALS:
            budget += f" or {plan.trials} trials"
    else:
        budget = f"{plan.trials} trials, about {plan.estimated_seconds / 60:.1f} min (estimate)"
    winograd = (f"; {plan.winograd_convs} 3x3 convolutions as Winograd"
                if plan.winograd_convs else "")
    table = Table(title=f"Plan: {len(plan.tasks)} tasks, {plan.significant} significant; "
                        f"{budget}; coverage {plan.coverage_trials} trials, then search by "
                        f"expected gain{winograd}", title_justify="left")
    for col in ("task", "weight", "MFLOP", "share", "planned trials"):
        table.add_column(col, justify="right" if col != "task" else "left")
    shown = sorted(plan.tasks, key=lambda t: -t.share)
    for t in shown[:12]:
        table.add_row(t.task, f"{t.weight:g}", f"{t.flops / 1e6:.1f}", f"{t.share:.1%}",
                      str(t.planned_trials))
    if len(shown) > 12:
        rest = shown[12:]
        table.add_row(f"... {len(rest)} more", "", "", f"{sum(t.share for t in rest):.1%}",
                      str(sum(t.planned_trials for t in rest)))
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
        table.add_row(*[fmt_ms(row[c]) if isinstance(row[c], float)
                        else "-" if row[c] is None else escape(str(row[c])) for c in columns])
    return table
