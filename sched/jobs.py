"""The job factory: a registry row becomes a StagedJob (MockJob or a real TVM TuningJob)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .mockjob import MockJob, MockSpec
from .models import JobKind
from .resources import device_kind_for_mock, device_kind_for_target


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
) -> tuple[dict[str, Any], str | None]:
    path = Path(model).expanduser()
    if not path.is_file():
        raise ValueError(f"model {model!r} does not exist; give the path of an .onnx file")
    if trials < 1 or per_round < 1:
        raise ValueError("--trials and --per-round must be at least 1")
    if not target.strip():
        raise ValueError("--target must not be empty (e.g. llvm or cuda)")
    spec = {
        "model": str(path.resolve()),
        "target": target,
        "trials": trials,
        "per_round": per_round,
        "seed": seed,
        "output": str(Path(output).resolve()) if output else None,
        "tuning_db": str(Path(tuning_db).resolve()) if tuning_db else None,
    }
    return spec, device_kind_for_target(target)


def job_dir(db_path: Path, job_id: int) -> Path:
    return db_path.with_name(db_path.name + ".jobs") / f"job-{job_id}"


def build_job(row: dict[str, Any], *, db_path: Path) -> Any:
    """Build the job object inside the runner, after the fork."""
    spec = row["spec"]
    if row["kind"] == JobKind.MOCK.value:
        return MockJob(spec["mock"], completed=row["stages_done"])
    from simpletvm.engine import TuningJob, TuningOptions  # heavy: imported lazily

    work = job_dir(db_path, row["id"])
    work.mkdir(parents=True, exist_ok=True)
    output = spec.get("output") or str(work / f"{Path(spec['model']).stem}.so")
    return TuningJob.from_model(
        spec["model"],
        target=spec["target"],
        options=TuningOptions(
            trials=spec["trials"], per_round=spec["per_round"], seed=spec["seed"]
        ),
        db_path=spec.get("tuning_db") or str(work / "tuning.db"),
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
