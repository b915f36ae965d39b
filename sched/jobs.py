"""The job factory: a registry row becomes a StagedJob (MockJob or a real TVM TuningJob)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from simpletvm.errors import UserInputError
from simpletvm.options import TuningOptions, option_names

from .devices import REMOTE_STAGES, is_remote, job_device_kind
from .mockjob import MockJob, MockSpec
from .models import JobKind
from .resources import device_kind_for_mock, device_kind_for_target

# TuningOptions fields a submission may set besides its own flags (trials, per_round,
# seed, the SLA); tests and benchmarks shrink the evolutionary search with them
_SPEC_FIELDS = {"trials", "per_round", "seed", "sla_ms", "deadline_seconds"}
TUNING_OPTIONS = tuple(n for n in option_names() if n not in _SPEC_FIELDS)
# a job under sched asks for the CPU slots its stages use: one each unless set
SCHED_DEFAULTS = {"search_threads": 1, "builder_workers": 1}


def check_tuning_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Validated extra TuningOptions, by the engine's own rules (ValueError names the
    unknown field or the bad value), so a job never fails in its runner for them."""
    checked = dict(options or {})
    for name in checked:
        if name not in TUNING_OPTIONS:
            raise ValueError(
                f"unknown tuning option {name!r}; choose from {', '.join(TUNING_OPTIONS)}"
            )
    try:
        TuningOptions(**checked).validate()
    except UserInputError as exc:
        raise ValueError(f"tuning option {exc}") from None
    return checked


def mock_spec(text: str) -> tuple[dict[str, Any], str | None]:
    """Validated spec dict and device kind for a ``--mock`` job (ValueError if malformed)."""
    spec = MockSpec.parse(text)
    return {"mock": str(spec)}, device_kind_for_mock(spec.device)


def tvm_spec(
    model: str,
    *,
    target: str = "llvm",
    trials: int = 64,
    per_round: int = 16,
    seed: int = 0,
    output: str | None = None,
    tuning_db: str | None = None,
    device_kind: str | None = None,
    sla_ms: float | None = None,
    deadline_seconds: float | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """The spec of a TVM job; ``device_kind`` names a kind of remote devices to measure on."""
    path = Path(model).expanduser()
    if not path.is_file():
        raise ValueError(f"model {model!r} does not exist; give the path of an .onnx file")
    if trials < 1 or per_round < 1:
        raise ValueError("--trials and --per-round must be at least 1")
    if not target.strip():
        raise ValueError("--target must not be empty (e.g. llvm or cuda)")
    if sla_ms is not None and not sla_ms > 0:
        raise ValueError(f"--sla-ms must be positive, got {sla_ms}")
    if deadline_seconds is not None and sla_ms is None:
        raise ValueError("--deadline goes with --sla-ms (a latency target to tune towards)")
    if deadline_seconds is not None and not deadline_seconds > 0:
        raise ValueError(f"--deadline must be positive, got {deadline_seconds}")
    extra = check_tuning_options(options)
    remote = job_device_kind(device_kind) if device_kind else None
    check_model_and_target(path, target)
    spec = {
        "model": str(path.resolve()),
        "target": target,
        "trials": trials,
        "per_round": per_round,
        "seed": seed,
        "output": str(Path(output).resolve()) if output else None,
        "tuning_db": str(Path(tuning_db).resolve()) if tuning_db else None,
    }
    if sla_ms is not None:
        spec.update(sla_ms=float(sla_ms), deadline_seconds=deadline_seconds)
    if extra:
        spec["options"] = extra
    return spec, remote or device_kind_for_target(target)


def check_model_and_target(path: Path, target: str) -> None:
    """Refuse at submit time what the engine would refuse in the runner, with its words."""
    from simpletvm import model as model_mod
    from simpletvm.targets import resolve_target

    onnx_model = model_mod.load_onnx(path)
    model_mod.model_inputs(onnx_model)
    model_mod.check_operators(onnx_model)
    resolve_target(target)


def split_specs(
    spec: dict[str, Any], parts: int, *, sla: bool = False, mock: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A parent spec (no tuning: it builds the artifact from the shared records) and
    ``parts`` sub-job specs, each tuning the tasks whose index is ``k`` modulo ``parts``."""
    if mock is not None:
        raise ValueError("--split applies to TVM jobs, not --mock ones")
    if sla:
        raise ValueError("--split does not combine with --sla-ms yet; give one or the other")
    if parts < 2:
        raise ValueError(f"--split must be at least 2, got {parts}")
    share = -(-spec["trials"] // parts)  # ceil: each sub-job's part of the budget
    children = [
        {**spec, "trials": share, "task_split": [k, parts], "output": None} for k in range(parts)
    ]
    return {**spec, "trials": 0, "split": parts}, children


def stage_info(row: dict[str, Any], request: Any) -> dict[str, Any]:
    """The request's info, plus where a remote job's local device stages measure.

    Only the stages in ``REMOTE_STAGES`` run through the grant's RPC server; a remote
    job's other device stages (evaluate, finalize) build and time the model on the
    scheduler's host, so they ask for the local device of the target instead.
    """
    info = dict(request.info or {})
    kind = request.kind.value if hasattr(request.kind, "value") else str(request.kind)
    if is_remote(row.get("device_kind")) and kind not in REMOTE_STAGES:
        if request.needs.get("device"):
            info["device_kind"] = device_kind_for_target(row["spec"].get("target", "llvm"))
    return info


def job_dir(db_path: Path, job_id: int) -> Path:
    return db_path.with_name(db_path.name + ".jobs") / f"job-{job_id}"


def build_job(row: dict[str, Any], *, db_path: Path) -> Any:
    """Build the job object inside the runner, after the fork."""
    spec = row["spec"]
    if row["kind"] == JobKind.MOCK.value:
        return MockJob(spec["mock"], completed=row["stages_done"])
    from simpletvm.engine import TuningJob  # heavy: imported lazily

    work = job_dir(db_path, row["id"])
    work.mkdir(parents=True, exist_ok=True)
    output = spec.get("output") or str(work / f"{Path(spec['model']).stem}.so")
    tuning_db = spec.get("tuning_db") or str(work / "tuning.db")
    only_tasks = None
    if row.get("parent_id") is not None:  # a sub-job: the parent's database, its tasks
        shared = job_dir(db_path, row["parent_id"])
        shared.mkdir(parents=True, exist_ok=True)
        tuning_db = spec.get("tuning_db") or str(shared / "tuning.db")
        k, parts = spec["task_split"]
        only_tasks = range(k, sys.maxsize, parts)  # task index modulo parts, any count
    return TuningJob.from_model(
        spec["model"],
        target=spec["target"],
        options=TuningOptions(
            trials=spec["trials"],
            per_round=spec["per_round"],
            seed=spec["seed"],
            sla_ms=spec.get("sla_ms"),
            deadline_seconds=spec.get("deadline_seconds"),
            only_tasks=only_tasks,
            **{**SCHED_DEFAULTS, **spec.get("options", {})},
        ),
        db_path=tuning_db,
        output=output,
        # records carry the job's tag: a restarted runner resumes its budget from them
        job_tag=f"{db_path.resolve()}#job-{row['id']}",
    )


def preload(target: str) -> bool:
    """Import what a TVM job on ``target`` needs, in the daemon, before runners fork."""
    try:
        from simpletvm.engine import preload as engine_preload
    except ImportError:
        return False
    engine_preload(target)
    return True
