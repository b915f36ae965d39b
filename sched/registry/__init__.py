"""The registry: jobs, resources, stage requests, leases and the event log.

A SQLite file by default, or a PostgreSQL database for a ``postgresql://`` URL
(``postgres.py``): the same statements on both. This package owns every SQL statement
of ``sched``.  Rules it keeps (on PostgreSQL, advisory locks stand for the flocks):
- WAL mode, a busy timeout, and ``BEGIN IMMEDIATE`` for every write, so a writer waits
  for the lock up front instead of failing with "database is locked" on upgrade;
- one connection per (process, thread), opened lazily, never reused across ``fork``;
- transactions are short: a lease is a row, never an open transaction;
- every runner write is fenced by its lease epoch or its job attempt (``Fenced``);
- a file that cannot be used (damaged, truncated, junk ``-wal``, deleted under a live
  daemon) is refused with a ``RegistryError`` before SQLite opens it (``health``).
"""

from .base import BUSY_TIMEOUT_S, RegistryBase
from .devices import DevicesMixin
from .health import RegistryError
from .hosts import HostsMixin
from .jobs import JobsMixin
from .schema import MIGRATIONS
from .stages import StagesMixin
from .view import PassView, ViewMixin

__all__ = ["BUSY_TIMEOUT_S", "MIGRATIONS", "PassView", "Registry", "RegistryError"]


class Registry(JobsMixin, StagesMixin, DevicesMixin, HostsMixin, ViewMixin, RegistryBase):
    """All persistent state of one scheduler: one SQLite file or PostgreSQL database."""
