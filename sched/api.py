"""A small Python API over the scheduler, for scripts and for ``superb``.

Every function takes the registry path first; the daemon runs as a separate process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simpletvm.options import DEFAULT_PER_ROUND, FIXED_DEFAULT_TRIALS, parse_duration
from simpletvm.spec import JobSpec

from .analysis import capacities, resource_intervals
from .analysis import makespan as _makespan
from .analysis import utilisation as _utilisation
from .devices import check_kind, check_name, device_rpc
from .jobs import job_spec, mock_spec, split_specs, tvm_spec
from .limits import MAX_PRIORITY, check_int, check_seconds
from .models import JobKind, JobRecord, JobState, StageRow, Usage
from .paths import (
    Locator,
    display,
    ensure_private_dir,
    is_url,
    local_base,
    log_file,
    pid_file,
    resolve_db,
)
from .pidfile import running_pid
from .registry import Registry
from .resources import detect
from .strategies import get_strategy

_LAUNCHER = (
    "import subprocess, sys\n"
    "import os\n"
    "log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)\n"
    "p = subprocess.Popen(sys.argv[2:], start_new_session=True, stdin=subprocess.DEVNULL,"
    " stdout=log, stderr=subprocess.STDOUT)\n"
    "print(p.pid)\n"
)


class DaemonError(RuntimeError):
    """The daemon could not be started, reached or stopped (the message says why)."""


class DaemonConflict(DaemonError):
    """The user's mistake, not a fault: a daemon already runs, or none runs to stop."""


def _already_running(db: Locator, pid: int) -> DaemonConflict:
    return DaemonConflict(
        f"a daemon already runs for {display(db)} (pid {pid}); stop it first with: "
        f"sched stop --db {display(db)}"
    )


def daemon_pid(db_path: str | os.PathLike[str] | None) -> int | None:
    return running_pid(pid_file(resolve_db(db_path)))


def daemon_args(
    db: Locator,
    *,
    strategy: str | None,
    resources: dict[str, int] | list[str] | None,
    extra: list[str] | None = None,
) -> list[str]:
    # a URL travels in the environment (SCHED_DB), never in the argv that ps shows
    args = [sys.executable, "-m", f"{__package__}.daemon"] + (
        [] if is_url(db) else ["--db", str(db)]
    )
    if strategy is not None:
        args += ["--strategy", get_strategy(strategy).name]
    if resources:
        items = (
            [f"{k}={v}" for k, v in resources.items()] if isinstance(resources, dict) else resources
        )
        detect(items)  # validate before starting anything
        for item in items:
            args += ["--resource", item]
    return args + (extra or [])


def start_daemon(
    db_path: str | os.PathLike[str] | None,
    *,
    strategy: str | None = "interleaved",
    resources: dict[str, int] | list[str] | None = None,
    extra: list[str] | None = None,
    ready_timeout: float = 60.0,
    standby: bool = False,
) -> int:
    """Start a background daemon (its own session, not our child) and wait until it
    serves; a ``standby`` (PostgreSQL) until it stands by for the serving one."""
    db = resolve_db(db_path)
    ensure_private_dir(local_base(db).parent)
    if standby and not is_url(db):
        raise DaemonConflict("--standby needs a postgresql:// registry (one daemon lock "
                             "that every host sees); a SQLite registry has one host")  # fmt: skip
    extra = [*(extra or []), *(["--standby"] if standby else [])]
    args = daemon_args(db, strategy=strategy, resources=resources, extra=extra)
    env = dict(os.environ, **({"SCHED_DB": db} if is_url(db) else {}))
    registry = Registry(db)
    try:
        registry.check()  # a damaged registry: one line here, not a daemon that dies
        pid = daemon_pid(db)
        if pid is not None and not standby:
            raise _already_running(db, pid)
        launched = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(log_file(db)), *args],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        return _await_ready(registry, int(launched.stdout.strip()), ready_timeout, standby)
    finally:
        registry.close()


