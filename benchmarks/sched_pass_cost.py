"""What one grant costs with nothing else running: a stage request, a dispatch pass that
grants it, and the stage's completion, each timed in this one process.

    .venv/bin/python benchmarks/sched_pass_cost.py [--db postgresql://USER@HOST/DB]
        [--grants 300] [--held 60]

``sched_overhead.py`` measures grant latency with 8 to 64 runners competing for the
host's cores; this shows the floor under it: the cost of the statements and round trips
themselves. With ``--db postgresql://...`` the registry is a database of its own on that
server (the user needs CREATEDB), dropped afterwards (``sched_overhead.Registries``);
else a SQLite file. ``--held N`` first grants N other stages that stay active, as in
a busy registry (a pass reads and parses every active lease). Each operation is shown
with its wall time and this process's CPU time (the client's share; the server's is
the rest).
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


def measure(db, grants, held=0):
    daemon, runner = Registry(db, priority=True), Registry(db)
    daemon.replace_resources([Resource("cpu", ResourceKind.CPU, grants + held, False)])
    dispatcher = Dispatcher(daemon, strategy="interleaved")
    for _ in range(held):  # stages that stay active through the measurement
        job = daemon.submit("mock", {"mock": "rounds=1"})
        runner.request_stage(job, daemon.claim_job(job), 0, "search", {"cpu": 1})
    if held:
        assert len(dispatcher.dispatch()) == held
    jobs = []
    for _ in range(grants):
        job = daemon.submit("mock", {"mock": "rounds=1"})
        jobs.append((job, daemon.claim_job(job)))
    times = {"request": [], "dispatch pass": [], "complete": []}
    cpu = {name: [] for name in times}

    def timed(name, call, *args, **kwargs):
        wall, used = time.perf_counter(), time.process_time()
        result = call(*args, **kwargs)
        times[name].append(time.perf_counter() - wall)
        cpu[name].append(time.process_time() - used)
        return result

    for job, attempt in jobs:
        request = timed("request", runner.request_stage, job, attempt, 0, "search", {"cpu": 1})
        [grant] = timed("dispatch pass", dispatcher.dispatch)
        runner.poll_grant(request)
        timed("complete", runner.complete_stage, grant.epoch, seconds=0.0, progress={})
    daemon.close()
    runner.close()
    return times, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a postgresql:// server URL (default: a SQLite file)")
    parser.add_argument("--grants", type=int, default=300)
    parser.add_argument("--held", type=int, default=0,
                        help="other stages kept active meanwhile (default 0)")  # fmt: skip
    args = parser.parse_args()
    if args.grants < 1:
        parser.error("--grants must be 1 or more")
    if args.held < 0:
        parser.error("--held must be 0 or more")
    if args.db and not is_url(args.db):
        parser.error(f"--db takes a postgresql:// server URL, not {args.db!r}")
    print(f"backend: PostgreSQL ({redact(args.db)})" if args.db else "backend: SQLite")
    with tempfile.TemporaryDirectory(prefix="sched-pass-cost-") as workdir:
        registries = Registries(workdir, args.db)  # sched_overhead's: a file, or a database
        try:
            times, cpu = measure(registries.new("pass-cost"), args.grants, args.held)
        finally:
            registries.drop_all()
    print(f"{'operation':<14} {'p50 ms':>7} {'p90 ms':>7} {'client CPU ms':>14}   "
          f"({args.grants} grants, {args.held} other stages active, one process)")  # fmt: skip
    for name, values in times.items():
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        used = 1000 * statistics.mean(cpu[name])
        line = f"{name:<14} {1000 * statistics.median(values):>7.2f} {1000 * p90:>7.2f}"
        print(f"{line} {used:>14.2f}")


if __name__ == "__main__":
    main()
