"""A contention storm: 32 runner processes and 2 racing dispatchers on one registry, on
each backend (a SQLite file, a PostgreSQL database)."""

import os
import subprocess
import sys

import pytest  # noqa: E402

from tvmsched.analysis import exclusive_overlaps, peak_usage, resource_intervals
from tvmsched.models import Resource, ResourceKind
from tvmsched.registry import Registry

RUNNERS = 32
# stages per runner: on PostgreSQL each of a stage's writes and polls is a round trip to
# a server process, and 32 runners' worth of them on 2 cores made this the suite's
# slowest test; the contention is the same with half the stages
STAGES = {"sqlite": 8, "postgresql": 4}

RUNNER = """
import sys, time
from tvmsched.registry import Registry
db, job_id, attempt, stages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
poll = float(sys.argv[5])
registry = Registry(db)
for index in range(stages):
    kind, needs = ("measure", {"device": 1}) if index % 2 else ("search", {"cpu": 1})
    rid = registry.request_stage(job_id, attempt, index, kind, needs)
    while (grant := registry.poll_grant(rid)) is None:
        time.sleep(poll)
    registry.start_stage(grant["epoch"])
    registry.heartbeat(grant["epoch"])
    registry.complete_stage(grant["epoch"], seconds=0.0, progress={"trials_done": index})
registry.finish_job(job_id, attempt, result={})
"""

DISPATCHER = """
import os, sys, time
from tvmsched.dispatch import Dispatcher
from tvmsched.registry import Registry
db, stop = sys.argv[1], sys.argv[2]
dispatcher = Dispatcher(Registry(db), strategy="interleaved")
while not os.path.exists(stop):
    dispatcher.dispatch()
    time.sleep(0.0005)
"""


@pytest.mark.slow
def test_storm_of_32_processes_has_no_lock_errors_and_no_double_grant(tmp_path, registry_db):
    db = registry_db
    registry = Registry(db)
    resources = [
        Resource("cpu", ResourceKind.CPU, 2, False),
        Resource("gpu0", ResourceKind.GPU, 1, True),
    ]
    registry.replace_resources(resources)
    jobs = []
    for _ in range(RUNNERS):
        job_id = registry.submit("mock", {"mock": "rounds=1"})
        jobs.append((job_id, registry.claim_job(job_id)))
    registry.close()
    env = dict(os.environ)
    stop = tmp_path / "stop"

    def spawn(code, *args):
        return subprocess.Popen(
            [sys.executable, "-c", code, str(db), *map(str, args)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    dispatchers = [spawn(DISPATCHER, stop) for _ in range(2)]
    # a poll is a round trip to the server on PostgreSQL: 32 runners polling every
    # millisecond would keep 32 server processes busy on 2 cores (the daemon's runners
    # wait on a pipe instead), so they poll every 5 ms there
    poll = 0.001 if registry.backend == "sqlite" else 0.005
    stages = STAGES[registry.backend]
    runners = [spawn(RUNNER, job_id, attempt, stages, poll) for job_id, attempt in jobs]
    outputs = [p.communicate(timeout=240)[0] for p in runners]
    stop.touch()
    outputs += [p.communicate(timeout=30)[0] for p in dispatchers]
    assert not [o for o in outputs if "locked" in o], "database is locked reached a caller"
    assert [p.returncode for p in runners + dispatchers] == [0] * (RUNNERS + 2), outputs
    registry = Registry(db)
    rows = resource_intervals(registry.stage_intervals(), held=True)
    assert len({r["epoch"] for r in rows}) == RUNNERS * stages
    bad = exclusive_overlaps(rows, registry.resources())
    assert bad == [], [
        (a["epoch"], a["start"], a["end"], b["epoch"], b["start"], b["end"]) for a, b in bad
    ][:3]
    assert peak_usage(rows, "cpu") <= 2
    assert {j["state"].value for j in registry.list_jobs()} == {"done"}
