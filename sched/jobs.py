"""The job factory: a submission becomes a registry row, and a row becomes a StagedJob.

A TVM job is described by one ``simpletvm.spec.JobSpec``, built at submit and stored as
its JSON in the row's spec::

    {"job": JobSpec.to_json(),
     "device": "cpu-device" | "gpu" | None,   # the local device kind of its target
     "target_kind": "llvm",                   # the target's TVM kind (the daemon preloads it)
     "task_split": [k, parts],                # a sub-job of a split model
     "split": parts}                          # the parent of a split model

Rows written before the JobSpec held the fields flat (model, target, trials, per_round,
seed, output, tuning_db, sla_ms, deadline_seconds, options); ``row_job_spec`` still
reads them.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from simpletvm.errors import UserInputError
from simpletvm.options import (
    DEFAULT_PER_ROUND,
    FIXED_DEFAULT_TRIALS,
    TuningOptions,
    option_names,
    parse_duration,
)
from simpletvm.pg import is_url
from simpletvm.spec import JobSpec
from simpletvm.targets import parse_target

from .devices import REMOTE_STAGES, is_remote, job_device_kind
from .limits import MAX_SPLIT, check_int
from .mockjob import MockJob, MockSpec
from .models import JobKind
from .paths import private_job_dir
from .resources import device_kind_for_mock, device_kind_for_target, device_kind_of_target

__all__ = ["TUNING_OPTIONS", "SCHED_DEFAULTS", "build_job", "parse_duration", "tvm_spec"]

# TuningOptions fields ``--option`` may set: all but those with flags of their own
_SPEC_FIELDS = {"trials", "per_round", "seed", "sla_ms", "deadline_seconds"}
TUNING_OPTIONS = tuple(n for n in option_names() if n not in _SPEC_FIELDS)
# a job under sched asks for the CPU slots its stages use: one each unless set
SCHED_DEFAULTS = {"search_threads": 1, "builder_workers": 1}


def check_tuning_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Extra TuningOptions, checked by the engine's own rules (``UserInputError``, a
    ValueError, names the unknown field or the bad value), so a job never fails in its
    runner for them."""
    checked = dict(options or {})
    for name in checked:
        if name not in TUNING_OPTIONS:
            raise UserInputError(
                f"unknown tuning option {name!r}; choose from {', '.join(TUNING_OPTIONS)}"
            )
    TuningOptions(**checked).validate()
    return checked


def mock_spec(text: str) -> tuple[dict[str, Any], str | None]:
    """Validated spec dict and device kind for a ``--mock`` job (ValueError if malformed)."""
    spec = MockSpec.parse(text)
    return {"mock": str(spec)}, device_kind_for_mock(spec.device)


def job_spec(
    model: str,
    *,
    target: str = "llvm",
    trials: int | None = FIXED_DEFAULT_TRIALS,
    per_round: int = DEFAULT_PER_ROUND,
    seed: int = 0,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    baselines: bool = True,
    output: str | None = None,
    tuning_db: str | None = None,
    sla_ms: float | None = None,
    deadline_seconds: float | None = None,
    options: dict[str, Any] | None = None,
) -> JobSpec:
    """The JobSpec of ``sched submit``'s flags (``options``: the ``--option`` pairs)."""
    if deadline_seconds is not None and sla_ms is None:
        raise UserInputError("--deadline goes with --sla-ms (a latency target to tune towards)")
    extra = check_tuning_options(options)
    return JobSpec(
        model=model,
        target=target,
        options=TuningOptions(
            trials=trials,
            per_round=per_round,
            seed=seed,
            sla_ms=sla_ms,
            deadline_seconds=deadline_seconds,
            **extra,
        ),
        input_shapes=dict(input_shapes or {}),
        baselines=baselines,
        output=output,
        tuning_db=tuning_db,
    )


def tvm_spec(job: JobSpec, *, device_kind: str | None = None) -> tuple[dict[str, Any], str | None]:
    """The registry spec of a TVM job, and the device kind it measures on.

    The job is checked as the engine would check it in the runner (its options, its
    model loaded with its input shapes, its target resolved), so bad input fails here.
    ``device_kind`` names a kind of remote devices to measure on.
    """
    job = _absolute(job).validate()
    if not Path(job.model).is_file():
        raise UserInputError(
            f"model {job.model!r} does not exist; give the path of an .onnx file"
        )
    remote = job_device_kind(device_kind) if device_kind else None
    target = check_model_and_target(job)
    local = device_kind_of_target(target)
    spec = {"job": job.to_json(), "device": local, "target_kind": target.kind}
    return spec, remote or local


def _absolute(job: JobSpec) -> JobSpec:
    """Paths made absolute: the runner does not run in the submitter's directory."""

    def absolute(path: str | None) -> str | None:
        if is_url(path):  # a shared tuning database on a PostgreSQL server
            return path
        return str(Path(path).expanduser().resolve()) if path else None

    return replace(
        job, model=absolute(job.model), output=absolute(job.output),
        tuning_db=absolute(job.tuning_db),
    )  # fmt: skip


