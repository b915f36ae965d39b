"""Where the registry lives: --db, then $SCHED_DB, then the user's state directory.

The registry is a SQLite file or a PostgreSQL database (a ``postgresql://`` URL). What a
scheduler keeps on its own disk (pid file, logs, runners' logs, jobs' working folders)
sits beside the file, or, for a URL, beside a local *anchor* path named after the
server and database (``local_base``), so every helper below takes either.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, urlsplit, urlunsplit

DB_NAME = "sched.db"
URL_SCHEMES = ("postgresql://", "postgres://")
Locator = Path | str  # a registry file, or a postgresql:// URL


def is_url(db: object) -> bool:
    """Is ``db`` a PostgreSQL URL (rather than a file path)?"""
    return isinstance(db, str) and db.startswith(URL_SCHEMES)


def locator(db: str | os.PathLike[str]) -> Locator:
    """``db`` as the registry's locator: a URL stays a string, anything else is a path."""
    return str(db) if is_url(str(db)) and not isinstance(db, Path) else Path(db)


def _split(url: str) -> SplitResult:
    """The URL's parts; a malformed one (a port that is not a number) is a ValueError
    that says what to give."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise ValueError(
            f"the registry URL is malformed ({exc}); give postgresql://USER@HOST[:PORT]/DATABASE"
        ) from None
    return parts


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = _split(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def display(db: Locator) -> str:
    """How messages name the registry: its path, or its URL without the password."""
    return redact(db) if is_url(db) else str(db)


def local_base(db: Locator) -> Path:
    """The path the local files hang off: the file itself, or for a URL a name made of
    its host, port and database in the state directory (it is never created itself)."""
    if not is_url(db):
        return Path(db)
    parts = _split(db)
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host") or "local"
    port = parts.port or query.get("port")
    database = parts.path.lstrip("/") or query.get("dbname") or "postgres"
    name = f"{database}@{host}" + (f"-{port}" if port else "")
    return state_dir() / "postgresql" / (re.sub(r"[^A-Za-z0-9._@-]+", "_", name) + ".db")


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sched"


def resolve_db(db: str | os.PathLike[str] | None = None) -> Locator:
    """--db, else $SCHED_DB, else the default file: an absolute path, or a URL as given."""
    for given in (db, os.environ.get("SCHED_DB")):
        if given:
            if is_url(str(given)):
                return str(given)
            return Path(given).expanduser().resolve()
    return state_dir() / DB_NAME


def ensure_private_dir(path: Path) -> None:
    """Create the directory 0700; tighten it when we created it (never chmod a shared dir)."""
    if not path.exists():
        missing = [path, *(p for p in path.parents if not p.exists())]
        for folder in reversed(missing):  # each folder we create is 0700, parents too
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)


def _beside(db: Locator, suffix: str) -> Path:
    base = local_base(db)
    return base.with_name(base.name + suffix)


def pid_file(db: Locator) -> Path:
    return _beside(db, ".pid")


def agent_pid_file(db: Locator, name: str) -> Path:
    """The pid file of this host's agent ``name`` for ``db``."""
    return _beside(db, f".agent-{name}.pid")


def log_file(db: Locator) -> Path:
    return _beside(db, ".log")


def runner_log_dir(db: Locator) -> Path:
    return _beside(db, ".logs")


def runner_log(db: Locator, job_id: int) -> Path:
    return runner_log_dir(db) / f"job-{job_id}.log"


def jobs_dir(db: Locator) -> Path:
    return _beside(db, ".jobs")


def job_dir(db: Locator, job_id: int) -> Path:
    """A TVM job's working directory (its tuning database and exported module)."""
    return jobs_dir(db) / f"job-{job_id}"


def private_job_dir(db: Locator, job_id: int) -> Path:
    """``job_dir``, created 0700 with its parent (others must not read tuned modules)."""
    work = job_dir(db, job_id)
    for path in (work.parent, work):
        ensure_private_dir(path)
        info = path.stat()
        if info.st_mode & 0o077 and info.st_uid == os.getuid():  # made by an older sched
            os.chmod(path, 0o700)
    return work


def used_job_paths(db: Locator, job_id: int) -> list[Path]:
    """What a job of this id left on disk: proof that the id was used before."""
    return [p for p in (runner_log(db, job_id), job_dir(db, job_id)) if os.path.lexists(p)]
