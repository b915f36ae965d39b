"""Access to the project's scheduler package, imported as ``tvmsched``.

The scheduler lives in the ``sched/`` folder but is installed under the import name
``tvmsched``: Python's standard library already has a module called ``sched``, which
comes first on ``sys.path`` and would hide ours. Importing lazily keeps superb's own
tests independent of the scheduler.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import SuperbError

PACKAGE = "tvmsched"


class SchedUnavailable(SuperbError):
    """The sched package (or the part superb needs) cannot be imported."""


def module(name: str = "api") -> ModuleType:
    """``tvmsched.<name>``."""
    try:
        return importlib.import_module(f"{PACKAGE}.{name}")
    except ImportError as exc:
        raise SchedUnavailable(
            f"cannot import {PACKAGE}.{name}: {exc}; points with several jobs or mock jobs "
            "need the sched package (pip install -e . in the project root)"
        ) from None


def available(name: str = "api") -> bool:
    try:
        module(name)
    except SchedUnavailable:
        return False
    return True
