"""superb's command line: parse, call one core function, render with rich.

Bad input (a usage error too) prints one line, ``Error: ...``, on stderr and exits 2; an
internal fault exits 1 with a pointer to the log holding its traceback (in superb's
private state directory, ``paths.log_path``).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

from simpletvm.cli import run_app

from . import SuperbError, estimate, matrix, paths, schema
from . import plot as plot_mod
from . import report as report_mod
from .inputs import DEFAULT_MAX_POINTS, MAX_POINTS_ENV, env_limit
from .render import RichReporter, duration, failures_table, plan_table, report_table
from .results import ResultsDB, damaged
from .runner import Runner

app = typer.Typer(
    help="Run a TOML matrix of tuning experiments unattended; report and plot the results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)


def _out() -> Console:
    """stdout; when it is not a terminal, wide enough that tables keep their natural width."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=1000)


DB_OPTION = typer.Option(Path("results.db"), "--db", help="The results database (SQLite).")
ONLY_OPTION = typer.Option(None, "--only", help="Only this experiment (repeatable).")
JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON.")
MAX_POINTS_OPTION = typer.Option(
    None,
    "--max-points",
    min=1,
    help=f"Refuse a matrix of more points than this (default: ${MAX_POINTS_ENV}, "
    f"else {DEFAULT_MAX_POINTS:,}).",
)


