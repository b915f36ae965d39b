"""Remote devices (TVM RPC servers): registration, down/up marks, and a failed stage's retry."""

from __future__ import annotations

import json
from typing import Any

from ..devices import backoff as next_probe
from ..models import EventKind, Fenced, RequestState, ResourceKind
from .base import RegistryBase, _dumps, retried

_DEVICE_COLUMNS = "name, device_group, rpc, down_reason, down_since, failures, retry_at"


def _device_dict(row) -> dict[str, Any]:
    device = dict(row)
    device["rpc"] = json.loads(device["rpc"])
    device["kind"] = device.pop("device_group")
    device["up"] = device["down_reason"] is None
    return device


class DevicesMixin(RegistryBase):
    def add_device(
        self, name: str, group: str, rpc: dict[str, Any], *, now: float | None = None
    ) -> None:
        """Register one RPC server as an exclusive resource (ValueError if the name is taken)."""
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            taken = conn.execute("SELECT kind FROM resources WHERE name = ?", (name,)).fetchone()
            if taken is not None:
                what = "remote device" if taken[0] == ResourceKind.REMOTE.value else "resource"
                raise ValueError(
                    f"a {what} named {name!r} already exists; choose another name"
                    + (" or remove it first (sched device remove)" if what != "resource" else "")
                )
            conn.execute(
                "INSERT INTO resources (name, kind, capacity, exclusive, device_group, rpc)"
                " VALUES (?, ?, 1, 1, ?, ?)",
                (name, ResourceKind.REMOTE.value, group, _dumps(rpc)),
            )
            self._event(
                conn, now, EventKind.DEVICE_ADD, detail={"name": name, "kind": group, "rpc": rpc}
            )

    def remove_device(self, name: str, *, now: float | None = None) -> None:
        """Forget a remote device; refused while a stage holds it."""
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            found = conn.execute(
                "SELECT 1 FROM resources WHERE name = ? AND kind = ?",
                (name, ResourceKind.REMOTE.value),
            ).fetchone()
            if found is None:
                raise KeyError(f"no remote device named {name!r} (see sched device list)")
            for job_id, held in conn.execute(
                "SELECT job_id, resources FROM leases WHERE state = 'active'"
            ).fetchall():
                if name in json.loads(held):
                    raise ValueError(
                        f"device {name!r} is in use by job {job_id}; remove it once idle"
                    )
            conn.execute("DELETE FROM resources WHERE name = ?", (name,))
            self._event(conn, now, EventKind.DEVICE_REMOVE, detail={"name": name})

    def devices(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM resources WHERE kind = ? ORDER BY rowid",
            (ResourceKind.REMOTE.value,),
        )
        return [_device_dict(r) for r in rows]

    def devices_to_probe(self, now: float) -> list[dict[str, Any]]:
        """Down devices whose next probe is due."""
        rows = self.conn.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM resources WHERE kind = ?"
            " AND down_reason IS NOT NULL AND COALESCE(retry_at, 0) <= ? ORDER BY retry_at",
            (ResourceKind.REMOTE.value, now),
        )
        return [_device_dict(r) for r in rows]

    def device_probed(
        self, name: str, reason: str | None, *, backoff: float, now: float | None = None
    ) -> None:
        """Record a probe: up again (reason None), or still down until ``now + backoff``."""
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            if reason is None:
                # failures stay counted until a stage succeeds on it (complete_stage), so a
                # server that answers probes but fails its sessions backs off ever longer
                row = conn.execute(
                    "UPDATE resources SET down_reason = NULL, down_since = NULL,"
                    " retry_at = NULL WHERE name = ? AND down_reason IS NOT NULL RETURNING name",
                    (name,),
                ).fetchone()
                if row is not None:
                    self._event(conn, now, EventKind.DEVICE_UP, resources={name: 1})
                return
            conn.execute(
                "UPDATE resources SET down_reason = ?, failures = failures + 1, retry_at = ?"
                " WHERE name = ? AND down_reason IS NOT NULL",
                (reason, now + backoff, name),
            )

    @retried
    def device_unavailable(
        self,
        epoch: int,
        device: str,
        reason: str,
        *,
        backoff: float | None = None,
        now: float | None = None,
    ) -> int:
        """A stage found its remote device dead: mark it down and ask for the stage again.

        One transaction, fenced by the epoch: the lease is released without recording the
        stage as done, the device is marked down (probed again after ``backoff``), and a
        new request for the same stage goes to the queue, to be granted another server.
        ``backoff`` defaults to ``devices.backoff`` of the device's failures so far.
        Returns the new request's id.
        """
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            row = conn.execute(
                "SELECT l.job_id, l.kind, l.resources, l.request_id, l.started_at, r.attempt,"
                " r.stage_index, r.needs, r.info FROM leases l JOIN requests r"
                " ON r.id = l.request_id WHERE l.epoch = ? AND l.state = 'active'",
                (epoch,),
            ).fetchone()
            if row is None:
                raise Fenced(f"lease {epoch} is no longer active")
            job_id, kind, resources, request_id, started, attempt, index, needs, info = row
            resources = json.loads(resources)
            conn.execute(
                "UPDATE leases SET state = 'released', released_at = ?,"
                " started_at = COALESCE(started_at, ?) WHERE epoch = ?",
                (now, now, epoch),
            )
            if started is None:
                self._event(conn, now, EventKind.START, job_id, kind, epoch, resources)
            conn.execute(
                "UPDATE requests SET state = ? WHERE id = ?",
                (RequestState.RETRIED.value, request_id),
            )
            failures = conn.execute(
                "SELECT failures FROM resources WHERE name = ?", (device,)
            ).fetchone()
            wait = backoff if backoff is not None else next_probe(failures[0] if failures else 0)
            conn.execute(
                "UPDATE resources SET down_reason = ?, down_since = ?, failures = failures + 1,"
                " retry_at = ? WHERE name = ? AND kind = ?",
                (reason, now, now + wait, device, ResourceKind.REMOTE.value),
            )
            failed = {"device_unavailable": device, "reason": reason}
            self._event(conn, now, EventKind.END, job_id, kind, epoch, resources, failed)
            self._event(conn, now, EventKind.RELEASE, job_id, kind, epoch, resources)
            self._event(
                conn, now, EventKind.DEVICE_DOWN, job_id, kind, epoch, {device: 1},
                {"reason": reason},
            )  # fmt: skip
            requested = self._insert_request(
                conn, job_id, attempt, index, kind, json.loads(needs), json.loads(info), now
            )
        return requested()

    def rpc_of(self, names: list[str]) -> dict[str, Any] | None:
        """The RPC address (plus ``name``) of the remote device among ``names``, if any."""
        if not names:
            return None
        marks = ",".join("?" * len(names))
        row = self.conn.execute(
            f"SELECT name, rpc FROM resources WHERE rpc IS NOT NULL AND name IN ({marks})",
            names,
        ).fetchone()
        return {**json.loads(row[1]), "name": row[0]} if row else None
