"""The schema as an ordered list of migrations; ``Connection`` applies the missing ones."""

MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "initial",
        [
            "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """CREATE TABLE jobs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT, kind TEXT NOT NULL, spec TEXT NOT NULL,
                priority INTEGER NOT NULL DEFAULT 0, device_kind TEXT,
                state TEXT NOT NULL, submitted_at REAL NOT NULL,
                started_at REAL, finished_at REAL,
                stage TEXT, wait_reason TEXT, progress TEXT, best_latency_ms REAL,
                result TEXT, error TEXT,
                retries INTEGER NOT NULL DEFAULT 0, attempt INTEGER NOT NULL DEFAULT 0,
                stages_done INTEGER NOT NULL DEFAULT 0,
                runner_pid INTEGER, runner_started REAL,
                cancel_requested INTEGER NOT NULL DEFAULT 0)""",
            "CREATE INDEX jobs_state ON jobs(state)",
            """CREATE TABLE resources (
                name TEXT PRIMARY KEY, kind TEXT NOT NULL,
                capacity INTEGER NOT NULL, exclusive INTEGER NOT NULL)""",
            """CREATE TABLE requests (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                job_id INTEGER NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL,
                stage_index INTEGER NOT NULL, kind TEXT NOT NULL,
                needs TEXT NOT NULL, info TEXT NOT NULL,
                state TEXT NOT NULL, requested_at REAL NOT NULL, epoch INTEGER)""",
            "CREATE INDEX requests_state ON requests(state)",
            """CREATE TABLE leases (
                epoch INTEGER PRIMARY KEY AUTOINCREMENT,
                request_id INTEGER NOT NULL, job_id INTEGER NOT NULL, kind TEXT NOT NULL,
                resources TEXT NOT NULL, holder_pid INTEGER, holder_started REAL,
                state TEXT NOT NULL, granted_at REAL NOT NULL, started_at REAL,
                heartbeat_at REAL, released_at REAL)""",
            "CREATE INDEX leases_state ON leases(state)",
            """CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
                job_id INTEGER, stage TEXT, epoch INTEGER, resources TEXT, detail TEXT)""",
            "CREATE INDEX events_epoch ON events(epoch, kind)",
            "CREATE INDEX events_job ON events(job_id)",
            """CREATE TABLE stage_stats (
                job_id INTEGER NOT NULL, kind TEXT NOT NULL,
                count INTEGER NOT NULL, seconds REAL NOT NULL,
                PRIMARY KEY (job_id, kind))""",
        ],
    ),
    (
        "remote_devices",
        [
            # a remote device: its group (the kind jobs ask for), its RPC address as JSON,
            # and, while it does not answer, why, since when and when to probe it again
            "ALTER TABLE resources ADD COLUMN device_group TEXT",
            "ALTER TABLE resources ADD COLUMN rpc TEXT",
            "ALTER TABLE resources ADD COLUMN down_reason TEXT",
            "ALTER TABLE resources ADD COLUMN down_since REAL",
            "ALTER TABLE resources ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE resources ADD COLUMN retry_at REAL",
        ],
    ),
    (
        "job_parents",
        [
            # a model split at the task level: sub-jobs point at the parent job that
            # builds the final artifact once all of them have finished
            "ALTER TABLE jobs ADD COLUMN parent_id INTEGER REFERENCES jobs(id)",
            "CREATE INDEX jobs_parent ON jobs(parent_id)",
        ],
    ),
    (
        "preemption",
        [
            # a CPU stage suspended while a CPU target is measured: the request it was
            # suspended for, since when, and the seconds it has spent suspended so far
            "ALTER TABLE leases ADD COLUMN suspended_for INTEGER",
            "ALTER TABLE leases ADD COLUMN suspended_at REAL",
            "ALTER TABLE leases ADD COLUMN paused_s REAL NOT NULL DEFAULT 0",
        ],
    ),
    (
        "hosts",
        [
            # one row per agent (a host that runs jobs' runners): its process, how many
            # runners it may run, its last heartbeat on the database's clock, and whether
            # it is up, fenced (its heartbeat stopped: its jobs were requeued) or stopped
            """CREATE TABLE hosts (
                name TEXT PRIMARY KEY, pid INTEGER, started REAL,
                max_jobs INTEGER NOT NULL, registered_at REAL NOT NULL,
                heartbeat_at REAL NOT NULL, state TEXT NOT NULL, reason TEXT)""",
            # the host a local resource belongs to, and the host a job is placed on;
            # NULL: the daemon's own host (a remote RPC device belongs to no host)
            "ALTER TABLE resources ADD COLUMN host TEXT",
            "ALTER TABLE jobs ADD COLUMN host TEXT",
        ],
    ),
    (
        "agent_preemption",
        [
            # a lease on an agent's host that the daemon wants suspended for a request
            # (the agent stops its runner and confirms), and whether an agent suspended
            # it: then its units are lent to that request while it is still pending too
            "ALTER TABLE leases ADD COLUMN suspend_wanted INTEGER",
            "ALTER TABLE leases ADD COLUMN remote_suspend INTEGER NOT NULL DEFAULT 0",
        ],
    ),
]
