"""``sched``: a thin typer CLI over sched.api; each command calls one core function."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from typer.exceptions import TyperException

from simpletvm.options import DEFAULT_PER_ROUND, FIXED_DEFAULT_TRIALS

from . import api, render, report
from .limits import HEARTBEAT_S, MAX_JOB_ID, check_daemon_limits, check_seconds
from .paths import display, ensure_private_dir, resolve_db, state_dir
from .registry import Registry
from .registry.health import damaged
from .registry.postgres import reason
from .render import plain, printable

app = typer.Typer(
    help="A load-aware scheduler daemon for autotuning jobs on shared hardware.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Registry: a SQLite file or a postgresql:// URL (default: $SCHED_DB, else "
        "~/.local/state/sched/sched.db).",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
JobId = Annotated[
    int, typer.Argument(help="The job id (see sched jobs).", min=1, max=MAX_JOB_ID)
]


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr (control characters shown escaped), no traceback."""
    print(f"Error: {printable(message)}", file=sys.stderr)
    raise typer.Exit(code)


@contextmanager
def errors(db: str | None = None) -> Iterator[None]:
    """The one rule for exit statuses: 2 for the user's mistake (bad input, a damaged or
    missing registry, a daemon already running or not running), 1 for a fault of ours
    (with the log to read); ``main`` handles anything else the same way."""
    try:
        yield
    except api.DaemonConflict as exc:
        fail(str(exc), 2)
    except (ValueError, KeyError) as exc:  # a RegistryError is a ValueError
        fail(str(exc.args[0]) if exc.args else str(exc), 2)
    except sqlite3.DatabaseError as exc:
        problem = damaged(resolve_db(db), exc)
        if problem is None:
            raise
        fail(str(problem), 2)
    except (api.DaemonError, TimeoutError) as exc:
        fail(str(exc), 1)
    except Exception as exc:
        if not type(exc).__module__.startswith("psycopg"):
            raise
        # a PostgreSQL registry that went away mid-command (connecting is a RegistryError)
        fail(f"the registry {display(resolve_db(db))} failed: {reason(exc)}; check the server", 2)


def emit(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _registry(db: str | None) -> Registry:
    return Registry(resolve_db(db))


@app.command()
def start(
    foreground: Annotated[bool, typer.Option(help="Run in this terminal until Ctrl-C.")] = False,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="sequential, synchronous, interleaved or predictive (default: the stored one, "
            "else interleaved)."
        ),
    ] = None,
    resource: Annotated[
        list[str] | None,
        typer.Option(
            help="Override a detected resource: NAME=CAPACITY (cpu=8, gpu=2, cpu-device=1)."
        ),
    ] = None,
    max_jobs: Annotated[int, typer.Option(help="Runner processes alive at once.")] = 64,
    heartbeat_timeout: Annotated[
        float, typer.Option(help="Seconds of heartbeat silence before a runner is killed.")
    ] = 10.0,
    preempt: Annotated[
        bool | None,
        typer.Option(
            "--preempt/--no-preempt",
            help="Let a CPU-target measurement suspend other jobs' search, build and "
            "compile stages instead of waiting for them (default: the stored setting, "
            "else on).",
        ),
    ] = None,
    local_jobs: Annotated[
        bool,
        typer.Option(
            "--local-jobs/--no-local-jobs",
            help="Run jobs on this host too, or only on agents' hosts (sched agent).",
        ),
    ] = True,
    host_timeout: Annotated[
        float,
        typer.Option(help="Seconds of heartbeat silence before an agent's host is fenced."),
    ] = 10.0,
    standby: Annotated[
        bool,
        typer.Option(
            help="PostgreSQL: stand by for the serving daemon (on any host), and serve as "
            "soon as it dies."
        ),
    ] = False,
    db: Db = None,
) -> None:
    """Start the scheduler daemon (one per registry)."""
    extra = ["--max-jobs", str(max_jobs), "--heartbeat-timeout", str(heartbeat_timeout),
             "--host-timeout", str(host_timeout)]  # fmt: skip
    if not local_jobs:
        extra.append("--no-local-jobs")
    if preempt is not None:
        extra.append("--preempt" if preempt else "--no-preempt")
    with errors(db):
        check_daemon_limits(max_jobs, HEARTBEAT_S, heartbeat_timeout)
        check_seconds("--host-timeout", host_timeout, above=0.5)
        if foreground:
            from .daemon import main as daemon_main

            extra += ["--standby"] if standby else []
            args = api.daemon_args(
                resolve_db(db), strategy=strategy, resources=resource, extra=extra
            )[3:]
            raise typer.Exit(daemon_main(args))
        pid = api.start_daemon(
            db, strategy=strategy, resources=resource, extra=extra, standby=standby
        )
    what = "standing by" if standby and api.daemon_pid(db) != pid else "started"
    console.print(plain(f"sched daemon {what}, pid {pid}, db {display(resolve_db(db))}"))


