"""Scheduler overhead with 8, 32 and 64 mock runners whose stages take no time.

Prints grants per second, grant latency (request to grant, from the event log) at p50
and p99 in the steady state and over the whole run (start-up included), and the CPU used
by the daemon and its runners while they are idle (every runner waiting for a grant that
cannot come yet).

    .venv/bin/python benchmarks/sched_overhead.py [--runners 8 32 64] [--rounds 20]
        [--db postgresql://USER@HOST/DB] [--agents 4]

With ``--db postgresql://...`` the registries are PostgreSQL databases on that server
instead of SQLite files: each run creates its own database (the user needs CREATEDB)
and drops it afterwards. With ``--agents N`` the runners run on N agents (``sched
agent`` on this machine, each with an equal share of the slots), not on the daemon.
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit

import psutil  # noqa: E402

from tvmsched import api
from tvmsched.paths import is_url, redact
from tvmsched.registry import Registry


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def process_tree_cpu(pid):
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


class Registries:
    """Fresh registries: SQLite files in a folder, or databases on a PostgreSQL server."""

    def __init__(self, workdir, server_url=None):
        self.workdir, self.server_url, self.made = pathlib.Path(workdir), server_url, []

    def new(self, name):
        if self.server_url is None:
            return self.workdir / f"{name}.db"
        import psycopg

        database = f"sched_bench_{name.replace('-', '_')}_{os.getpid()}"
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
            conn.execute(f'CREATE DATABASE "{database}"')
        self.made.append(database)
        return urlunsplit(urlsplit(self.server_url)._replace(path=f"/{database}"))

    def drop_all(self):
        if self.server_url is None:
            return
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True) as conn:
            for database in self.made:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


class Agents:
    """``sched agent`` processes named host-0 .. host-(n-1), each with an equal share."""

    def __init__(self, db, count, runners):
        share = max(1, runners // count)
        env = dict(os.environ, SCHED_DB=str(db))
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tvmsched.agent", "--name", f"host-{i}",
                 "--resource", f"cpu={share}", "--resource", f"dev={share}",
                 "--max-jobs", str(share)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            for i in range(count)
        ]
        registry, deadline = Registry(db), time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(h["state"] == "up" for h in registry.hosts()) == count:
                return
            time.sleep(0.05)
        raise RuntimeError("the agents did not register within 60 s")

    def pids(self):
        return [proc.pid for proc in self.procs]

    def stop(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(60)


def start(db, runners, agents, resources):
    """The daemon, and with ``agents`` that many agents sharing the runners (the daemon
    then runs no job itself)."""
    extra = ["--max-jobs", str(runners)] + (["--no-local-jobs"] if agents else [])
    pid = api.start_daemon(db, strategy="interleaved", resources=resources, extra=extra)
    return pid, (Agents(db, agents, runners) if agents else None)


def throughput(runners, rounds, registries, agents=0, stage_s=0.0):
    db = registries.new(f"overhead-{runners}")
    # One cpu slot and one device per runner: no queueing, so latency is pure overhead.
    _, hosts = start(db, runners, agents, {"cpu": runners, "dev": runners})
    mock = f"rounds={rounds}"
    if stage_s:
        mock += "".join(f",{k}={stage_s}" for k in ("search", "build", "measure", "update"))
    try:
        ids = [api.submit(db, mock=mock) for _ in range(runners)]
        api.wait(db, ids, timeout=600, poll=0.05)
    finally:
        if hosts is not None:
            hosts.stop()
        api.stop_daemon(db)
    events = Registry(db).events()
    requested, latencies, grants, first_grant = {}, [], [], {}
    for event in events:
        if event["kind"] == "request":
            requested[event["job_id"]] = event["ts"]
        elif event["kind"] == "grant":
            latencies.append((event["ts"], event["ts"] - requested.pop(event["job_id"])))
            grants.append(event["ts"])
            first_grant.setdefault(event["job_id"], event["ts"])
    span = max(grants) - min(grants)
    # Steady state: from the moment every runner has had its first grant. Before that
    # the daemon is still forking runners, whose start-up competes for the 2 cores.
    started = max(first_grant.values())
    steady = [lat for ts, lat in latencies if ts > started]
    every = [lat for _, lat in latencies]
    return {
        "runners": runners,
        "grants": len(grants),
        "grants_per_s": len(grants) / span if span else float("inf"),
        "p50_ms": 1000 * statistics.median(steady),
        "p99_ms": 1000 * percentile(steady, 0.99),
        "startup_s": started - min(grants),
        "all_p50_ms": 1000 * statistics.median(every),
        "all_p99_ms": 1000 * percentile(every, 0.99),
    }


def idle_cpu(runners, registries, seconds=10.0, agents=0):
    """CPU of daemon, agents and runners while every runner waits (one long sleeping
    stage holds the only cpu slot, so the others poll for a grant that cannot come)."""
    db = registries.new(f"idle-{runners}")
    # with agents, each has its share of slots: the runners then sleep in their stages
    # or wait, and what is measured is the cost of heartbeats, polls and passes
    pid, hosts = start(db, runners, agents, {"cpu": 1, "dev": 1})
    trees = [pid] + (hosts.pids() if hosts else [])
    try:
        for _ in range(runners):
            api.submit(db, mock="rounds=1,search=60")
        time.sleep(3.0)  # let every runner start and back off
        before, begun = sum(map(process_tree_cpu, trees)), time.monotonic()
        time.sleep(seconds)
        used = sum(map(process_tree_cpu, trees)) - before
        return 100.0 * used / (time.monotonic() - begun)
    finally:
        for job in api.jobs(db):
            if job["state"] in ("queued", "running"):
                api.cancel(db, job["id"])
        if hosts is not None:
            hosts.stop()
        api.stop_daemon(db)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--db", help="a postgresql:// server URL (default: SQLite files)")
    parser.add_argument("--agents", type=int, default=0,
                        help="run the runners on this many agents, not on the daemon")  # fmt: skip
    parser.add_argument("--stage-ms", type=float, default=0.0,
                        help="each stage sleeps this long (default 0: the runners ask for "
                             "grants as fast as the host can serve them)")  # fmt: skip
    args = parser.parse_args()
    if args.agents < 0:
        parser.error("--agents must be 0 or more")
    if args.stage_ms < 0:
        parser.error("--stage-ms must be 0 or more")
    if args.db and not is_url(args.db):
        parser.error(f"--db takes a postgresql:// server URL, not {args.db!r}")
    if args.db:
        print(f"backend: PostgreSQL ({redact(args.db)})")
    if args.agents:
        print(f"runners on {args.agents} agents (sched agent), each with an equal share")
    if args.stage_ms:
        print(f"every stage sleeps {args.stage_ms:g} ms")
    print(
        f"{'runners':>7} {'grants':>7} {'grants/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'start-up s':>10} {'all p50':>8} {'all p99':>8} {'idle cpu % of a core':>21}"
    )
    with tempfile.TemporaryDirectory(prefix="sched-overhead-") as workdir:
        registries = Registries(workdir, args.db)
        try:
            rows = [(throughput(n, args.rounds, registries, args.agents, args.stage_ms / 1000),
                     idle_cpu(n, registries, agents=args.agents))
                    for n in args.runners]  # fmt: skip
        finally:
            registries.drop_all()
        for row, idle in rows:
            line = f"{row['runners']:>7} {row['grants']:>7} {row['grants_per_s']:>9.0f} "
            line += f"{row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['startup_s']:>10.2f} "
            line += f"{row['all_p50_ms']:>8.2f} {row['all_p99_ms']:>8.2f} {idle:>21.2f}"
            print(line, flush=True)
    print("p50/p99: steady state, once every runner has had its first grant; 'all' counts")
    print("the start-up too, while the daemon forks the runners.")
    print("targets at 64 runners: p50 <= 5 ms, p99 <= 50 ms, >= 500 grants/s, idle <= 5 %")


if __name__ == "__main__":
    main()
