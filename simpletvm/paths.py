"""The per-user state directory (0700): logs and the default tuning database."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    base = os.environ.get("SIMPLETVM_HOME")
    if base:
        path = Path(base)
    else:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        path = Path(xdg) / "simpletvm"
    return private_dir(path)


def private_dir(path: Path) -> Path:
    """Create ``path`` 0700 if it is new; never change the mode of a directory we did not
    create (SIMPLETVM_HOME=/tmp must not lock /tmp): warn if others can read it."""
    try:
        path.mkdir(mode=0o700, parents=True)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        if not path.is_dir():
            raise
        if path.stat().st_mode & 0o077:
            import sys

            print(f"warning: state directory {path} is readable by other users; "
                  "its logs and tuning database may be too", file=sys.stderr)
    return path


def default_db() -> Path:
    return state_dir() / "tuning.db"
