"""What one grant costs with nothing else running: a stage request, a dispatch pass that
grants it, and the stage's completion, each timed in this one process.

    .venv/bin/python benchmarks/sched_pass_cost.py [--db postgresql://USER@HOST/DB]
        [--grants 300]

``sched_overhead.py`` measures grant latency with 8 to 64 runners competing for the
host's cores; this shows the floor under it: the cost of the statements and round trips
themselves. With ``--db postgresql://...`` the registry is a database of its own on that
server (the user needs CREATEDB), dropped afterwards (``sched_overhead.Registries``);
else a SQLite file.
"""

import argparse
import statistics
import tempfile
import time

from sched_overhead import Registries  # this folder is on the path of its scripts

from tvmsched.dispatch import Dispatcher
from tvmsched.models import Resource, ResourceKind
from tvmsched.paths import is_url, redact
from tvmsched.registry import Registry


def measure(db, grants):
    daemon, runner = Registry(db, priority=True), Registry(db)
    daemon.replace_resources([Resource("cpu", ResourceKind.CPU, grants, False)])
    jobs = []
    for _ in range(grants):
        job = daemon.submit("mock", {"mock": "rounds=1"})
        jobs.append((job, daemon.claim_job(job)))
    dispatcher = Dispatcher(daemon, strategy="interleaved")
    times = {"request": [], "dispatch pass": [], "complete": []}
    for job, attempt in jobs:
        begun = time.perf_counter()
        request = runner.request_stage(job, attempt, 0, "search", {"cpu": 1})
        asked = time.perf_counter()
        [grant] = dispatcher.dispatch()
        granted = time.perf_counter()
        runner.poll_grant(request)
        polled = time.perf_counter()
        runner.complete_stage(grant.epoch, seconds=0.0, progress={})
        done = time.perf_counter()
        times["request"].append(asked - begun)
        times["dispatch pass"].append(granted - asked)
        times["complete"].append(done - polled)
    daemon.close()
    runner.close()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a postgresql:// server URL (default: a SQLite file)")
    parser.add_argument("--grants", type=int, default=300)
    args = parser.parse_args()
    if args.grants < 1:
        parser.error("--grants must be 1 or more")
    if args.db and not is_url(args.db):
        parser.error(f"--db takes a postgresql:// server URL, not {args.db!r}")
    print(f"backend: PostgreSQL ({redact(args.db)})" if args.db else "backend: SQLite")
    with tempfile.TemporaryDirectory(prefix="sched-pass-cost-") as workdir:
        registries = Registries(workdir, args.db)  # sched_overhead's: a file, or a database
        try:
            times = measure(registries.new("pass-cost"), args.grants)
        finally:
            registries.drop_all()
    print(f"{'operation':<14} {'p50 ms':>7} {'p90 ms':>7}   ({args.grants} grants, one process)")
    for name, values in times.items():
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        print(f"{name:<14} {1000 * statistics.median(values):>7.2f} {1000 * p90:>7.2f}")


if __name__ == "__main__":
    main()
