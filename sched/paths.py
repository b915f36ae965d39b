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
