"""Agents' hosts: registration, heartbeats on the database's clock, placement and fencing.

An agent (``sched agent``) runs the runners of the jobs the daemon places on its host.
Its heartbeat is stamped with the database's clock (``now_sql``), and the daemon judges
it with the same clock, so no host's clock matters. A host silent for longer than the
timeout is fenced: its row says so, its resources are withdrawn, and its running jobs
are requeued with a new attempt, which fences every later write of its runners.
"""

from __future__ import annotations

import json
from typing import Any

from ..models import EventKind, Resource
from .base import RegistryBase, retried
from .health import RegistryError

HOST_COLUMNS = "name, pid, started, max_jobs, registered_at, heartbeat_at, state, reason"
HOST_LOAD_SQL = (
    "SELECT h.name, h.max_jobs, (SELECT COUNT(*) FROM jobs j WHERE j.host = h.name"
    " AND j.state = 'running') FROM hosts h WHERE h.state = 'up' ORDER BY h.name"
)


def _load(rows) -> dict[str, tuple[int, int]]:
    return {r[0]: (int(r[2]), int(r[1])) for r in rows}


class HostsMixin(RegistryBase):
    @property
    def now_sql(self) -> str:
        """An SQL expression for the database's clock, in Unix seconds."""
        return self.store.NOW_SQL

    def db_now(self) -> float:
        """The database's clock now, in Unix seconds."""
        return float(self.conn.execute(f"SELECT {self.now_sql}").fetchone()[0])

    def register_host(
        self,
        name: str,
        *,
        pid: int,
        started: float,
        max_jobs: int,
        resources: list[Resource],
        timeout: float,
    ) -> None:
        """Register (or re-register) the agent ``name`` and its resources (named
        ``kind@name``). Refused while another agent of that name beats."""
        with self._write() as conn:
            row = conn.execute(
                f"SELECT pid, started, state, {self.now_sql} - heartbeat_at FROM hosts"
                " WHERE name = ?",
                (name,),
            ).fetchone()
            if row is not None and row[2] == "up" and row[3] < timeout:
                if (row[0], row[1]) != (pid, started):
                    raise RegistryError(
                        f"an agent named {name!r} already runs (pid {row[0]}, last heartbeat "
                        f"{row[3]:.1f} s ago); stop it first or give this one another --name"
                    )
            conn.execute("DELETE FROM hosts WHERE name = ?", (name,))
            conn.execute(
                f"INSERT INTO hosts ({HOST_COLUMNS}) VALUES"
                f" (?, ?, ?, ?, {self.now_sql}, {self.now_sql}, 'up', NULL)",
                (name, pid, started, max_jobs),
            )
            conn.execute("DELETE FROM resources WHERE host = ?", (name,))
            self._insert_resources(conn, resources)
            now = conn.execute(f"SELECT {self.now_sql}").fetchone()[0]
            self._event(conn, now, EventKind.HOST_UP, detail={"host": name, "pid": pid})

    @retried
    def host_heartbeat(self, name: str, pid: int) -> bool:
        """Renew the agent's heartbeat (``_touch``); False once it has been fenced (or
        replaced)."""
        return self._touch(
            "UPDATE hosts SET heartbeat_at = {now}"
            " WHERE name = ? AND pid = ? AND state = 'up' RETURNING name",
            (name, pid),
        )

    def hosts(self) -> list[dict[str, Any]]:
        """Every agent's row, with ``age``: seconds since its last heartbeat (db clock)."""
        rows = self.conn.execute(
            f"SELECT {HOST_COLUMNS}, {self.now_sql} - heartbeat_at AS age FROM hosts ORDER BY name"
        )
        return [dict(r) for r in rows]

    def host_load(self) -> dict[str, tuple[int, int]]:
        """Per agent that is up: (running jobs placed on it, its max_jobs)."""
        return _load(self.conn.execute(HOST_LOAD_SQL))

    def stale_hosts(self, timeout: float) -> list[dict[str, Any]]:
        """Agents up whose heartbeat (database clock) is older than ``timeout`` seconds."""
        rows = self.conn.execute(
            f"SELECT {HOST_COLUMNS}, {self.now_sql} - heartbeat_at AS age FROM hosts"
            f" WHERE state = 'up' AND heartbeat_at < {self.now_sql} - ?",
            (timeout,),
        )
        return [dict(r) for r in rows]

    def fence_host(self, name: str, reason: str, *, state: str = "fenced") -> list[int]:
        """Fence an agent (or record that it stopped, ``state='stopped'``): withdraw its
        resources; its running jobs are returned, for ``runner_gone`` to requeue."""
        with self._write() as conn:
            row = conn.execute(
                "UPDATE hosts SET state = ?, reason = ? WHERE name = ? AND state = 'up'"
                " RETURNING name",
                (state, reason, name),
            ).fetchone()
            conn.execute("DELETE FROM resources WHERE host = ?", (name,))
            jobs = [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM jobs WHERE host = ? AND state = 'running' ORDER BY id",
                    (name,),
                )
            ]
            if row is not None:
                now = conn.execute(f"SELECT {self.now_sql}").fetchone()[0]
                kind = EventKind.HOST_FENCED if state == "fenced" else EventKind.HOST_DOWN
                self._event(conn, now, kind, detail={"host": name, "reason": reason})
        return jobs

    def assigned_jobs(self, host: str) -> list[dict[str, Any]]:
        """Running jobs placed on ``host`` whose runner its agent has not forked yet."""
        rows = self.conn.execute(
            "SELECT id, attempt, kind, spec FROM jobs WHERE state = 'running' AND host = ?"
            " AND runner_pid IS NULL ORDER BY id",
            (host,),
        )
        return [
            {"id": int(r[0]), "attempt": int(r[1]), "kind": r[2], "spec": json.loads(r[3])}
            for r in rows
        ]
