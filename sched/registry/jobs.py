"""Job rows: submission, runner life-cycle, retries, cancellation."""

from __future__ import annotations

import json
from typing import Any

from ..models import (
    EventKind,
    Fenced,
    JobRecord,
    JobState,
    LeaseState,
    RequestState,
)
from ..paths import jobs_dir, runner_log_dir, used_job_paths
from .base import _JOB_COLUMNS, Connection, RegistryBase, _dumps, _job_dict, retried
from .health import RegistryError
from .stages import PLACE_CHANNEL, WAKE_CHANNEL

_WAITING = "waiting for the daemon to start a runner"
QUEUED_SQL = (  # the next jobs to start: queued, no sub-job of theirs still to run
    f"SELECT {_JOB_COLUMNS} FROM jobs p WHERE state = 'queued' AND NOT EXISTS"
    " (SELECT 1 FROM jobs c WHERE c.parent_id = p.id AND c.state IN"
    " ('queued', 'running')) ORDER BY priority DESC, id LIMIT ?"
)


class JobsMixin(RegistryBase):
    def submit(
        self,
        kind: str,
        spec: dict[str, Any],
        *,
        name: str | None = None,
        priority: int = 0,
        device_kind: str | None = None,
        now: float | None = None,
    ) -> int:
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            job_id = self._insert_job(
                conn, (name, kind, _dumps(spec), priority, device_kind, now, _WAITING, None)
            )
            self._event(conn, now, EventKind.SUBMIT, job_id, detail={"kind": kind})
        return job_id

    def submit_split(
        self,
        kind: str,
        spec: dict[str, Any],
        parts: list[dict[str, Any]],
        *,
        name: str,
        priority: int = 0,
        device_kind: str | None = None,
        now: float | None = None,
    ) -> tuple[int, list[int]]:
        """A parent job and its sub-jobs, in one transaction (no daemon sees half of it).

        The parent stays queued, and is not started, until every sub-job has finished.
        """
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            waiting = f"waiting for its {len(parts)} sub-jobs to finish"
            parent = self._insert_job(
                conn, (name, kind, _dumps(spec), priority, device_kind, now, waiting, None)
            )
            self._event(conn, now, EventKind.SUBMIT, parent, detail={"kind": kind})
            children = []
            for index, part in enumerate(parts, 1):
                child = self._insert_job(
                    conn, (f"{name}/{index}of{len(parts)}", kind, _dumps(part), priority,
                           device_kind, now, _WAITING, parent),
                )  # fmt: skip
                self._event(conn, now, EventKind.SUBMIT, child, detail={"parent": parent})
                children.append(child)
        return parent, children

    def _insert_job(self, conn: Connection, values: tuple) -> int:
        """Insert a queued job (name, kind, spec, priority, device_kind, submitted_at,
        wait_reason, parent_id); its id. An id whose log or working directory is on disk
        was used before: the registry has lost jobs, and the new job would take over
        their files, so the transaction is refused and rolled back."""
        name, kind, spec, priority, device_kind, now, waiting, parent = values
        job_id = int(conn.execute(
            "INSERT INTO jobs (name, kind, spec, priority, device_kind, state, submitted_at,"
            " wait_reason, parent_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (name, kind, spec, priority, device_kind, JobState.QUEUED.value, now, waiting,
             parent),
        ).fetchone()[0])  # fmt: skip
        used = used_job_paths(self.path, job_id)
        if used:
            raise RegistryError(
                f"job id {job_id} was used before ({used[0]} exists) but the registry "
                f"{self.location} has no record of it, so it has lost jobs (a damaged -wal file, "
                f"or an older copy restored); restore it from a backup, or move "
                f"{runner_log_dir(self.path).name} and {jobs_dir(self.path).name} aside"
            )
        return job_id

    def job(self, job_id: int) -> JobRecord | None:
        row = self.conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        found = row.fetchone()
        return _job_dict(found) if found else None

    def list_jobs(self, *, include_finished: bool = True) -> list[JobRecord]:
        where = "" if include_finished else "WHERE state IN ('queued', 'running')"
        rows = self.conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY id")
        return [_job_dict(r) for r in rows]

    def job_states(self, job_ids: list[int]) -> dict[int, JobState]:
        marks = ",".join("?" * len(job_ids))
        rows = self.conn.execute(f"SELECT id, state FROM jobs WHERE id IN ({marks})", job_ids)
        return {int(r[0]): JobState(r[1]) for r in rows}

    def cancel(self, job_id: int, *, now: float | None = None) -> JobState:
        """Queued jobs are cancelled at once; a running one is flagged for the daemon.

        Cancelling a split job cancels its unfinished sub-jobs too."""
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            for (child,) in conn.execute(
                "SELECT id FROM jobs WHERE parent_id = ? AND state IN ('queued', 'running')",
                (job_id,),
            ).fetchall():
                self._cancel_one(conn, child, now)
            return self._cancel_one(conn, job_id, now)

    def _cancel_one(self, conn: Connection, job_id: int, now: float) -> JobState:
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no such job: {job_id}")
        state = JobState(row[0])
        if state is JobState.QUEUED:
            conn.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, wait_reason = NULL WHERE id = ?",
                (JobState.CANCELLED.value, now, job_id),
            )
            self._event(conn, now, EventKind.JOB_CANCELLED, job_id)
            return JobState.CANCELLED
        if state is JobState.RUNNING:
            conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return state

    def queued_jobs(self, limit: int) -> list[dict[str, Any]]:
        return [_job_dict(r) for r in self.conn.execute(QUEUED_SQL, (limit,))]

    def running_jobs(self, *, host: str | None | bool = True) -> list[dict[str, Any]]:
        """Running jobs: all of them (``host=True``), or those on one host (an agent's
        name; None: the daemon's own host)."""
        if host is True:
            rows = self.conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = 'running' ORDER BY id"
            )
        else:
            rows = self.conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = 'running'"
                " AND COALESCE(host, '') = ? ORDER BY id",
                (host or "",),
            )
        return [_job_dict(r) for r in rows]

    def claim_job(self, job_id: int, *, now: float | None = None) -> int:
        """Move a queued job to running before its runner is forked; returns the new attempt."""
        attempts = self.claim_jobs([job_id], now=now)
        if job_id not in attempts:
            raise Fenced(f"job {job_id} is no longer queued")
        return attempts[job_id]

    def claim_jobs(
        self,
        job_ids: list[int],
        *,
        now: float | None = None,
        hosts: dict[int, str | None] | None = None,
    ) -> dict[int, int]:
        """``claim_job`` for several jobs in one transaction: {job id: attempt} of those
        still queued. ``hosts`` places jobs on agents (by name; absent or None: the
        daemon's own host), whose agents then fork their runners."""
        claimed: dict[int, int] = {}
        hosts = hosts or {}
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            for job_id in job_ids:
                host = hosts.get(job_id)
                row = conn.execute(
                    "UPDATE jobs SET state = 'running', attempt = attempt + 1, runner_pid = NULL,"
                    " runner_started = NULL, started_at = COALESCE(started_at, ?), host = ?,"
                    " wait_reason = ? WHERE id = ? AND state = 'queued'"
                    " RETURNING attempt",
                    (
                        now,
                        host,
                        f"starting its runner on {host}" if host else "starting its runner",
                        job_id,
                    ),
                ).fetchone()
                if row is not None:
                    claimed[job_id] = int(row[0])
            placed = sorted({hosts[job_id] for job_id in claimed if hosts.get(job_id)})
            if placed:  # wakes the agents, which fork the runners of jobs placed on them
                self.store.notify(conn, PLACE_CHANNEL, ",".join(placed))
        return claimed

    def set_runners(
        self, runners: list[tuple[int, int, int, float]], *, now: float | None = None
    ) -> None:
        """Record (job id, attempt, pid, process start time) of forked runners, in one
        transaction."""
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            for job_id, attempt, pid, started in runners:
                conn.execute(
                    "UPDATE jobs SET runner_pid = ?, runner_started = ?"
                    " WHERE id = ? AND attempt = ?",
                    (pid, started, job_id, attempt),
                )
                self._event(
                    conn, now, EventKind.RUNNER_START, job_id,
                    detail={"pid": pid, "attempt": attempt},
                )  # fmt: skip

    def runner_gone(
        self,
        job_id: int,
        attempt: int,
        *,
        reason: str,
        retry_limit: int,
        charge: bool = True,
        now: float | None = None,
    ) -> JobState:
        """Reclaim a dead runner's leases and requests, then requeue, cancel or fail its job."""
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            row = conn.execute(
                "SELECT state, attempt, retries, cancel_requested FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            self._reclaim(conn, job_id, reason, now)
            self._event(conn, now, EventKind.RUNNER_EXIT, job_id, detail={"reason": reason})
            self.store.notify(conn, WAKE_CHANNEL)
            state = JobState(row[0])
            if state is not JobState.RUNNING or row[1] != attempt:
                conn.execute(
                    "UPDATE jobs SET runner_pid = NULL WHERE id = ? AND attempt = ?",
                    (job_id, attempt),
                )
                return state
            retries = row[2] + (1 if charge else 0)
            if row[3]:
                new, error, event = JobState.CANCELLED, None, EventKind.JOB_CANCELLED
            elif retries > retry_limit:
                new, event = JobState.FAILED, EventKind.JOB_FAILED
                error = f"runner died {retries} times (limit {retry_limit}); last: {reason}"
            else:
                new, error, event = JobState.QUEUED, None, None
            conn.execute(
                "UPDATE jobs SET state = ?, retries = ?, error = COALESCE(?, error),"
                " runner_pid = NULL, stage = NULL, wait_reason = ?,"
                " finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE id = ?",
                (
                    new.value,
                    retries,
                    error,
                    f"requeued after: {reason}" if new is JobState.QUEUED else None,
                    new.terminal,
                    now,
                    job_id,
                ),
            )
            if event is not None:
                self._event(conn, now, event, job_id, detail={"error": error})
            return new

    def _reclaim(self, conn: Connection, job_id: int, reason: str, now: float) -> None:
        leases = conn.execute(
            "UPDATE leases SET state = ?, released_at = ? WHERE job_id = ? AND state = ?"
            " RETURNING epoch, kind, resources",
            (LeaseState.RECLAIMED.value, now, job_id, LeaseState.ACTIVE.value),
        ).fetchall()
        for epoch, kind, resources in leases:
            self._event(
                conn,
                now,
                EventKind.RECLAIM,
                job_id,
                kind,
                epoch,
                json.loads(resources),
                {"reason": reason},
            )
        conn.execute(
            "UPDATE requests SET state = ? WHERE job_id = ? AND state IN (?, ?)",
            (
                RequestState.ABANDONED.value,
                job_id,
                RequestState.PENDING.value,
                RequestState.GRANTED.value,
            ),
        )

    @retried
    def finish_job(
        self,
        job_id: int,
        attempt: int,
        *,
        state: JobState = JobState.DONE,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        now: float | None = None,
    ) -> None:
        """The runner's last write: done (with its result) or failed (with the reason)."""
        event = EventKind.JOB_DONE if state is JobState.DONE else EventKind.JOB_FAILED
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            row = conn.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, finished_at = ?, stage = NULL,"
                " wait_reason = NULL WHERE id = ? AND attempt = ? AND state = 'running'"
                " RETURNING id",
                (
                    state.value,
                    _dumps(result) if result is not None else None,
                    error,
                    now,
                    job_id,
                    attempt,
                ),
            ).fetchone()
            if row is None:
                raise Fenced(f"job {job_id} attempt {attempt} is no longer running")
            self._reclaim(conn, job_id, "job finished", now)
            self._event(conn, now, event, job_id, detail={"error": error} if error else None)
            self.store.notify(conn, WAKE_CHANNEL)