def check_model_and_target(job: JobSpec):
    """Refuse at submit time what the engine would refuse in the runner, with its words;
    returns the resolved target (a ``simpletvm.targets.TargetSpec``)."""
    from simpletvm import model as model_mod
    from simpletvm.targets import resolve_target

    onnx_model = model_mod.load_onnx(job.model)
    model_mod.model_inputs(onnx_model, dict(job.input_shapes) or None)
    model_mod.check_operators(onnx_model)
    return resolve_target(job.target)


def row_job_spec(spec: dict[str, Any]) -> JobSpec:
    """The JobSpec of a TVM job's registry spec (also of a row written before JobSpec)."""
    if "job" in spec:
        return JobSpec.from_json(spec["job"])
    extra = dict(spec.get("options") or {})
    return JobSpec(
        model=spec["model"],
        target=spec.get("target", "llvm"),
        options=TuningOptions(
            trials=spec.get("trials"),
            per_round=spec.get("per_round", DEFAULT_PER_ROUND),
            seed=spec.get("seed", 0),
            sla_ms=spec.get("sla_ms"),
            deadline_seconds=spec.get("deadline_seconds"),
            **extra,
        ),
        output=spec.get("output"),
        tuning_db=spec.get("tuning_db"),
    )


def tvm_job(row: dict[str, Any]) -> JobSpec | None:
    """A row's JobSpec, or None for a MockJob."""
    return None if row["kind"] == JobKind.MOCK.value else row_job_spec(row["spec"])


def target_kind(spec: dict[str, Any]) -> str:
    """The TVM kind of a TVM job's target (carried in the row since JobSpec)."""
    if "target_kind" in spec:
        return spec["target_kind"]
    return kind_of_target(row_job_spec(spec).target)


def kind_of_target(target: str) -> str:
    """The TVM kind of a target as written: a name, a tag or a JSON dict (TargetError if
    malformed); no device is queried."""
    return parse_target(target).kind


def local_device_kind(spec: dict[str, Any]) -> str | None:
    """The local device kind of a TVM job's target (carried in the row since JobSpec)."""
    if "device" in spec:
        return spec["device"]
    return device_kind_for_target(row_job_spec(spec).target)


def split_specs(
    spec: dict[str, Any], parts: int, *, mock: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A parent spec (no tuning: it builds the artifact from the shared records) and
    ``parts`` sub-job specs, each tuning the tasks whose index is ``k`` modulo ``parts``."""
    if mock is not None:
        raise ValueError("--split applies to TVM jobs, not --mock ones")
    check_int("--split", parts, 2, MAX_SPLIT)
    job = row_job_spec(spec)
    if job.options.sla_ms is not None:
        raise ValueError("--split does not combine with --sla-ms yet; give one or the other")
    if job.options.trials is None:
        raise ValueError("--split shares a trial budget out: give --trials")
    share = -(-job.options.trials // parts)  # ceil: each sub-job's part of the budget
    child = replace(job, output=None).with_options(trials=share)
    children = [{**spec, "job": child.to_json(), "task_split": [k, parts]} for k in range(parts)]
    return {**spec, "job": job.with_options(trials=0).to_json(), "split": parts}, children


def stage_info(row: dict[str, Any], request: Any) -> dict[str, Any]:
    """The request's info, plus where a remote job's local device stages measure.

    Only the stages in ``REMOTE_STAGES`` run through the grant's RPC server; a remote
    job's other device stages (evaluate, finalize) build and time the model on the
    scheduler's host, so they ask for the local device of the target instead.
    """
    info = dict(request.info or {})
    if is_remote(row.get("device_kind")) and request.kind.value not in REMOTE_STAGES:
        if request.needs.get("device"):
            info["device_kind"] = local_device_kind(row["spec"])
    return info


def build_job(row: dict[str, Any], *, db_path: Path, registry: str | None = None) -> Any:
    """Build the job object inside the runner, after the fork. ``registry`` names the
    registry in the records' job tags (default: ``db_path``): for a PostgreSQL registry
    its URL without the password, the same on every host, so a job resumed on another
    host counts the records it made on the first."""
    spec = row["spec"]
    if row["kind"] == JobKind.MOCK.value:
        return MockJob(spec["mock"], completed=row["stages_done"])
    job = row_job_spec(spec)
    work = private_job_dir(db_path, row["id"])
    output = job.output or str(work / f"{Path(job.model).stem}.so")
    tuning_db = job.tuning_db or str(work / "tuning.db")
    changes: dict[str, Any] = {
        name: value for name, value in SCHED_DEFAULTS.items() if getattr(job.options, name) is None
    }
    if row.get("parent_id") is not None:  # a sub-job: the parent's database, its tasks
        shared = private_job_dir(db_path, row["parent_id"])
        tuning_db = job.tuning_db or str(shared / "tuning.db")
        k, parts = spec["task_split"]
        changes["only_tasks"] = range(k, sys.maxsize, parts)  # task index modulo parts
    # records carry the job's tag: a restarted runner resumes its budget from them
    return job.with_options(**changes).tuning_job(
        job_tag=f"{registry or db_path.resolve()}#job-{row['id']}", db_path=tuning_db,
        output=output,
    )


def preload(kind: str) -> bool:
    """Import what a TVM job on a target of this kind needs, in the daemon, before runners
    fork (``kind`` is the row's ``target_kind``)."""
    try:
        from simpletvm.engine import preload as engine_preload
    except ImportError:
        return False
    engine_preload(kind)
    return True
