"""superb's per-user state: the internal-error log and the default work root.

Both live in a private directory (0700): ``$SUPERB_HOME`` if set, else ``superb`` inside
simpletvm's state directory (``$SIMPLETVM_HOME``, or ``$XDG_STATE_HOME/simpletvm``, or
``~/.local/state/simpletvm``). Nothing is written to a fixed name in a shared directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from simpletvm.paths import private_dir
from simpletvm.paths import state_dir as simpletvm_state_dir

from . import SuperbError

HOME_ENV = "SUPERB_HOME"


def state_dir() -> Path:
    base = os.environ.get(HOME_ENV)
    return private_dir(Path(base) if base else simpletvm_state_dir() / "superb")


def log_path() -> Path:
    return state_dir() / "superb.log"


def default_work_root() -> Path:
    """Where points keep their scratch files unless ``--work-dir`` says otherwise."""
    return state_dir() / "work"


def append_log(text: str) -> Path:
    """Append ``text`` to the log: created 0600, never through a symbolic link."""
    path = log_path()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "a") as fh:
        os.fchmod(fd, 0o600)  # a log written before this rule may be 0644
        fh.write(text)
    return path


def check_work_root(path: Path) -> Path:
    """``--work-dir`` must be a directory, or a path where one can be created (0700)."""
    existing = next((p for p in (path, *path.parents) if os.path.lexists(p)), None)
    if existing is not None and not existing.is_dir():
        named = "" if existing == path else f" ({existing} is a file)"
        raise SuperbError(
            f"--work-dir {path} is not a directory{named}; name a directory (it is "
            "created if missing) or leave --work-dir out"
        )
    return path


def make_work_root(path: Path) -> Path:
    """Create the work root 0700 if it is missing (an existing one is left as it is)."""
    if not path.is_dir():
        private_dir(path)
    return path
