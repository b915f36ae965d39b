"""100 heterogeneous MockJobs under each strategy, on a simulated clock.

The jobs go through the real registry, dispatcher and strategies; only time is
simulated (``now=`` is injected), so minutes of work take seconds.  For each strategy
it prints the makespan, the makespan over the lower bound, and each resource's
utilisation; both as ``tvmsched.analysis`` defines them (docs/sched.md): the bound is
max(longest job, cpu slot-seconds / slots, device seconds / devices), where a stage on
the cpu-device holds every cpu slot.  In the cpu-device scenario it also runs
interleaved and predictive without preemption (``inter/no-pre``, ``predi/no-pre``):
with it, a CPU-target measurement suspends the search and build stages in its way.

    .venv/bin/python benchmarks/sched_simulation.py [--jobs 100] [--seed 1]
    .venv/bin/python benchmarks/sched_simulation.py --evaluation-mix   # docs/sched.md

``--evaluation-mix`` runs only the cpu-target scenario, on the 3-job mix of
docs/evaluation.md (``tvmsched.simulate.EVALUATION_MIX``) instead of random jobs.
"""

import argparse
import pathlib
import random
import tempfile
import time

from tvmsched.mockjob import MockSpec
from tvmsched.models import Resource, ResourceKind
from tvmsched.simulate import EVALUATION_MIX, simulate
from tvmsched.strategies import STRATEGIES

SCENARIOS = {
    "gpu (4 cpu slots + 1 exclusive gpu)": (
        "gpu",
        [Resource("cpu", ResourceKind.CPU, 4, False), Resource("gpu0", ResourceKind.GPU, 1, True)],
    ),
    "cpu target (2 cpu slots + cpu-device)": (
        "cpu",
        [
            Resource("cpu", ResourceKind.CPU, 2, False),
            Resource("cpu-device", ResourceKind.CPU_DEVICE, 1, True),
        ],
    ),
}


def workload(jobs, seed, device):
    rng = random.Random(seed)
    return [
        MockSpec(
            rounds=rng.randint(2, 10),
            prepare=rng.uniform(0, 4),
            search=rng.uniform(0.5, 4),
            build=rng.uniform(0.5, 4),
            measure=rng.uniform(0.5, 6),
            update=rng.uniform(0.1, 0.6),
            finalize=rng.uniform(0.5, 2),
            workers=rng.choice([1, 1, 2]),
            jitter=0.2,
            seed=rng.randrange(1 << 30),
            device=device,
        )  # fmt: skip
        for _ in range(jobs)
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--evaluation-mix", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sched-sim-") as workdir:
        for title, (device, resources) in SCENARIOS.items():
            if args.evaluation_mix and device != "cpu":
                continue
            if args.evaluation_mix:
                specs = [MockSpec.parse(text) for text in EVALUATION_MIX]
                title = "the 3-job mix of docs/evaluation.md, " + title
            else:
                specs = workload(args.jobs, args.seed, device)
            print(f"\n{len(specs)} jobs, {title}")
            print(f"{'strategy':<12} {'makespan s':>10} {'bound s':>8} {'ratio':>6}  utilisation")
            runs = [(name, True) for name in args.strategies]
            if device == "cpu":  # where preemption applies: the controlled ones without it
                runs += [(n, False) for n in args.strategies if n in ("interleaved", "predictive")]
            for name, preempt in runs:
                started = time.monotonic()
                db = pathlib.Path(workdir) / f"{device}-{name}-{preempt}.db"
                result = simulate(
                    specs, strategy=name, resources=resources, db_path=db, preempt=preempt
                )
                label = name if preempt else f"{name[:5]}/no-pre"
                bound = result.lower_bound
                busy = "  ".join(f"{k} {v['busy']:.0%}" for k, v in result.utilisation.items())
                note = ""
                if result.overlaps:  # uncontrolled: demand over capacity, devices shared
                    busy = "demand " + busy
                    note = f"  ({result.overlaps} stages shared an exclusive device)"
                print(f"{label:<12} {result.makespan:>10.1f} {bound:>8.1f} "
                      f"{result.makespan / bound:>6.3f}  {busy}{note}"
                      f"  [{time.monotonic() - started:.0f} s]", flush=True)  # fmt: skip
    print("\ntargets: interleaved <= 1.15 x bound, predictive <= 1.10 x bound")
    print("synchronous is modelled crudely: an oversubscribed stage runs slower by the factor")


if __name__ == "__main__":
    main()