@app.command()
def agent(
    name: Annotated[str, typer.Option(help="This host's name in the registry, e.g. box-a.")],
    resource: Annotated[
        list[str] | None,
        typer.Option(
            help="This host's resources, NAME=CAPACITY (cpu=16, cpu-device=1, gpu=2); "
            "default: a cpu pool of this machine's cores."
        ),
    ] = None,
    max_jobs: Annotated[int, typer.Option(help="Runner processes alive at once.")] = 64,
    heartbeat_timeout: Annotated[
        float, typer.Option(help="Seconds of heartbeat silence before a runner is killed.")
    ] = 10.0,
    db: Db = None,
) -> None:
    """Serve the jobs the daemon places on this host, in this terminal until Ctrl-C.

    Run one per host, on a registry all of them reach (a postgresql:// URL); see
    docs/multihost.md."""
    from .agent import main as agent_main

    args = ["--name", name, "--max-jobs", str(max_jobs),
            "--heartbeat-timeout", str(heartbeat_timeout)]  # fmt: skip
    for text in resource or []:
        args += ["--resource", text]
    with errors(db):
        raise typer.Exit(agent_main(args, db=resolve_db(db)))


@app.command()
def stop(
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 60.0, db: Db = None
) -> None:
    """Stop the daemon gracefully: running stages finish, queued work resumes at the next start."""
    with errors(db):
        api.stop_daemon(db, timeout=timeout)
    console.print("sched daemon stopped")