def _await_ready(registry: Registry, pid: int, timeout: float, standby: bool = False) -> int:
    """Wait until the daemon ``pid`` serves (or, a ``standby``, stands by); a daemon that
    lost the race for the pid file to another one started at the same moment names the
    winner."""
    db = registry.path
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if registry.get_setting("daemon_pid") == str(pid) and daemon_pid(db) == pid:
            return pid
        if standby and (registry.get_setting("standby") or "").startswith(f"{pid}@"):
            return pid
        if not _pid_alive(pid):
            winner = daemon_pid(db)
            if winner is not None and winner != pid:
                raise _already_running(db, winner)
            raise DaemonError(f"the daemon exited at start-up; see {log_file(db)}")
        time.sleep(0.02)
    raise DaemonError(f"the daemon did not become ready in {timeout:.0f} s; see {log_file(db)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_daemon(db_path: str | os.PathLike[str] | None, *, timeout: float = 30) -> None:
    """Ask the daemon to stop (running stages finish first) and wait until it has."""
    check_seconds("--timeout", timeout)
    db = resolve_db(db_path)
    pid = daemon_pid(db)
    if pid is None:
        raise DaemonConflict(
            f"no sched daemon runs for {display(db)}; start one with: sched start --db "
            f"{display(db)}"
        )
    if pid > 0:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while daemon_pid(db) is not None:
        if time.monotonic() > deadline:
            raise DaemonError(
                f"the daemon (pid {pid}) did not stop within {timeout:.0f} s; "
                f"see {log_file(db)}"
            )
        time.sleep(0.02)


def submit(
    db_path: str | os.PathLike[str] | None,
    job: JobSpec | None = None,
    *,
    mock: str | None = None,
    model: str | None = None,
    target: str = "llvm",
    trials: int | None = FIXED_DEFAULT_TRIALS,
    per_round: int = DEFAULT_PER_ROUND,
    seed: int = 0,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    baselines: bool = True,
    name: str | None = None,
    priority: int = 0,
    output: str | None = None,
    tuning_db: str | None = None,
    device_kind: str | None = None,
    sla_ms: float | None = None,
    deadline: float | str | None = None,
    options: dict[str, Any] | None = None,
    split: int | None = None,
) -> int:
    """Queue a job (works while the daemon is down: the job waits); returns its id.

    A TVM job is a ``JobSpec`` (``job``), or the flags of ``sched submit`` it is built
    from (``model`` and the rest). ``device_kind`` measures on remote devices of that
    kind (``sched device add``); ``sla_ms`` makes an SLA job (``trials`` is then its
    budget), ``deadline`` is seconds or a duration such as ``30m``; ``options`` sets extra
    TuningOptions (``TUNING_OPTIONS``). ``split=N`` queues N sub-jobs (task index modulo N,
    ``trials / N`` each, one shared tuning database) and returns the parent, which builds
    the artifact after them all.
    """
    if sum(x is not None for x in (mock, model, job)) != 1:
        raise ValueError("give exactly one of a MODEL path or --mock SPEC")
    check_int("--priority", priority, -MAX_PRIORITY, MAX_PRIORITY)
    if mock is not None:
        spec, device_kind = mock_spec(mock)
        kind = JobKind.MOCK
    else:
        if job is None:
            job = job_spec(
                model, target=target, trials=trials, per_round=per_round, seed=seed,
                input_shapes=input_shapes, baselines=baselines, output=output,
                tuning_db=tuning_db, sla_ms=sla_ms,
                deadline_seconds=parse_duration(str(deadline)) if deadline is not None else None,
                options=options,
            )  # fmt: skip
        spec, device_kind = tvm_spec(job, device_kind=device_kind)
        kind = JobKind.TVM
    registry = Registry(resolve_db(db_path))
    try:
        if split is not None:
            parent, parts = split_specs(spec, split, mock=mock)
            name = name or Path(job.model).stem
            return registry.submit_split(
                kind.value, parent, parts, name=name, priority=priority, device_kind=device_kind
            )[0]
        return registry.submit(
            kind.value, spec, name=name, priority=priority, device_kind=device_kind
        )
    finally:
        registry.close()


def wait(
    db_path: str | os.PathLike[str] | None,
    job_ids: list[int] | int,
    *,
    timeout: float | None = None,
    poll: float = 0.2,
) -> dict[int, JobState]:
    """Block until every job is done, failed or cancelled; returns their final states."""
    ids = [job_ids] if isinstance(job_ids, int) else list(job_ids)
    registry = Registry(resolve_db(db_path))
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            states = registry.job_states(ids)
            missing = set(ids) - set(states)
            if missing:
                raise KeyError(f"no such job: {', '.join(map(str, sorted(missing)))}")
            if all(s.terminal for s in states.values()):
                return {i: states[i] for i in ids}
            if deadline is not None and time.monotonic() > deadline:
                waiting = sorted(i for i, s in states.items() if not s.terminal)
                raise TimeoutError(f"jobs still unfinished after {timeout} s: {waiting}")
            time.sleep(poll)
    finally:
        registry.close()


def _with_registry(db_path: str | os.PathLike[str] | None, fn: Any) -> Any:
    registry = Registry(resolve_db(db_path))
    try:
        return fn(registry)
    finally:
        registry.close()


def jobs(
    db_path: str | os.PathLike[str] | None, *, include_finished: bool = True
) -> list[JobRecord]:
    return _with_registry(db_path, lambda r: r.list_jobs(include_finished=include_finished))


def job(db_path: str | os.PathLike[str] | None, job_id: int) -> JobRecord:
    found = _with_registry(db_path, lambda r: r.job(job_id))
    if found is None:
        raise KeyError(f"no such job: {job_id}")
    return found


def cancel(db_path: str | os.PathLike[str] | None, job_id: int) -> str:
    return _with_registry(db_path, lambda r: r.cancel(job_id).value)


def set_strategy(db_path: str | os.PathLike[str] | None, name: str) -> str:
    """Change the strategy; a running daemon applies it at its next pass."""
    strategy = get_strategy(name)
    _with_registry(db_path, lambda r: r.set_setting("strategy", strategy.name))
    return strategy.name


def events(
    db_path: str | os.PathLike[str] | None, *, job_id: int | None = None
) -> list[StageRow]:
    """Stage runs per resource: job_id, stage, resource, amount, start, end (epoch seconds)."""
    return _with_registry(db_path, lambda r: resource_intervals(r.stage_intervals(job_id=job_id)))


def utilisation(db_path: str | os.PathLike[str] | None) -> dict[str, Usage]:
    """Per resource busy and idle fractions of its capacity over the makespan
    (``analysis.utilisation``)."""
    return _with_registry(
        db_path,
        lambda r: _utilisation(resource_intervals(r.stage_intervals()), capacities(r.resources())),
    )


def makespan(db_path: str | os.PathLike[str] | None) -> float:
    """Seconds from the first stage start to the last stage end."""
    return _makespan(events(db_path))


def add_device(
    db_path: str | os.PathLike[str] | None,
    name: str,
    *,
    tracker: str | None = None,
    key: str | None = None,
    server: str | None = None,
    kind: str = "rpc",
    timeout: float | None = None,
) -> dict[str, Any]:
    """Register a remote RPC server as an exclusive device of ``kind``; returns its row."""
    rpc = device_rpc(tracker=tracker, key=key, server=server, timeout=timeout)
    name, kind = check_name(name), check_kind(kind)
    return _with_registry(db_path, lambda r: (r.add_device(name, kind, rpc), _device(r, name))[1])


def _device(registry: Registry, name: str) -> dict[str, Any]:
    return next(d for d in registry.devices() if d["name"] == name)


def devices(db_path: str | os.PathLike[str] | None) -> list[dict[str, Any]]:
    """Remote devices with their address, kind, state (up or down, why) and holder."""

    def rows(registry: Registry) -> list[dict[str, Any]]:
        held = {n: lease.job_id for lease in registry.active_leases() for n in lease.resources}
        return [{**d, "held_by": held.get(d["name"])} for d in registry.devices()]

    return _with_registry(db_path, rows)


def remove_device(db_path: str | os.PathLike[str] | None, name: str) -> None:
    """Forget a remote device (refused while a stage holds it)."""
    _with_registry(db_path, lambda r: r.remove_device(name))