@contextmanager
def _errors(db: Path | None = None) -> Iterator[None]:
    """Bad input: one line and exit 2; an internal fault: exit 1 and the log's path."""
    try:
        yield
    except SuperbError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        typer.echo("Interrupted", err=True)
        raise typer.Exit(130) from None
    except sqlite3.DatabaseError as exc:
        if db is None or type(exc) is not sqlite3.DatabaseError:  # not a damaged file
            _internal_error(exc)
        typer.echo(f"Error: {damaged(db, str(exc))}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - report an internal fault without a traceback
        _internal_error(exc)


def _internal_error(exc: BaseException) -> None:
    try:
        where = f"the traceback is in {paths.append_log(traceback.format_exc())}"
    except OSError as log_exc:
        where = f"its traceback could not be logged ({log_exc})"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    typer.echo(f"Internal error: {type(exc).__name__}: {first}; {where}", err=True)
    raise typer.Exit(1) from None


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _existing_db(path: Path) -> ResultsDB:
    if not path.exists():
        raise SuperbError(
            f"results database {path} not found; run `superb run FILE --db "
            f"{path}` first, or pass --db"
        )
    return ResultsDB(path)


def _experiments(file: Path, only: list[str] | None, max_points: int | None) -> tuple:
    """FILE's experiments (those named by --only), their matrix within the limit."""
    experiments = schema.load(file).select(only)
    limit = max_points or env_limit(MAX_POINTS_ENV, DEFAULT_MAX_POINTS)
    matrix.check_size(experiments, limit)
    return experiments


@app.command()
def validate(
    file: Path = typer.Argument(..., help="The benchmarks TOML file."),
    max_points: int | None = MAX_POINTS_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Check FILE against the schema without running anything."""
    with _errors():
        experiments = _experiments(file, None, max_points)
        counts = {e.name: sum(1 for _ in matrix.iter_points(e)) for e in experiments}
    if json_output:
        _print_json({"file": str(file), "valid": True, "points": counts})
        return
    summary = ", ".join(f"{name} ({n} points)" for name, n in counts.items())
    _out().print(f"{file} is valid: {len(counts)} experiment(s): {summary}")


@app.command()
def run(
    file: Path = typer.Argument(..., help="The benchmarks TOML file."),
    db: Path = DB_OPTION,
    only: list[str] = ONLY_OPTION,
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue a run already recorded in --db: finished and failed points are skipped.",
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="With --resume, run failed points again."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List the expanded runs and a time estimate."
    ),
    work_dir: Path = typer.Option(
        None,
        "--work-dir",
        help="Where points keep their scratch files (default: work/ in superb's private "
        "state directory, $SUPERB_HOME).",
    ),
    keep_work: bool = typer.Option(
        False, "--keep-work", help="Keep each finished point's scratch files."
    ),
    max_points: int | None = MAX_POINTS_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Run every point of FILE's experiments unattended, recording results in --db."""
    with _errors(db):
        points = matrix.expand_all(_experiments(file, only, max_points))
        if dry_run:
            _dry_run(points, db, json_output)
            return
        if retry_failed and not resume:
            raise SuperbError("--retry-failed only makes sense with --resume")
        if work_dir is not None:
            paths.check_work_root(work_dir)
        results = ResultsDB(db)
        runner = Runner(results, work_root=work_dir, retry_failed=retry_failed, keep_work=keep_work)
        runner.check_resume(points, resume=resume)
        with RichReporter(err) as reporter:
            runner.reporter = reporter
            summary = runner.run(points, file=str(file), resume=resume)
    _print_summary(summary, json_output)


def _dry_run(points: list, db: Path, json_output: bool) -> None:
    plan = estimate.plan(points, ResultsDB(db) if db.exists() else None)
    total = sum(item["estimate_s"] for item in plan)
    if json_output:
        _print_json({"points": plan, "estimate_s": total})
    else:
        _out().print(plan_table(plan))
        _out().print(f"{len(plan)} runs; estimated time: about {duration(total)}")


def _print_summary(summary, json_output: bool) -> None:
    if json_output:
        _print_json({**summary.__dict__, "remaining": summary.remaining})
    else:
        err.print(
            f"{summary.total} points: {summary.done} done, {summary.failed} failed, "
            f"{summary.skipped} already recorded"
            + (f", {summary.busy_elsewhere} running elsewhere" if summary.busy_elsewhere else "")
        )
    if summary.interrupted:
        err.print(
            f"Interrupted: {summary.remaining} point(s) left; run the same command with "
            "--resume to continue"
        )
        raise typer.Exit(130)


@app.command()
def report(
    db: Path = DB_OPTION,
    output_format: str = typer.Option("table", "--format", help="table, markdown, csv or json."),
    group_by: list[str] = typer.Option(
        None,
        "--group-by",
        help="Group rows by this axis (repeatable): "
        + ", ".join(report_mod.AXES)
        + ". Medians are taken over the rest.",
    ),
    only: list[str] = ONLY_OPTION,
    failures: bool = typer.Option(
        False, "--failures", help="Also list failed points and their errors."
    ),
    json_output: bool = typer.Option(False, "--json", help="Same as --format json."),
    view: str = typer.Option(
        "summary",
        "--view",
        help="summary: latencies per model; evaluation: makespan against sequential and "
        "its lower bound, latency against each model tuned alone, measurement noise.",
    ),
) -> None:
    """Print tables of the results: medians over repeats per strategy and job count."""
    with _errors(db):
        output_format = "json" if json_output else output_format
        if output_format not in report_mod.FORMATS:
            raise SuperbError(
                f"--format {output_format}: choose one of {', '.join(report_mod.FORMATS)}"
            )
        if view not in ("summary", "evaluation"):
            raise SuperbError(f"--view {view}: choose summary or evaluation")
        build = report_mod.build_report
        if view == "evaluation":
            from .evaluation import build_evaluation as build
        result = build(_existing_db(db), experiments=only or None, group_by=group_by or None)
    if output_format == "json":
        sys.stdout.write(report_mod.to_json(result) + "\n")
    elif output_format == "csv":
        sys.stdout.write(report_mod.to_csv(result))
    elif output_format == "markdown":
        sys.stdout.write(report_mod.to_markdown(result))
    else:
        _out().print(report_table(result))
        if failures and result.failures:
            _out().print(failures_table(result))
        elif result.failures:
            _out().print(f"{len(result.failures)} point(s) failed; see them with --failures")


@app.command()
def plot(
    db: Path = DB_OPTION,
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the figures."),
    only: list[str] = ONLY_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Write Gantt, convergence and bar figures (PNG and SVG) into --output."""
    with _errors(db):
        written = plot_mod.write_plots(_existing_db(db), output, experiments=only or None)
    if json_output:
        _print_json({"files": [str(p) for p in written]})
    else:
        for path in written:
            _out().print(str(path))


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
