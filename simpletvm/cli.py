"""`simpletvm`: tune, build, benchmark and export ONNX models with TVM MetaSchedule."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import render
from .errors import UserInputError
from .options import DEFAULT_PER_ROUND, TuningOptions, normal_conv_layout

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
db_app = typer.Typer(help="Inspect the SQLite tuning database.", no_args_is_help=True)
app.add_typer(db_app, name="db")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help=(
    "Target: a name (llvm, cuda), a TVM tag, or a JSON dict."))]
ShapeOpt = Annotated[list[str] | None, typer.Option(
    "--input-shape", help="NAME=D1,D2,... for an input with dynamic dimensions (repeatable).")]


def _shapes(items: list[str] | None):
    from .model import parse_input_shapes

    return parse_input_shapes(items)


@app.command()
def tune(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    target: TargetOpt = "llvm",
    trials: Annotated[int | None, typer.Option(help=(
        "Total measured trials, over all tasks (default: sized from the task count, "
        "unless --time-budget is given)."))] = None,
    time_budget: Annotated[str | None, typer.Option(help=(
        "Tune until this much wall-clock time is spent: 90s, 30m, 1h."))] = None,
    per_round: Annotated[int, typer.Option(help="Candidates per search round.")] = (
        DEFAULT_PER_ROUND),
    sla_ms: Annotated[float | None, typer.Option(help=(
        "Stop as soon as the whole model runs within this many ms (measured every few "
        "rounds, and first before any trial: the database may meet it already)."))] = None,
    db: Annotated[str | None, typer.Option(help=(
        "Tuning database (shared): a SQLite file, or a postgresql:// URL that many hosts "
        "share (the [postgres] extra; the password in ~/.pgpass, not the URL)."))] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Export the tuned module here (.so).")] = None,
    input_shape: ShapeOpt = None,
    reuse: Annotated[bool, typer.Option(help="Tune only tasks with no records yet.")] = False,
    builder_workers: Annotated[int | None, typer.Option(help=(
        "Persistent build workers (default: all cores)."))] = None,
    search_threads: Annotated[int | None, typer.Option(help=(
        "Threads for the search (default: all cores)."))] = None,
    runner_timeout: Annotated[float, typer.Option(help="Seconds per measurement.")] = 30.0,
    number: Annotated[int, typer.Option(help="Runs per measurement repeat.")] = 3,
    repeat: Annotated[int, typer.Option(help="Measurement repeats.")] = 1,
    min_repeat_ms: Annotated[int, typer.Option(help="Minimum ms per repeat.")] = 100,
    cost_model: Annotated[str, typer.Option(help="xgb or random.")] = "xgb",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    population: Annotated[int, typer.Option(help="Evolutionary search population.")] = (
        TuningOptions().population_size),
    layout_rewrite: Annotated[bool, typer.Option(help=(
        "CPU: let schedules choose the weights' layout (folded at build)."))] = True,
    conv_layout: Annotated[str, typer.Option(help=(
        "NHWC converts 2-D convolutions to NHWC before tuning; NCHW keeps the model's; "
        "auto: NHWC on a CPU, NCHW on a GPU."))] = TuningOptions().conv_layout,
    winograd: Annotated[str, typer.Option(help=(
        "CPU: 3x3 stride-1 convolutions by Winograd: auto (where it pays), 2 or 4 (that "
        "tile wherever it applies), off."))] = TuningOptions().winograd,
    output_check: Annotated[bool, typer.Option(help=(
        "Compare the exported module's outputs with onnxruntime's."))] = True,
    shared_model: Annotated[bool, typer.Option(help=(
        "Start from the target's cost model shared in the tuning database."))] = True,
    shared_model_every: Annotated[int, typer.Option(help=(
        "Retrain the shared cost model once this many new measurements are stored."))] = (
        TuningOptions().shared_model_every),
    transfer: Annotated[bool, typer.Option(help=(
        "Seed new tasks with schedules of similar workloads in the database."))] = True,
    json_out: JsonOpt = False,
) -> None:
    """Tune MODEL stage by stage, then print untuned / tuned / onnxruntime latencies.

    Prints the plan first (tasks, budget per task, estimated time), exports the faster
    build (tuned or untuned) and checks its outputs against onnxruntime.
    """

    def body() -> None:
        from .paths import default_db
        from .spec import JobSpec

        opts = TuningOptions(trials=trials, time_budget_seconds=_duration(time_budget),
                             per_round=per_round, sla_ms=sla_ms,
                             builder_workers=builder_workers,
                             runner_timeout=runner_timeout, number=number, repeat=repeat,
                             min_repeat_ms=min_repeat_ms, cost_model=cost_model, seed=seed,
                             reuse=reuse, search_threads=search_threads,
                             population_size=population,
                             init_min_unmeasured=min(50, population),
                             layout_rewrite=layout_rewrite, check_outputs=output_check,
                             conv_layout=normal_conv_layout(conv_layout),
                             winograd=winograd.lower(),
                             shared_model=shared_model,
                             shared_model_every=shared_model_every,
                             transfer=transfer).validate()
        spec = JobSpec(model=str(model), target=target, options=opts,
                       input_shapes=_shapes(input_shape),
                       output=str(output) if output else None,
                       tuning_db=str(db or default_db())).validate()
        job = spec.tuning_job()
        if json_out:
            render.print_json(job.run_all().result())
        else:
            _run_with_progress(job)
            _print_result(job.result())

    render.run_cli(body)


def _print_result(result: dict) -> None:
    served = result["served_from_db"]
    if served["records"]:
        render.console.print(f"Served from the database: {served['records']} records "
                             f"for {served['tasks']} of {result['tasks']} tasks.")
    render.console.print(render.result_table(result))
    render.console.print(render.stage_table(result["stage_seconds"]))
    learned = render.learning_line(result)
    if learned:
        render.console.print(learned)
    render.console.print(render.export_line(result))


def _duration(text: str | None) -> float | None:
    from .options import parse_duration

    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UserInputError(f"--time-budget: {exc}") from None


def _run_with_progress(job) -> None:
    """Run the job with a progress bar; print the plan once the tasks are known."""
    with render.tuning_progress() as progress:
        bar = progress.add_task(job.name, total=None, best="-", stage="prepare",
                                task_name="")

        def on_stage(outcome, job_) -> None:
            if outcome.kind.value == "prepare" and job_.plan is not None:
                progress.console.print(render.plan_table(job_.plan))
            nxt = job_.next_stage()
            progress.update(bar, completed=outcome.trials_done,
                            total=outcome.trials_total or None,
                            best=render.fmt_ms(outcome.best_latency_ms),
                            stage=nxt.kind.value if nxt else "done",
                            task_name=(nxt.info.get("task") or "") if nxt else "")

        job.run_all(on_stage)


@app.command()
def bench(
    model: Annotated[Path, typer.Argument(help="ONNX model, or a module exported by tune.")],
    target: TargetOpt = "llvm",
    input_shape: ShapeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Benchmark an exported module, or an ONNX model built untuned."""

    def body() -> None:
        from . import bench as bench_mod
        from .api import SimpleTVM
        from .model import InputSpec, random_inputs

        if model.suffix in (".so", ".dylib", ".dll"):
            from .compile import load_exported

            if not model.exists():
                raise UserInputError(f"module '{model}' does not exist; check the path")
            lib, meta = load_exported(model)
            inputs = [InputSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in meta["inputs"]]
            stats = bench_mod.bench_tvm(lib, meta["device_type"], random_inputs(inputs))
            kind = "exported"
        else:
            pipeline = SimpleTVM.load(model, input_shapes=_shapes(input_shape)).target(target)
            stats = pipeline.benchmark().latency
            kind = "untuned"
        out = {"model": str(model), "kind": kind, **stats.as_dict()}
        if json_out:
            render.print_json(out)
        else:
            render.console.print(render.rows_table(f"{model.name} ({kind})", [out],
                                                   ["median_ms", "mean_ms", "std_ms", "min_ms",
                                                    "samples"]))

    render.run_cli(body)


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    target: TargetOpt = "llvm",
    input_shape: ShapeOpt = None,
    winograd: Annotated[str, typer.Option(help=(
        "The tasks as tune makes them with this --winograd mode (off: the direct "
        "convolutions, whose FLOPs are the model's own)."))] = TuningOptions().winograd,
    conv_layout: Annotated[str, typer.Option(help=(
        "The tasks as tune makes them with this --conv-layout."))] = (
        TuningOptions().conv_layout),
    json_out: JsonOpt = False,
) -> None:
    """List the model's inputs and tuning tasks, with shapes and FLOPs."""

    def body() -> None:
        from .tasks_info import inspect_model

        opts = TuningOptions(winograd=winograd.lower(),
                             conv_layout=normal_conv_layout(conv_layout)).validate()
        info = inspect_model(model, target=target, input_shapes=_shapes(input_shape),
                             winograd=opts.winograd, conv_layout=opts.conv_layout)
        if json_out:
            render.print_json(info)
            return
        render.console.print(render.rows_table("inputs", info["inputs"],
                                               ["name", "shape", "dtype"]))
        render.console.print(render.rows_table(f"{len(info['tasks'])} tuning tasks",
                                               info["tasks"],
                                               ["task", "weight", "flops", "buffers"]))

    render.run_cli(body)


