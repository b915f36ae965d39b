"""Stage requests, leases with epochs, stage statistics and the event log."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..models import (
    EventKind,
    Fenced,
    Grant,
    Held,
    Pending,
    RequestState,
)
from .base import Connection, RegistryBase, _dumps, _parsed_units, _units, retried
from .postgres import EXPECT, Changed

WAKE_CHANNEL = "sched_wake"  # PostgreSQL: a runner asked for a stage or finished one
GRANT_CHANNEL = "sched_grant"  # PostgreSQL: stages were granted (payload: job ids)
SUSPEND_CHANNEL = "sched_suspend"  # PostgreSQL: an agent is asked to suspend (payload: host)
PLACE_CHANNEL = "sched_place"  # PostgreSQL: jobs were placed on agents (payload: their hosts)
GATE_WAIT_S = 2.0  # how long a grant that suspends stages waits for the writers' gate
# Is the suspender of lease ``l`` (the measurement's request) still holding an active
# lease? Only then are ``l``'s units lent to it; once it has ended they are ``l``'s again,
# even before the next pass resumes ``l`` (strategies.lending does the same).
SUSPENDER_LEASED = (
    "EXISTS (SELECT 1 FROM leases m WHERE m.request_id = l.suspended_for AND m.state = 'active')"
)
# ... and what must not be continued yet: that, or a suspension an agent made for a
# request still pending (its units are lent to that request alone: ``_reserved``)
SUSPENDER_ACTIVE = (
    f"({SUSPENDER_LEASED} OR (l.remote_suspend = 1 AND EXISTS (SELECT 1 FROM requests q"
    " WHERE q.id = l.suspended_for AND q.state = 'pending')))"
)
# an agent's host suspends its own runners: the leases it is asked to suspend, still wanted
WANTED = (
    "l.state = 'active' AND l.suspended_for IS NULL AND l.suspend_wanted IS NOT NULL"
    " AND EXISTS (SELECT 1 FROM requests q WHERE q.id = l.suspend_wanted AND q.state = 'pending')"
)
# A lease's job's host ('' for the daemon's own), looked up by the job's key for each
# lease the other conditions leave. Not a join: a registry's statistics are stale while
# it is young (the server's autovacuum analyzes a table a minute after it changes at
# the earliest), and on PostgreSQL a join of leases and jobs filtered on the host was
# then planned from the jobs side, one scan of the active leases per job (figures in
# docs/multihost.md, section 8).
LEASE_HOST = "COALESCE((SELECT j.host FROM jobs j WHERE j.id = l.job_id), '')"
WANTED_SQL = (  # of one agent's host: the leases the daemon asked it to suspend
    "SELECT l.epoch, l.job_id, l.kind, l.resources, l.holder_pid, l.holder_started,"
    f" l.suspend_wanted FROM leases l WHERE {WANTED} AND {LEASE_HOST} = ? ORDER BY l.epoch"
)


PENDING_SQL = (
    "SELECT r.id, r.job_id, r.kind, r.needs, r.requested_at, j.priority, j.device_kind,"
    " r.info, j.host FROM requests r JOIN jobs j ON j.id = r.job_id"
    " WHERE r.state = 'pending' ORDER BY r.id"
)
ACTIVE_LEASES_SQL = (
    "SELECT epoch, job_id, kind, resources, granted_at, started_at, suspended_for,"
    " request_id, remote_suspend FROM leases WHERE state = 'active' ORDER BY epoch"
)
SUSPENDED_SQL = (  # of one host's jobs (its name, '' for the daemon's own): every
    # suspended lease, and whether its measurement is over (then it may be continued)
    "SELECT l.epoch, l.job_id, l.kind, l.holder_pid, l.holder_started,"
    f" CASE WHEN {SUSPENDER_ACTIVE} THEN 0 ELSE 1 END FROM leases l"
    " WHERE l.state = 'active' AND l.suspended_for IS NOT NULL"
    f" AND {LEASE_HOST} = ? ORDER BY l.epoch"
)
LEASE_DONE_SQL = (  # an active lease, as its release reads it (_release_done)
    "SELECT l.job_id, l.kind, l.resources, l.request_id, l.started_at, l.paused_s,"
    " l.suspended_at, j.attempt, l.suspended_for"
    " FROM leases l JOIN jobs j ON j.id = l.job_id"
    " WHERE l.epoch = ? AND l.state = 'active'"
)
LEASE_UNCHANGED = (  # ... and as it was read before the write lock (not suspended)
    "EXISTS (SELECT 1 FROM leases l WHERE l.epoch = ? AND l.state = 'active'"
    " AND l.suspended_at IS NULL AND l.suspended_for IS NULL AND l.paused_s = ?"
    " AND (l.started_at IS NULL) = ?"
    " AND (SELECT j.attempt FROM jobs j WHERE j.id = l.job_id) = ?)"
)
ESTIMATES_SQL = "SELECT job_id, kind, count, seconds FROM stage_stats"
# inside a grant, under the write lock: capacities, units held, units reserved by agents
CAPACITY_SQL = "SELECT name, capacity FROM resources"
UNITS_HELD_SQL = (  # but for suspended leases whose measurement still runs (lent to it)
    "SELECT l.resources FROM leases l WHERE l.state = 'active'"
    f" AND NOT (l.suspended_for IS NOT NULL AND {SUSPENDER_LEASED})"
)
LAST_EPOCH_SQL = "SELECT COALESCE(MAX(epoch), 0) FROM leases"
RESERVED_SQL = (  # per pending request: the leases an agent suspended for it
    "SELECT l.suspended_for, l.resources FROM leases l WHERE l.state = 'active'"
    f" AND l.remote_suspend = 1 AND NOT {SUSPENDER_LEASED}"
)


# The parsers of what a pass reads unpack each row (no lookup by index or name), and
# parse resources and needs through ``_units``: a pass reads every active lease.
def _pending(rows) -> list[Pending]:
    return [
        Pending(rid, job, kind, _units(needs), at, prio, device, json.loads(info), host)
        for rid, job, kind, needs, at, prio, device, info, host in rows
    ]


def _held(rows) -> list[Held]:
    return [
        Held(epoch, job, kind, _units(held), granted, started, lent is not None, lent, rid,
             bool(remote))  # fmt: skip
        for epoch, job, kind, held, granted, started, lent, rid, remote in rows
    ]


def _estimates(rows) -> tuple[dict[tuple[int, str], float], dict[str, float]]:
    per_job: dict[tuple[int, str], float] = {}
    totals: dict[str, list[float]] = {}
    for job_id, kind, count, seconds in rows:
        per_job[(job_id, kind)] = seconds / count
        acc = totals.setdefault(kind, [0.0, 0.0])
        acc[0] += seconds
        acc[1] += count
    return per_job, {k: s / n for k, (s, n) in totals.items() if n}


def _suspensions(rows) -> tuple[list[dict[str, Any]], int]:
    """``SUSPENDED_SQL``'s rows: the leases whose measurement is over, and how many others
    still wait for theirs."""
    ended, waiting = [], 0
    for epoch, job_id, kind, pid, started, over in rows:
        if over:
            ended.append({"epoch": epoch, "job_id": job_id, "kind": kind, "holder_pid": pid,
                          "holder_started": started})  # fmt: skip
        else:
            waiting += 1
    return ended, waiting


def _units_held(rows) -> dict[str, int]:
    used: dict[str, int] = {}
    for (held,) in rows:
        for name, amount in _parsed_units(held):
            used[name] = used.get(name, 0) + amount
    return used


def _reserved(rows) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for request_id, held in rows:
        units = out.setdefault(int(request_id), {})
        for name, amount in _parsed_units(held):
            units[name] = units.get(name, 0) + amount
    return out


class StagesMixin(RegistryBase):
    def _insert_request(
        self, conn, job_id, attempt, stage_index, kind, needs, info, now
    ) -> Callable[[], int]:
        """Request a stage, fenced by the job's attempt and state: what the job row says,
        the log and the wake-up are written only with the request (the same condition),
        so none of them needs the insert's result. Returns what reads the request's id
        once the write has committed (``Fenced`` if the job may not request stages), so
        on PostgreSQL the request and the commit go to the server in one round trip."""
        fence = "id = ? AND attempt = ? AND state = 'running' AND cancel_requested = 0"
        cursor = conn.execute(
            "INSERT INTO requests (job_id, attempt, stage_index, kind, needs, info, state,"
            f" requested_at) SELECT id, attempt, ?, ?, ?, ?, ?, ? FROM jobs WHERE {fence}"
            " RETURNING id",
            (
                stage_index,
                kind,
                _dumps(needs),
                _dumps(info),
                RequestState.PENDING.value,
                now,
                job_id,
                attempt,
            ),
        )
        early = cursor.fetchone() if self.store.READ_BEFORE_COMMIT else None
        conn.execute(
            f"UPDATE jobs SET stage = ?, wait_reason = 'waiting for a grant' WHERE {fence}",
            (kind, job_id, attempt),
        )
        conn.execute(
            "INSERT INTO events (ts, kind, job_id, stage, epoch, resources, detail)"
            f" SELECT ?, ?, id, ?, NULL, NULL, ? FROM jobs WHERE {fence}",
            (now, EventKind.REQUEST.value, kind, _dumps({"needs": needs}), job_id, attempt),
        )
        self.store.notify(conn, WAKE_CHANNEL)  # a daemon on another host hears it at commit

        def requested() -> int:
            row = early if self.store.READ_BEFORE_COMMIT else cursor.fetchone()
            if row is None:
                raise Fenced(f"job {job_id} attempt {attempt} may not request stages")
            return int(row[0])

        return requested

    @retried
    def request_stage(
        self,
        job_id: int,
        attempt: int,
        stage_index: int,
        kind: str,
        needs: dict[str, int],
        info: dict[str, Any] | None = None,
        *,
        now: float | None = None,
    ) -> int:
        with self._write() as conn:
            now = self._stamp(conn, now)  # stamped under the write lock, by the server
            requested = self._insert_request(
                conn, job_id, attempt, stage_index, kind, needs, info or {}, now
            )
        return requested()

    def pending(self) -> list[Pending]:
        return _pending(self.conn.execute(PENDING_SQL))

    def poll_grant(self, request_id: int) -> dict[str, Any] | None:
        row = self.conn.execute(  # and whether any remote device exists at all: if not,
            # the grant's RPC address needs no second query
            "SELECT r.state, l.epoch, l.resources,"
            " EXISTS (SELECT 1 FROM resources d WHERE d.rpc IS NOT NULL) FROM requests r"
            " LEFT JOIN leases l ON l.epoch = r.epoch WHERE r.id = ?",
            (request_id,),
        ).fetchone()
        if row is None or row[0] == RequestState.ABANDONED.value:
            raise Fenced(f"request {request_id} was abandoned")
        if row[0] == RequestState.PENDING.value:
            return None
        grant = {"epoch": int(row[1]), "resources": json.loads(row[2])}
        rpc = self.rpc_of(list(grant["resources"])) if row[3] else None
        if rpc is not None:  # a remote device: the stage measures on exactly that server
            grant["rpc"] = rpc
        return grant

    def grant(
        self,
        grants: list[tuple[Pending, dict[str, int]]],
        *,
        now: float | None = None,
        reasons: dict[int, str] | None = None,
        enforce_capacity: bool = True,
        suspend: dict[int, list[int]] | None = None,
        on_suspend: Callable[[list[dict[str, Any]]], list[int] | None] | None = None,
    ) -> list[Grant]:
        """Turn decisions into leases in one transaction.

        Requests no longer pending are skipped, and so (unless ``enforce_capacity`` is off,
        for the uncontrolled strategy) is any grant that would exceed a capacity: a
        double grant is impossible even if two dispatchers raced.

        ``suspend`` names, per request, the leases to suspend before it is granted (see
        ``strategies.preemption``). ``on_suspend`` gets their holders while this
        transaction holds both registry locks, gate included, so no runner it stops can
        be inside a registry write or holding the gate; it returns once they are stopped,
        with the epochs that did stop (None: all). Their units count as lent to the new
        lease; a holder that did not stop keeps its units, so the grant fails the
        capacity check and the request waits.

        The gate is awaited for at most ``GATE_WAIT_S``: if a runner holds it longer, the
        grants go ahead without their suspensions (and so, for those, wait).
        """
        done: list[Grant] = []
        suspend = {rid: epochs for rid, epochs in (suspend or {}).items() if epochs}
        if suspend and not self._gate_ready(GATE_WAIT_S):
            suspend = {}
        with self._write(gate=bool(suspend)) as conn:
            # sent with the write lock, read once it is held: one round trip on PostgreSQL
            reads = [
                conn.execute(sql)
                for sql in (CAPACITY_SQL, UNITS_HELD_SQL, RESERVED_SQL, LAST_EPOCH_SQL)
            ]
            now = self._now(conn, now)  # stamped under the write lock
            capacity = dict(reads[0].fetchall())
            used = _units_held(reads[1].fetchall())
            reserved = _reserved(reads[2].fetchall())
            floor = int(reads[3].fetchone()[0])  # this write's leases have higher epochs
            sent: list[tuple[Pending, dict[str, int], Any]] = []
            asked: set[int] = set()
            for pending, resources in grants:
                if pending.request_id in asked:  # its request is marked granted only later
                    continue
                asked.add(pending.request_id)
                lent: dict[str, int] = {}
                if pending.request_id in suspend:
                    lent = self._suspend(
                        conn, pending, suspend[pending.request_id], used, on_suspend, now
                    )
                extra = reserved.get(pending.request_id, {})  # an agent's, for it alone
                fits = not enforce_capacity or all(
                    used.get(n, 0) - extra.get(n, 0) + a <= capacity.get(n, 0)
                    for n, a in resources.items()
                )
                if not fits:  # what it suspended lends to nothing: resumed next pass
                    for name, amount in lent.items():
                        used[name] = used.get(name, 0) + amount
                    continue
                for name, amount in resources.items():
                    used[name] = used.get(name, 0) + amount
                inserted = self._send_lease(conn, pending, resources, now)
                if lent:  # read now: a request no longer pending gives its loan back
                    grant = self._record_lease(conn, pending, resources, inserted, now)
                    if grant is None:
                        for name in set(lent) | set(resources):
                            used[name] += lent.get(name, 0) - resources.get(name, 0)
                    else:
                        done.append(grant)
                else:  # recorded together below; one no longer pending (a cancelled
                    sent.append((pending, resources, inserted))  # job) counts to the end
            if sent:
                self._record_leases(conn, floor, [p.request_id for p, _, _ in sent])
            for job_id, reason in (reasons or {}).items():
                conn.execute("UPDATE jobs SET wait_reason = ? WHERE id = ?", (reason, job_id))
            granted = done + [Grant(p.request_id, p.job_id, 0, r) for p, r, _ in sent]
            if granted:  # agents pass it on to their runners (a job not granted: no harm)
                self.store.notify(conn, GRANT_CHANNEL, ",".join(str(g.job_id) for g in granted))
            rows = [cur.fetchone() for _, _, cur in sent] if self.store.READ_BEFORE_COMMIT else []
        # on PostgreSQL the epochs are read after the commit: the inserts, the statements
        # that record them and the commit went to the server in one round trip
        rows = rows or [cur.fetchone() for _, _, cur in sent]
        for (pending, resources, _), row in zip(sent, rows):
            if row is not None:
                done.append(Grant(pending.request_id, pending.job_id, int(row[0]), resources))
        return done

    def _record_leases(self, conn, floor: int, request_ids: list[int]) -> None:
        """What ``_record_lease`` writes, for every lease of ``request_ids`` this write
        inserted (epoch above ``floor``), in three statements that need no result of the
        inserts: so they go with them, and with the commit, in one round trip."""
        marks = ",".join("?" * len(request_ids))
        mine = f"l.epoch > ? AND l.request_id IN ({marks})"  # the leases this write made
        args = (floor, *request_ids)
        conn.execute(
            "UPDATE requests SET state = 'granted', epoch = (SELECT l.epoch FROM leases l"
            f" WHERE l.request_id = requests.id AND {mine})"
            f" WHERE id IN (SELECT l.request_id FROM leases l WHERE {mine})",
            (*args, *args),
        )
        conn.execute(
            "UPDATE jobs SET stage = (SELECT l.kind FROM leases l WHERE l.job_id = jobs.id"
            f" AND {mine} ORDER BY l.epoch DESC LIMIT 1), wait_reason = NULL"
            f" WHERE id IN (SELECT l.job_id FROM leases l WHERE {mine})",
            (*args, *args),
        )
        conn.execute(
            "INSERT INTO events (ts, kind, job_id, stage, epoch, resources, detail)"
            " SELECT l.granted_at, ?, l.job_id, l.kind, l.epoch, l.resources, NULL"
            f" FROM leases l WHERE {mine} ORDER BY l.epoch",
            (EventKind.GRANT.value, *args),
        )

    @staticmethod
    def _send_lease(conn, pending: Pending, resources: dict[str, int], now: float) -> Any:
        """The lease of a pending request, in one statement (inside ``grant``): its
        cursor, whose epoch ``_record_lease`` reads (none if no longer pending)."""
        return conn.execute(
            "INSERT INTO leases (request_id, job_id, kind, resources, holder_pid,"
            " holder_started, state, granted_at, heartbeat_at)"
            " SELECT r.id, r.job_id, ?, ?, j.runner_pid, j.runner_started, 'active', ?, ?"
            " FROM requests r JOIN jobs j ON j.id = r.job_id"
            " WHERE r.id = ? AND r.state = 'pending' RETURNING epoch",
            (pending.kind, _dumps(resources), now, now, pending.request_id),
        )

    def _record_lease(
        self, conn, pending: Pending, resources: dict[str, int], inserted: Any, now: float
    ) -> Grant | None:
        """The rest of a lease ``_send_lease`` inserted; None if it inserted none."""
        row = inserted.fetchone()
        if row is None:
            return None
        epoch = row[0]
        conn.execute(
            "UPDATE requests SET state = 'granted', epoch = ? WHERE id = ?",
            (epoch, pending.request_id),
        )
        conn.execute(
            "UPDATE jobs SET stage = ?, wait_reason = NULL WHERE id = ?",
            (pending.kind, pending.job_id),
        )
        self._event(conn, now, EventKind.GRANT, pending.job_id, pending.kind, epoch, resources)
        return Grant(pending.request_id, pending.job_id, int(epoch), resources)

    def _suspend(
        self,
        conn,
        pending: Pending,
        epochs: list[int],
        used: dict[str, int],
        on_suspend,
        now: float,
    ) -> dict[str, int]:
        """Suspend the still-active leases in ``epochs`` for ``pending`` (inside ``grant``);
        the units they lend it, taken off ``used``."""
        marks = ",".join("?" * len(epochs))
        rows = [
            dict(r)
            for r in conn.execute(
                "SELECT epoch, job_id, kind, resources, holder_pid, holder_started FROM leases"
                f" WHERE epoch IN ({marks}) AND state = 'active' AND suspended_for IS NULL",
                epochs,
            )
        ]
        lent: dict[str, int] = {}
        if not rows:
            return lent
        if pending.host is not None:  # an agent's runners: ask it, grant once it confirms
            conn.executemany(
                "UPDATE leases SET suspend_wanted = ? WHERE epoch = ? AND suspended_for IS NULL",
                [(pending.request_id, row["epoch"]) for row in rows],
            )
            self.store.notify(conn, SUSPEND_CHANNEL, pending.host)
            return lent
        if on_suspend is not None:
            stopped = on_suspend(rows)
            if stopped is not None:  # the holders that did stop; the others run on
                rows = [row for row in rows if row["epoch"] in stopped]
            # none of them may take the gate while stopped (PostgreSQL; see unblock)
            self.store.unblock(conn, [row["holder_pid"] for row in rows])
        for row in rows:
            conn.execute(
                "UPDATE leases SET suspended_for = ?, suspended_at = ? WHERE epoch = ?",
                (pending.request_id, now, row["epoch"]),
            )
            conn.execute(
                "UPDATE jobs SET wait_reason = ? WHERE id = ?",
                (f"{row['kind']} suspended while job {pending.job_id} measures", row["job_id"]),
            )
            held = json.loads(row["resources"])
            for name, amount in held.items():
                used[name] = used.get(name, 0) - amount
                lent[name] = lent.get(name, 0) + amount
            self._event(
                conn,
                now,
                EventKind.SUSPEND,
                row["job_id"],
                row["kind"],
                row["epoch"],
                held,
                {"for_job": pending.job_id, "for_request": pending.request_id},
            )
        return lent

    def suspended_leases(self) -> list[dict[str, Any]]:
        """Suspended leases of the daemon's own host's jobs whose measurement has ended
        (its lease is no longer active): the daemon continues them (agents: below)."""
        return _suspensions(self.conn.execute(SUSPENDED_SQL, ("",)))[0]

    def suspensions_on_host(self, host: str) -> tuple[list[dict[str, Any]], int]:
        """An agent's suspended leases: those whose measurement has ended (to continue),
        and how many others still wait for theirs."""
        return _suspensions(self.conn.execute(SUSPENDED_SQL, (host,)))

    def wanted_suspensions(self, host: str) -> list[dict[str, Any]]:
        """The leases of ``host``'s jobs that the daemon asked its agent to suspend."""
        return [dict(r) for r in self.conn.execute(WANTED_SQL, (host,))]

    def suspend_on_host(
        self,
        host: str,
        stop: Callable[[list[dict[str, Any]]], list[int]],
        *,
        now: float | None = None,
    ) -> int:
        """An agent suspends the leases the daemon asked it to (``wanted_suspensions``):
        holding both locks, gate included (so none of its runners is stopped inside a
        registry write), it calls ``stop`` (SIGSTOP, confirmed) and records the epochs
        that did stop as suspended for the measurement's request, whose grant then finds
        their units lent; the others are asked again at the next pass. How many."""
        if not self.wanted_suspensions(host) or not self._gate_ready(GATE_WAIT_S):
            return 0
        with self._write(gate=True) as conn:
            now = self._now(conn, now)  # stamped under the write lock
            rows = [dict(r) for r in conn.execute(WANTED_SQL, (host,))]
            if not rows:
                return 0
            stopped = set(stop(rows))
            for row in rows:
                if row["epoch"] not in stopped:
                    conn.execute(
                        "UPDATE leases SET suspend_wanted = NULL WHERE epoch = ?", (row["epoch"],)
                    )
                    continue
                conn.execute(
                    "UPDATE leases SET suspended_for = suspend_wanted, suspended_at = ?,"
                    " suspend_wanted = NULL, remote_suspend = 1 WHERE epoch = ?",
                    (now, row["epoch"]),
                )
                for_job = conn.execute(
                    "SELECT job_id FROM requests WHERE id = ?", (row["suspend_wanted"],)
                ).fetchone()[0]
                conn.execute(
                    "UPDATE jobs SET wait_reason = ? WHERE id = ?",
                    (f"{row['kind']} suspended while job {for_job} measures", row["job_id"]),
                )
                self._event(
                    conn, now, EventKind.SUSPEND, row["job_id"], row["kind"], row["epoch"],
                    json.loads(row["resources"]),
                    {"for_job": for_job, "for_request": row["suspend_wanted"], "host": host},
                )  # fmt: skip
            self.store.unblock(conn, [r["holder_pid"] for r in rows if r["epoch"] in stopped])
            self.store.notify(conn, WAKE_CHANNEL)
        return len(stopped)

    def unblock_suspended(self, stopped: Callable[[int], bool]) -> int:
        """Clear the writers' gate of the runners of suspended leases that are stopped
        (``stopped(pid)``): only PostgreSQL grants a lock to a stopped process, see
        ``PostgresStore.unblock``. A runner already continued is never touched, so a
        session it is writing in is never ended."""
        if self.backend == "sqlite":
            return 0
        rows = self.conn.execute(
            "SELECT DISTINCT holder_pid FROM leases WHERE state = 'active'"
            " AND suspended_for IS NOT NULL"
        ).fetchall()
        pids = [r[0] for r in rows if r[0] and stopped(r[0])]
        return self.store.unblock(self.conn, pids) if pids else 0

    def resume_leases(self, epochs: list[int], *, now: float | None = None) -> None:
        """Record suspended leases as running again (their runners already continued)."""
        if not epochs:
            return
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            marks = ",".join("?" * len(epochs))
            rows = conn.execute(
                "UPDATE leases SET paused_s = paused_s"
                " + CASE WHEN suspended_at < ? THEN ? - suspended_at ELSE 0 END,"
                " suspended_for = NULL, suspended_at = NULL, remote_suspend = 0, heartbeat_at = ?"
                f" WHERE epoch IN ({marks}) AND state = 'active' AND suspended_for IS NOT NULL"
                " RETURNING epoch, job_id, kind, resources",
                [now, now, now, *epochs],
            ).fetchall()
            for epoch, job_id, kind, resources in rows:
                conn.execute("UPDATE jobs SET wait_reason = NULL WHERE id = ?", (job_id,))
                self._event(conn, now, EventKind.RESUME, job_id, kind, epoch, json.loads(resources))

    def active_leases(self) -> list[Held]:
        return _held(self.conn.execute(ACTIVE_LEASES_SQL))

    @retried
    def start_stage(self, epoch: int, *, now: float | None = None) -> None:
        with self._write() as conn:
            now = self._now(conn, now)  # stamped under the write lock
            row = conn.execute(
                "UPDATE leases SET started_at = ?, heartbeat_at = ? WHERE epoch = ?"
                " AND state = 'active' RETURNING job_id, kind, resources",
                (now, now, epoch),
            ).fetchone()
            if row is None:
                raise Fenced(f"lease {epoch} is no longer active")
            self._event(conn, now, EventKind.START, row[0], row[1], epoch, json.loads(row[2]))

    @retried
    def heartbeat(self, epoch: int, *, now: float | None = None) -> bool:
        """Renew an active lease (``_touch``); False once it is no longer active."""
        return self._touch(
            "UPDATE leases SET heartbeat_at = {now} WHERE epoch = ? AND state = 'active'"
            " RETURNING epoch",
            (epoch,),
            now,
        )

    @retried
    def complete_stage(
        self,
        epoch: int,
        *,
        seconds: float,
        progress: dict[str, Any],
        next_stage: tuple[int, str, dict[str, int], dict[str, Any]] | None = None,
        started_at: float | None = None,
        now: float | None = None,
    ) -> int | None:
        """Release the lease, record the stage done and (optionally) request the next stage.

        One transaction, fenced by the epoch: a stale runner changes nothing.  A stage too
        short for its heartbeat thread to have recorded its start gets it recorded here.
        A job that may no longer ask for stages (its cancel was asked) has the stage it ran
        recorded, and its next request refused: ``Fenced``, once the write has committed.
        """
        early = self._lease_early(epoch)
        try:
            return self._complete(epoch, seconds, progress, next_stage, started_at, now, early)
        except Changed:  # it changed before the write lock was held: read it under the lock
            return self._complete(epoch, seconds, progress, next_stage, started_at, now, None)

    def _lease_early(self, epoch: int) -> Any:
        """On PostgreSQL (``READ_EARLY``), the active lease ``epoch`` as ``_release_done``
        reads it, read before the write: its write then checks it unchanged under the
        lock and holds the lock for no round trip. None on SQLite, or if the lease is
        suspended (its release needs the lock's clock); Fenced if it is not active (a
        lease once released or revoked is never active again)."""
        if not self.store.READ_EARLY:
            return None
        row = self.conn.execute(LEASE_DONE_SQL, (epoch,)).fetchone()
        if row is None:
            raise Fenced(f"lease {epoch} is no longer active")
        if row[6] is not None or row[8] is not None:
            return None
        return tuple(row)

    def _complete(
        self, epoch, seconds, progress, next_stage, started_at, now, early
    ) -> int | None:
        """``complete_stage``'s write; ``early``: the lease as read before it, or None."""
        with self._write() as conn:
            job_id, kind, resources, paused, attempt, now = self._release_done(
                conn, epoch, started_at, now, early
            )
            seconds = max(0.0, seconds - paused)  # time spent suspended is not the stage's
            self._record_stage(conn, job_id, kind, epoch, resources, seconds, progress, now)
            if next_stage is None:
                return None
            index, next_kind, needs, info = next_stage
            requested = self._insert_request(
                conn, job_id, attempt, index, next_kind, needs, info, now
            )
        return requested()

    def _release_done(
        self,
        conn: Connection,
        epoch: int,
        started_at: float | None,
        now: float | None,
        early: Any = None,
    ) -> tuple[int, str, dict[str, int], float, int, Any]:
        """Release an active lease whose stage ran (Fenced if it is not active) and mark
        its request done; returns its job, stage kind, resources, seconds paused, the
        job's attempt and the write's stamp. Called first in its write: ``now`` None
        stamps it with the write lock's clock, read in the same round trip as the lease;
        with ``early`` (the lease read before the write, ``_lease_early``) nothing is
        read: the server checks the lease unchanged (``EXPECT``) and stamps the time."""
        if early is None:
            found = conn.execute(LEASE_DONE_SQL, (epoch,))
            now = self._now(conn, now)  # stamped under the write lock
            row = found.fetchone()
        else:
            row = early
            conn.execute(
                EXPECT.format(LEASE_UNCHANGED),  # only with READ_EARLY: PostgreSQL
                (epoch, row[5], row[4] is None, row[7]),
            )
            now = self._stamp(conn, now)
        if row is None:
            raise Fenced(f"lease {epoch} is no longer active")
        job_id, kind, resources, request_id, recorded_start, paused, since, attempt = row[:8]
        suspended = row[8]
        paused += now - since if since is not None else 0.0
        resources = json.loads(resources)
        start = started_at if started_at is not None else now
        conn.execute(
            "UPDATE leases SET state = 'released', released_at = ?,"
            " started_at = COALESCE(started_at, ?) WHERE epoch = ?",
            (now, start, epoch),
        )
        if recorded_start is None:
            self._event(conn, start, EventKind.START, job_id, kind, epoch, resources)
        if suspended is not None:
            # continued (SIGCONT) and finished before its resume was recorded: the
            # continuer writes it after the signal, and this runner's write came first
            self._event(conn, now, EventKind.RESUME, job_id, kind, epoch, resources)
        conn.execute("UPDATE requests SET state = 'done' WHERE id = ?", (request_id,))
        if resources:  # a remote device that served a stage has no failures pending
            marks = ",".join("?" * len(resources))
            conn.execute(
                f"UPDATE resources SET failures = 0 WHERE name IN ({marks}) AND failures > 0",
                list(resources),
            )
        return job_id, kind, resources, paused, attempt, now

    def _record_stage(
        self, conn: Connection, job_id: int, kind: str, epoch: int,
        resources: dict[str, int], seconds: float, progress: dict[str, Any], now: float,
    ) -> None:  # fmt: skip
        """The job's progress and stage count, the stage's seconds (for ``predictive``),
        and its end and release in the event log."""
        conn.execute(
            "UPDATE jobs SET stages_done = stages_done + 1, progress = ?,"
            " best_latency_ms = COALESCE(?, best_latency_ms), stage = NULL,"
            " wait_reason = NULL WHERE id = ?",
            (_dumps(progress), progress.get("best_latency_ms"), job_id),
        )
        conn.execute(
            "INSERT INTO stage_stats (job_id, kind, count, seconds) VALUES (?, ?, 1, ?)"
            " ON CONFLICT(job_id, kind) DO UPDATE SET count = stage_stats.count + 1,"
            " seconds = stage_stats.seconds + excluded.seconds",
            (job_id, kind, seconds),
        )
        self._event(conn, now, EventKind.END, job_id, kind, epoch, resources, {"seconds": seconds})
        self._event(conn, now, EventKind.RELEASE, job_id, kind, epoch, resources)

    def stale_leases(self, before: float, *, host: str | None = None) -> list[dict[str, Any]]:
        """Active, running leases of started stages whose heartbeat is older than ``before``,
        of jobs on ``host`` (None: the daemon's own host; only its agent may kill them)."""
        rows = self.conn.execute(
            "SELECT l.epoch, l.job_id, (SELECT j.attempt FROM jobs j WHERE j.id = l.job_id)"
            " AS attempt, l.holder_pid, l.holder_started, l.heartbeat_at FROM leases l"
            " WHERE l.state = 'active' AND l.started_at IS NOT NULL AND l.heartbeat_at < ?"
            " AND l.suspended_for IS NULL"  # a suspended runner cannot beat
            f" AND {LEASE_HOST} = ?",
            (before, host or ""),
        )
        return [dict(r) for r in rows]

    def stage_estimates(self) -> tuple[dict[tuple[int, str], float], dict[str, float]]:
        """Mean observed seconds per (job, stage kind) and per stage kind, from history."""
        return _estimates(self.conn.execute(ESTIMATES_SQL))

    # -- event log ---------------------------------------------------------------------
    def events(self, *, job_id: int | None = None, after_id: int = 0) -> list[dict[str, Any]]:
        where, args = "WHERE id > ?", [after_id]
        if job_id is not None:
            where, args = where + " AND job_id = ?", [after_id, job_id]
        rows = self.conn.execute(
            "SELECT id, ts, kind, job_id, stage, epoch, resources, detail FROM events "
            f"{where} ORDER BY id",
            args,
        )
        out = []
        for r in rows:
            event = dict(r)
            event["resources"] = json.loads(event["resources"]) if event["resources"] else None
            event["detail"] = json.loads(event["detail"]) if event["detail"] else None
            out.append(event)
        return out

    def stage_intervals(self, *, job_id: int | None = None) -> list[dict[str, Any]]:
        """One row per lease, rebuilt from the event log: grant, start, end, release times,
        and ``paused``, the [suspended, resumed] windows (resumed None while suspended)."""
        where, args = ("AND g.job_id = ?", [job_id]) if job_id is not None else ("", [])
        rows = self.conn.execute(
            "SELECT g.epoch, g.job_id, g.stage, g.resources, g.ts AS granted,"
            " (SELECT ts FROM events WHERE epoch = g.epoch AND kind = 'start') AS started,"
            " (SELECT ts FROM events WHERE epoch = g.epoch AND kind = 'end') AS ended,"
            " (SELECT ts FROM events WHERE epoch = g.epoch AND kind IN ('release', 'reclaim'))"
            " AS released"
            f" FROM events g WHERE g.kind = 'grant' {where} ORDER BY g.epoch",
            args,
        )
        paused: dict[int, list[list[float | None]]] = {}
        for epoch, kind, ts in self.conn.execute(
            "SELECT epoch, kind, ts FROM events WHERE kind IN ('suspend', 'resume') ORDER BY id"
        ):
            windows = paused.setdefault(epoch, [])
            if kind == "suspend":
                windows.append([ts, None])
            elif windows and windows[-1][1] is None:
                windows[-1][1] = ts
        out = []
        for r in rows:
            interval = dict(r)
            interval["resources"] = json.loads(interval["resources"])
            interval["paused"] = paused.get(interval["epoch"], [])
            out.append(interval)
        return out