@app.command()
def status(
    watch: Annotated[bool, typer.Option(help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    as_json: Json = False,
    db: Db = None,
) -> None:
    """Resources with holders and utilisation; jobs with stage, wait reason and progress."""
    with errors(db):
        check_seconds("--interval", interval)
        registry = _registry(db)
        if as_json:
            emit(report.status(registry))
        elif not watch:
            console.print(render.status_view(report.status(registry)))
        else:
            _watch(registry, interval)


def _watch(registry: Registry, interval: float) -> None:
    try:
        with Live(render.status_view(report.status(registry)), console=console) as live:
            while True:
                time.sleep(interval)
                live.update(render.status_view(report.status(registry)))
    except KeyboardInterrupt:
        pass


@app.command("jobs")
def list_jobs(
    all_jobs: Annotated[bool, typer.Option("--all", help="Include finished jobs.")] = False,
    as_json: Json = False,
    db: Db = None,
) -> None:
    """List queued and running jobs (--all: every job)."""
    with errors(db):
        jobs = _registry(db).list_jobs(include_finished=all_jobs)
    found = [report.job_summary(j) for j in jobs]
    if as_json:
        emit(found)
    else:
        console.print(render.jobs_table(found))


Mock = Annotated[
    str | None,
    typer.Option(
        help="Submit a MockJob: rounds=R,search=S,build=B,measure=M,update=U "
        "[,prepare=,finalize=,jitter=,cpu=burn|sleep,seed=,workers=,device=]"
    ),
]
DeviceKind = Annotated[
    str | None,
    typer.Option(
        help="Measure on remote devices of this kind (see sched device add); each measure "
        "stage is granted one server of it."
    ),
]
SlaMs = Annotated[
    float | None,
    typer.Option(
        help="SLA job: stop as soon as the whole model runs in this many ms (zero trials if "
        "the tuning database already meets it)."
    ),
]
InputShape = Annotated[
    list[str] | None,
    typer.Option(
        "--input-shape",
        help="NAME=D1,D2,... for an input with dynamic dimensions (repeatable).",
    ),
]
TuningOption = Annotated[
    list[str] | None,
    typer.Option(
        help="Extra tuning option NAME=VALUE, repeatable (e.g. population_size=32, "
        "cost_model=random, reuse=true)."
    ),
]
Split = Annotated[
    int | None,
    typer.Option(
        help="Split the model at the task level into N sub-jobs sharing one tuning "
        "database; the parent builds the artifact once all have finished."
    ),
]


@app.command()
def submit(
    model: Annotated[str | None, typer.Argument(help="ONNX model to tune.")] = None,
    mock: Mock = None,
    target: Annotated[str, typer.Option(help="TVM target, e.g. llvm or cuda.")] = "llvm",
    trials: Annotated[int, typer.Option(help="Tuning trials (budget).")] = (
        FIXED_DEFAULT_TRIALS),
    per_round: Annotated[int, typer.Option(help="Candidates measured per round.")] = (
        DEFAULT_PER_ROUND
    ),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    input_shape: InputShape = None,
    baselines: Annotated[
        bool, typer.Option(help="Time the untuned build and onnxruntime when finishing.")
    ] = True,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    name: Annotated[str | None, typer.Option(help="A name shown in listings.")] = None,
    output: Annotated[str | None, typer.Option(help="Where to export the tuned module.")] = None,
    device_kind: DeviceKind = None,
    sla_ms: SlaMs = None,
    max_trials: Annotated[
        int | None, typer.Option(help="An SLA job's trial budget (replaces --trials).")
    ] = None,
    deadline: Annotated[
        str | None,
        typer.Option(help="An SLA job's time limit from its start: 90s, 30m, 2h, 1h30m."),
    ] = None,
    option: TuningOption = None,
    split: Split = None,
    tuning_db: Annotated[
        str | None,
        typer.Option(
            help="The tuning database the job reads and writes: a SQLite file, or a "
            "postgresql:// URL that every host shares (default: one in the job's folder)."
        ),
    ] = None,
    as_json: Json = False,
    db: Db = None,
) -> None:
    """Queue a tuning job (or a mock one); works while the daemon is down."""
    with errors(db):
        job_id = api.submit(
            db,
            mock=mock,
            model=model,
            target=target,
            trials=max_trials if max_trials is not None else trials,
            per_round=per_round,
            seed=seed,
            input_shapes=_input_shapes(input_shape),
            baselines=baselines,
            name=name,
            priority=priority,
            output=output,
            device_kind=device_kind,
            sla_ms=sla_ms,
            deadline=deadline,
            options=parse_options(option),
            split=split,
            tuning_db=tuning_db,
        )
    if as_json:
        emit({"id": job_id})
        return
    console.print(f"submitted job {job_id}")
    if api.daemon_pid(db) is None:
        console.print("no daemon runs yet: the job waits; start one with: sched start")


def _input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    from simpletvm.model import parse_input_shapes  # onnx and numpy: only when asked

    return parse_input_shapes(items) if items else {}


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``NAME=VALUE`` pairs: a number, true or false, or a word (ValueError otherwise)."""
    options: dict[str, Any] = {}
    for item in items or []:
        name, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or not name or not raw:
            raise ValueError(f"--option {item!r} is not NAME=VALUE (e.g. population_size=32)")
        options[name] = _option_value(raw)
    return options


def _option_value(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for number in (int, float):
        try:
            return number(raw)
        except ValueError:
            pass
    return raw


@app.command()
def cancel(job_id: JobId, db: Db = None) -> None:
    """Cancel a job: queued ones at once, running ones as soon as the daemon sees it."""
    with errors(db):
        state = api.cancel(db, job_id)
    console.print(f"job {job_id}: {'cancel requested' if state == 'running' else state}")


@app.command()
def logs(
    job_id: JobId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until the job ends.")
    ] = False,
    as_json: Json = False,
    db: Db = None,
) -> None:
    """The job's events (requests, grants, stage runs) and its runner's output."""
    with errors(db):
        registry = _registry(db)
        if registry.job(job_id) is None:
            raise KeyError(f"no such job: {job_id}")
        events = registry.events(job_id=job_id)
        if as_json:
            emit({"events": events, "runner_log": report.runner_log(registry, job_id)})
            return
        console.print(render.events_table(events))
        text = report.runner_log(registry, job_id)
        if text:
            console.print(printable(text, keep="\n\t"), markup=False, highlight=False)
        if follow:
            _follow(registry, job_id, events[-1]["id"] if events else 0)


def _follow(registry: Registry, job_id: int, last: int) -> None:
    while not registry.job(job_id)["state"].terminal:
        time.sleep(0.5)
        new = registry.events(job_id=job_id, after_id=last)
        if new:
            console.print(render.events_table(new))
            last = new[-1]["id"]


@app.command()
def result(job_id: JobId, as_json: Json = False, db: Db = None) -> None:
    """The exported artifact, its latency, and the untuned and onnxruntime comparison."""
    with errors(db):
        job = api.job(db, job_id)
    if job["state"] != "done":
        why = f": {job['error']}" if job["error"] else ""
        fail(f"job {job_id} is {job['state']}{why}; results exist once it is done", 2)
    if as_json:
        emit(job["result"])
    else:
        console.print(render.result_table(job))


@app.command()
def timeline(
    job: Annotated[int | None, typer.Option("--job", help="Only this job.")] = None,
    output: Annotated[str | None, typer.Option(help="Write a Gantt chart (.png or .svg).")] = None,
    as_json: Json = False,
    db: Db = None,
) -> None:
    """Stages per resource and job over time, from the event log."""
    with errors(db):
        rows = api.events(db, job_id=job)
        if output:
            from .timeline import draw

            path = draw(rows, output)
    if output and not as_json:
        console.print(plain(f"wrote {path}"))
    if as_json:
        emit(rows)
    elif not output:
        console.print(render.timeline_table(rows))


@app.command()
def strategy(
    name: Annotated[
        str | None,
        typer.Argument(help="sequential, synchronous, interleaved or predictive; omit to show."),
    ] = None,
    db: Db = None,
) -> None:
    """Show or change the strategy; a running daemon applies a change at its next pass."""
    with errors(db):
        if name is None:
            console.print(plain(_registry(db).get_setting("strategy", "interleaved")))
            return
        chosen = api.set_strategy(db, name)
    running = api.daemon_pid(db) is not None
    console.print(f"strategy {chosen}" + ("" if running else " (applies when a daemon starts)"))


device_app = typer.Typer(
    help="Remote devices: TVM RPC servers the scheduler assigns to measure stages.",
    no_args_is_help=True,
)
app.add_typer(device_app, name="device")


@device_app.command("add")
def device_add(
    name: Annotated[str, typer.Argument(help="A unique name for this server (e.g. rk3399-a).")],
    tracker: Annotated[
        str | None, typer.Option(help="The RPC tracker HOST:PORT the server registers with.")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="With --tracker: the key only this server registers under.")
    ] = None,
    server: Annotated[
        str | None, typer.Option(help="Or the server's own HOST:PORT, reached directly.")
    ] = None,
    kind: Annotated[
        str, typer.Option(help="The device kind jobs ask for with --device-kind.")
    ] = "rpc",
    timeout: Annotated[
        float | None, typer.Option(help="Seconds an RPC session may take (default 30).")
    ] = None,
    as_json: Json = False,
    db: Db = None,
) -> None:
    """Register one RPC server as an exclusive device (a running daemon sees it at once)."""
    with errors(db):
        device = api.add_device(
            db, name, tracker=tracker, key=key, server=server, kind=kind, timeout=timeout
        )
    if as_json:
        emit(device)
    else:
        address = render.rpc_address(device["rpc"])
        console.print(plain(f"added device {name} ({address}), kind {kind}"))


@device_app.command("list")
def device_list(as_json: Json = False, db: Db = None) -> None:
    """Remote devices: kind, address, up or down (and why), and which job holds each."""
    with errors(db):
        found = api.devices(db)
    if as_json:
        emit(found)
    else:
        console.print(render.devices_table(found))


@device_app.command("remove")
def device_remove(
    name: Annotated[str, typer.Argument(help="The device's name (see sched device list).")],
    db: Db = None,
) -> None:
    """Forget a remote device; refused while a stage measures on it."""
    with errors(db):
        api.remove_device(db, name)
    console.print(plain(f"removed device {name}"))


def main(argv: list[str] | None = None) -> int:
    """Console entry point: usage errors become one ``Error:`` line and exit status 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="sched", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("Error: aborted", file=sys.stderr)
        return 1
    except TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"Error: {printable(message)} (see sched --help)", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2) or 2)
    except Exception as exc:  # noqa: BLE001 - a fault of ours: status 1 and the log to read
        print(f"Error: internal error: {printable(type(exc).__name__)}: {printable(exc)}; "
              f"{_log_fault()}", file=sys.stderr)  # fmt: skip
        return 1
    return code if isinstance(code, int) else 0


def _log_fault() -> str:
    """Append the current traceback to a private log in the user's state directory;
    where it is, said for the error line."""
    path = state_dir() / "sched-cli.log"
    try:
        ensure_private_dir(path.parent)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(path, flags, 0o600), "a") as fh:  # private, never a link
            traceback.print_exc(file=fh)
    except OSError as exc:
        return f"its traceback could not be written to {path} ({exc.strerror})"
    return f"the traceback is in {path}"


if __name__ == "__main__":
    sys.exit(main())
