"""Is the registry file usable? Checked before SQLite opens it, so that a damaged file is
refused with one line that names it and says what to do, instead of being read wrongly
or "recovered" by SQLite silently dropping what it cannot read.

- a directory, an unreadable file, or a file that is not SQLite: refused;
- a truncated file (smaller than its header says): refused;
- a write-ahead log (``-wal``) whose header is junk: refused. SQLite would ignore the
  whole log, showing the registry as of its last checkpoint, and the first connection
  to close would then delete the log and the jobs in it for good;
- a missing file while a live daemon's pid file points at it (the registry was deleted
  under the daemon): refused, rather than creating a new, empty registry;
- ``damaged``: a SQLite error that means the file is corrupt, as a ``RegistryError``.

Only ``header_problem`` opens the database file itself, and only when this process holds
no SQLite connection to it: closing any descriptor of a file drops every POSIX lock the
process holds on it, SQLite's too. The ``-wal`` file carries no locks.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import struct
import time
from pathlib import Path

from ..paths import pid_file
from ..pidfile import running_pid

SQLITE_MAGIC = b"SQLite format 3\x00"
WAL_MAGICS = (0x377F0682, 0x377F0683)  # little- or big-endian frame checksums
RETRIES = 3  # a checkpoint in flight can make a healthy file look short for a moment


class RegistryError(ValueError):
    """The registry file cannot be used; the message names it and says what to do."""


ASIDE = (
    "move it aside (with its -wal and -shm files) and restore it from a backup, or give "
    "another registry with --db or SCHED_DB"
)


def check_file(path: Path, *, header: bool = True) -> None:
    """Raise ``RegistryError`` if ``path`` is not a usable registry (a missing file is
    fine, unless a live daemon serves it). ``header=False`` skips reading the file."""
    for attempt in range(RETRIES):
        problem = file_problem(path, header=header)
        if problem is None:
            return
        if attempt < RETRIES - 1:
            time.sleep(0.05)
    raise RegistryError(problem)


def file_problem(path: Path, *, header: bool = True) -> str | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return missing_problem(path)
    except OSError as exc:
        return f"cannot reach the registry {path} ({exc.strerror}); give another with --db"
    if stat.S_ISDIR(info.st_mode):
        return (
            f"the registry {path} is a directory, not a file; give the registry file "
            f"with --db or SCHED_DB, or move the directory aside"
        )
    if not stat.S_ISREG(info.st_mode):
        return f"the registry {path} is not a regular file; give a file with --db"
    if not os.access(path, os.R_OK | os.W_OK):
        return (
            f"cannot read and write the registry {path} (permission denied); "
            f"make it readable and writable by you (chmod u+rw) or give another with --db"
        )
    return (header and header_problem(path, info.st_size)) or wal_problem(path)


def missing_problem(path: Path) -> str | None:
    pid = running_pid(pid_file(path))
    if pid is None:
        return None  # a new registry
    return (
        f"the registry {path} is missing while the daemon (pid {pid}) still serves it; "
        f"restore the file from a backup, or stop the daemon (sched stop --db {path}) "
        f"before starting afresh"
    )


def header_problem(path: Path, size: int) -> str | None:
    """A file that is not SQLite, or is shorter than the page count in its header."""
    if size == 0:
        return None  # created, not yet written: a new registry
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(SQLITE_MAGIC):
        return f"the registry {path} is not a SQLite database (damaged, or another file); {ASIDE}"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    valid = head[24:28] == head[92:96]  # the header's page count is current
    if valid and size < pages * page_size:
        return f"the registry {path} is truncated ({size} of {pages * page_size} bytes); {ASIDE}"
    return None


def wal_problem(path: Path) -> str | None:
    wal = path.with_name(path.name + "-wal")
    try:
        with open(wal, "rb") as f:
            head = f.read(32)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read the registry's write-ahead log {wal} ({exc.strerror})"
    if len(head) < 32 or wal_header_ok(head):
        return None  # empty or never written (SQLite ignores it too), or sound
    return (
        f"the registry's write-ahead log {wal} is damaged, so the jobs recorded since the "
        f"last checkpoint cannot be read; copy {path.name} and {wal.name} aside, then "
        f"restore both from a backup, or delete {wal.name} to go on without those jobs"
    )


def wal_header_ok(head: bytes) -> bool:
    """SQLite's WAL header: magic, version, a power-of-two page size and its checksum."""
    magic, version, page_size = struct.unpack(">III", head[:12])
    if magic not in WAL_MAGICS or version != 3007000:
        return False
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return False
    order = ">" if magic & 1 else "<"
    words = struct.unpack(f"{order}6I", head[:24])
    s0 = s1 = 0
    for i in range(0, 6, 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return struct.unpack(">II", head[24:32]) == (s0, s1)


def corrupt(exc: BaseException) -> bool:
    """Is this SQLite error a damaged file (not a lock, a full disk or a bad statement)?"""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def damaged(path: Path, exc: BaseException) -> RegistryError | None:
    """A ``RegistryError`` for a SQLite error that means the file is damaged, else None."""
    if isinstance(exc, RegistryError):
        return exc
    if not isinstance(exc, sqlite3.DatabaseError) or not corrupt(exc):
        return None
    return RegistryError(f"the registry {path} is damaged ({exc}); {ASIDE}")
