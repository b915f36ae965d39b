"""What one pass of the daemon reads, from one snapshot of the registry.

A pass used to read its settings, the pending requests, the resources, the active
leases, the suspended ones, the agents' load and the queued jobs one statement at a
time: on PostgreSQL a round trip each, before its grant could even ask for the write
lock. ``pass_view`` reads them all in one read transaction, sent in one pipeline on
PostgreSQL (``store.read_many``), so a grant waits for one round trip instead of eight,
and every part agrees with every other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..models import Held, JobRecord, Pending, Resource
from .base import RESOURCES_SQL, RegistryBase, _job_dict, _resources
from .hosts import HOST_LOAD_SQL, _load
from .jobs import QUEUED_SQL
from .stages import (
    ACTIVE_LEASES_SQL,
    ESTIMATES_SQL,
    PENDING_SQL,
    SUSPENDED_SQL,
    _estimates,
    _held,
    _pending,
    _suspensions,
)

SETTINGS_SQL = "SELECT key, value FROM settings"


@dataclass(frozen=True)
class PassView:
    """The registry as one pass of the daemon sees it."""

    settings: dict[str, str]
    pending: list[Pending]
    resources: dict[str, Resource]
    leases: list[Held]  # active ones
    # suspended leases of the daemon's own host's jobs whose measurement has ended
    suspended: list[dict[str, Any]]
    host_load: dict[str, tuple[int, int]]  # per agent up: (running jobs, max_jobs)
    queued: list[JobRecord]  # the next queued jobs to start, as many as asked
    estimates: tuple[dict[tuple[int, str], float], dict[str, float]] | None = None

    def setting(self, key: str, default: str | None = None) -> str | None:
        return self.settings.get(key, default)


class ViewMixin(RegistryBase):
    def pass_view(self, *, queued: int = 0, estimates: bool = False) -> PassView:
        """Everything a pass reads, in one snapshot: ``queued`` queued jobs at most, and
        the stage estimates if a strategy uses them."""
        queries: list[tuple[str, tuple[Any, ...]]] = [
            (SETTINGS_SQL, ()),
            (PENDING_SQL, ()),
            (RESOURCES_SQL, ()),
            (ACTIVE_LEASES_SQL, ()),
            (SUSPENDED_SQL, ("",)),
            (HOST_LOAD_SQL, ()),
        ]
        if queued > 0:
            queries.append((QUEUED_SQL, (queued,)))
        if estimates:
            queries.append((ESTIMATES_SQL, ()))
        rows = self._read_many(queries)
        settings, pending, resources, leases, suspended, load = rows[:6]
        rest = rows[6:]
        jobs = [_job_dict(r) for r in rest.pop(0)] if queued > 0 else []
        return PassView(
            settings={r[0]: r[1] for r in settings},
            pending=_pending(pending),
            resources=_resources(resources),
            leases=_held(leases),
            suspended=_suspensions(suspended)[0],
            host_load=_load(load),
            queued=jobs,
            estimates=_estimates(rest.pop(0)) if estimates else None,
        )