@app.command()
def compare(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    db: Annotated[str, typer.Option(help=(
        "Tuning database to build from: a file or a postgresql:// URL."))],
    target: TargetOpt = "llvm",
    input_shape: ShapeOpt = None,
    conv_layout: Annotated[str, typer.Option(help=(
        "The --conv-layout the database was tuned with."))] = TuningOptions().conv_layout,
    winograd: Annotated[str, typer.Option(help=(
        "The --winograd mode the database was tuned with."))] = TuningOptions().winograd,
    json_out: JsonOpt = False,
) -> None:
    """Build MODEL from the database alone and compare with untuned TVM and onnxruntime."""

    def body() -> None:
        from .database import open_existing
        from .engine import TuningJob

        open_existing(db).close()
        options = TuningOptions(trials=0, conv_layout=normal_conv_layout(conv_layout),
                                winograd=winograd.lower())
        job = TuningJob.from_model(model, target=target, options=options,
                                   db_path=db, input_shapes=_shapes(input_shape))
        result = job.run_all().result()
        if json_out:
            render.print_json(result)
        else:
            render.console.print(render.result_table(result))

    render.run_cli(body)


@app.command()
def sample(
    name: Annotated[str | None, typer.Argument(help="Sample model name.")] = None,
    output: Annotated[Path | None,
                      typer.Option("--output", "-o", help="Where to write it.")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the sample models.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the weights.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Write a deterministic sample ONNX model (generated, never downloaded)."""

    def body() -> None:
        from .samples import SAMPLES, UnknownSampleError, write_sample

        if not 0 <= seed < 2**63:
            raise UserInputError(f"--seed must be between 0 and 2^63 - 1, got {seed}")

        if list_ or name is None:
            # "input"/"shape" describe the first input, as before multi-input samples existed
            rows = [{"name": s.name, "kind": s.kind, "input": s.input_name,
                     "shape": list(s.input_shape),
                     "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype}
                                for i in s.inputs],
                     "description": s.description} for s in SAMPLES.values()]
            if json_out:
                render.print_json({"samples": rows})
            else:
                for row, s in zip(rows, SAMPLES.values()):
                    row["inputs"] = ", ".join(
                        f"{i.name}: {i.dtype}[{','.join(map(str, i.shape))}]" for i in s.inputs)
                render.console.print(render.rows_table(
                    "sample models (kind real = real architecture with random weights)", rows,
                    ["name", "kind", "inputs", "description"]))
            return
        from .compile import check_writable

        path = check_writable(output or Path(f"{name}.onnx"), "output")
        try:
            write_sample(name, path, seed=seed)
        except UnknownSampleError as exc:
            raise UserInputError(str(exc)) from None
        if json_out:
            render.print_json({"name": name, "path": str(path)})
        else:
            render.console.print(f"Wrote {path}")

    render.run_cli(body)


@db_app.command("stats")
def db_stats(
    db: Annotated[str, typer.Option(help="Tuning database: a file or a postgresql:// URL.")],
    json_out: JsonOpt = False,
) -> None:
    """Workloads, record counts and best latencies in a tuning database, and the
    shared cost model of each target."""

    def body() -> None:
        from .database import database_stats, shared_model_stats
        from .pg import is_url, redact

        rows = database_stats(db)
        models = shared_model_stats(db)
        shown = redact(db) if is_url(db) else str(db)
        if json_out:
            render.print_json({"db": shown, "workloads": rows, "shared_models": models})
            return
        render.console.print(render.rows_table(shown, rows,
                                               ["workload", "task", "target", "records",
                                                "best_ms"]))
        render.console.print(render.rows_table(
            "shared cost models (trained_on: measurements it learned from; pending: newer)",
            models, ["target", "features", "trained_on", "pending", "model_bytes",
                     "train_seconds"]))

    render.run_cli(body)


@db_app.command("train")
def db_train(
    db: Annotated[str, typer.Option(help="Tuning database: a file or a postgresql:// URL.")],
    target: TargetOpt = "llvm",
    threads: Annotated[int | None, typer.Option(help="Training threads (default: all).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Train TARGET's shared cost model now, on every measurement stored for it (jobs
    retrain it themselves every `tune --shared-model-every` new ones)."""

    def body() -> None:
        from .costmodel import SharedModelStore
        from .database import open_existing
        from .targets import host_cores, resolve_target

        open_existing(db).close()
        spec = resolve_target(target)
        if threads is not None and threads < 1:
            raise UserInputError(f"--threads must be >= 1, got {threads}")
        stored = SharedModelStore(db, spec.key).train_and_save(
            threads=threads or host_cores())
        if json_out:
            render.print_json({"db": str(db), "target": spec.kind, "trained": stored})
        elif stored is None:
            render.console.print("Not trained: fewer than 100 measurements stored for "
                                 f"{spec.kind}, or a model as recent is stored already.")
        else:
            render.console.print(f"Trained the {spec.kind} model on {stored['trained_on']} "
                                 f"measurements in {stored['seconds']:.1f} s.")

    render.run_cli(body)


def run_app(typer_app: typer.Typer) -> None:
    """Run a command-line app: a usage error (an unknown option, a missing argument, a bad
    value) is one line, ``Error: ... (see CMD --help)``, and exit status 2; no arguments
    print the help (exit 2) and ``--help`` exits 0, as before. superb runs its app here."""
    import sys

    try:  # recent typer vendors click: its errors derive from TyperException
        from typer import TyperException as CliError
    except ImportError:  # pragma: no cover - an older typer, on click itself
        from click import ClickException as CliError

    try:
        code = typer_app(standalone_mode=False)
    except CliError as exc:
        code = getattr(exc, "exit_code", 2)
        message = " ".join(exc.format_message().split()).rstrip(".")
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help (rich prints it itself)
            if message:
                typer.echo(exc.format_message(), err=True)
        else:
            ctx = getattr(exc, "ctx", None)
            see = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"Error: {message}{see}", err=True)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


def main() -> None:
    run_app(app)
