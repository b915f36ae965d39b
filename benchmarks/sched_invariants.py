"""Randomised storms checked for over-grants and distorted measurements (issue 12).

Each run is ``tvmsched.storm.run_storm(seed)``: 3 to 8 random MockJobs (mostly measured
on the cpu-device) through the real registry, dispatcher and strategy (interleaved or
predictive, preemption on), on an injected clock, with the runners' ends landing inside
the scheduling passes, runners that will not stop and runners that die. The event log of
each run goes through ``tvmsched.invariants.check_registry``. With ``--hosts N``, N
agents' hosts (each its own cpu pool and cpu-device) share the jobs, and now and then
one is fenced, its jobs requeued and placed again. A run passes when every job
is done, nothing is left suspended and no invariant was broken.

    .venv/bin/python benchmarks/sched_invariants.py --runs 1000 [--seed 0] [--hosts 3]
    .venv/bin/python benchmarks/sched_invariants.py --live 4   # real daemons instead

``--live N`` runs N real daemons (forked runners, wall clock) on the 4-job mix of
issue 12 (``LIVE_MIX``, 2 cpu slots + the cpu-device) and checks their logs: about 20 s
a run on 2 cores, and timing-dependent.
"""

import argparse
import collections
import os
import pathlib
import sys
import tempfile
import time

from tvmsched import api
from tvmsched.invariants import Rule, check_registry
from tvmsched.registry import Registry
from tvmsched.storm import StormConfig, run_storm

LIVE_MIX = "rounds=3,search=1,build=1,measure=0.5,update=0.2,device=cpu"


def scratch() -> str | None:
    """A RAM-backed directory for the registries when there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


def storms(args) -> int:
    config = StormConfig(strategies=tuple(args.strategies.split(",")), hosts=args.hosts)
    counts: collections.Counter = collections.Counter()
    totals: collections.Counter = collections.Counter()
    failed = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=scratch()) as tmp:
        for seed in range(args.seed, args.seed + args.runs):
            result = run_storm(seed, pathlib.Path(tmp) / f"{seed}.db", config)
            pathlib.Path(tmp, f"{seed}.db").unlink()
            totals.update(passes=result.passes, stages=result.stages)
            totals.update(suspensions=result.suspensions, **{f"runs of {result.strategy}": 1})
            totals.update(grants_on_agents=result.on_agents, hosts_fenced=result.fenced)
            counts.update(v.rule.value for v in result.violations)
            counts["unfinished"] += not result.finished
            if not result.ok:
                failed.append(result)
    seconds = time.perf_counter() - start
    report(args.runs, failed, counts, totals, seconds)
    return 1 if failed else 0


def report(runs, failed, counts, totals, seconds) -> None:
    print(f"runs: {runs}  passed: {runs - len(failed)}  failed: {len(failed)}")
    for rule in Rule:
        print(f"  {rule.value}: {counts[rule.value]}")
    print(f"  unfinished runs: {counts['unfinished']}")
    print(
        f"scheduling passes: {totals['passes']}  stages: {totals['stages']}"
        f"  suspensions: {totals['suspensions']}  ({seconds:.1f} s)"
    )
    if totals["grants_on_agents"] or totals["hosts_fenced"]:
        print(f"  stages granted on agents' hosts: {totals['grants_on_agents']}"
              f"  agents' hosts fenced: {totals['hosts_fenced']}")  # fmt: skip
    print("  " + ", ".join(f"{k}: {v}" for k, v in sorted(totals.items()) if k.startswith("runs")))
    for result in failed[:5]:
        first = result.violations[0].detail if result.violations else "did not finish"
        print(f"  seed {result.seed} ({result.strategy}): {first}")


def live(args) -> int:
    counts: collections.Counter = collections.Counter()
    bad = 0
    for run in range(args.live):
        with tempfile.TemporaryDirectory() as tmp:
            db = pathlib.Path(tmp) / "sched.db"
            api.start_daemon(db, resources={"cpu": 2, "cpu-device": 1})
            try:
                jobs = [api.submit(db, mock=LIVE_MIX) for _ in range(4)]
                states = api.wait(db, jobs, timeout=600)
            finally:
                api.stop_daemon(db)
            registry = Registry(db)
            violations = check_registry(registry)
            suspends = sum(e["kind"] == "suspend" for e in registry.events())
            registry.close()
        counts.update(v.rule.value for v in violations)
        bad += bool(violations) or set(states.values()) != {"done"}
        print(f"live run {run + 1}: {states}, {suspends} suspensions, {len(violations)} violations")
    print(f"live runs: {args.live}  passed: {args.live - bad}  failed: {bad}  {dict(counts)}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="the first run's seed")
    parser.add_argument("--strategies", default="interleaved,predictive")
    parser.add_argument("--live", type=int, default=0, help="real daemons instead of storms")
    parser.add_argument("--hosts", type=int, default=0,
                        help="agents' hosts beside the daemon's (jobs placed on all; agents "
                        "fenced now and then)")  # fmt: skip
    args = parser.parse_args(argv)
    return live(args) if args.live else storms(args)


if __name__ == "__main__":
    sys.exit(main())
