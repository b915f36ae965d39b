"""Where the registry lives: --db, then $SCHED_DB, then the user's state directory."""

from __future__ import annotations

import os
from pathlib import Path

DB_NAME = "sched.db"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sched"


def resolve_db(db: str | os.PathLike[str] | None = None) -> Path:
    if db:
        return Path(db).expanduser().resolve()
    env = os.environ.get("SCHED_DB")
    if env:
        return Path(env).expanduser().resolve()
    return state_dir() / DB_NAME


def ensure_private_dir(path: Path) -> None:
    """Create the directory 0700; tighten it when we created it (never chmod a shared dir)."""
    if not path.exists():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)


def pid_file(db: Path) -> Path:
    return db.with_name(db.name + ".pid")


def log_file(db: Path) -> Path:
    return db.with_name(db.name + ".log")


def runner_log_dir(db: Path) -> Path:
    return db.with_name(db.name + ".logs")


def runner_log(db: Path, job_id: int) -> Path:
    return runner_log_dir(db) / f"job-{job_id}.log"


def jobs_dir(db: Path) -> Path:
    return db.with_name(db.name + ".jobs")


def job_dir(db: Path, job_id: int) -> Path:
    """A TVM job's working directory (its tuning database and exported module)."""
    return jobs_dir(db) / f"job-{job_id}"


def private_job_dir(db: Path, job_id: int) -> Path:
    """``job_dir``, created 0700 with its parent (others must not read tuned modules)."""
    work = job_dir(db, job_id)
    for path in (work.parent, work):
        ensure_private_dir(path)
        info = path.stat()
        if info.st_mode & 0o077 and info.st_uid == os.getuid():  # made by an older sched
            os.chmod(path, 0o700)
    return work


def used_job_paths(db: Path, job_id: int) -> list[Path]:
    """What a job of this id left on disk: proof that the id was used before."""
    return [p for p in (runner_log(db, job_id), job_dir(db, job_id)) if os.path.lexists(p)]
