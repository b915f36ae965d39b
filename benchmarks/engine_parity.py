"""Our stage-by-stage engine against TVM's own ``tune_relax``, same budget and seed.

Each side runs in its own fresh Python process (so each pays its own imports), tunes the
same sample model with the same search settings, cost model, builder workers and
measurement settings, and then compiles and times the result with the same benchmark
function. Prints both tuning wall times, both latencies, and their ratios.

    .venv/bin/python benchmarks/engine_parity.py --model cnn --trials 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time, tempfile
start = time.perf_counter()
side, model_path, trials, per_round, seed, threads = sys.argv[1:7]
trials, per_round, seed, threads = int(trials), int(per_round), int(seed), int(threads)
from simpletvm import model as m, bench
from simpletvm.compile import prepare_module
from simpletvm.targets import resolve_target
spec = resolve_target({"kind": "llvm", "num-cores": threads})
onnx_model = m.load_onnx(model_path)
inputs = m.model_inputs(onnx_model)
stage_seconds = {}
if side == "ours":
    from simpletvm.engine import TuningJob, TuningOptions
    opts = TuningOptions(trials=trials, per_round=per_round, seed=seed, search_threads=threads,
                         builder_workers=threads)
    job = TuningJob(onnx_model, inputs, spec, options=opts,
                    db_path=tempfile.mktemp(suffix=".db"), measure_baselines=False)
    while job.next_stage() is not None and job.next_stage().kind.value != "finalize":
        job.run_stage()
    tuning = time.perf_counter() - start
    stage_seconds = dict(job.stage_seconds)
    job.run_stage()
    executable = job.executable
else:
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import compile_relax, tune_relax
    mod = prepare_module(m.to_relax(onnx_model, inputs), spec)
    target = spec.tvm_target()
    work_dir = tempfile.mkdtemp()
    fused = m.fuse_for_tuning(mod, target)
    with ms.Profiler() as profiler:
        database = tune_relax(fused, {}, target, work_dir, trials,
                              num_trials_per_iter=per_round, seed=seed,
                              builder=ms.builder.LocalBuilder(max_workers=threads))
    tuning = time.perf_counter() - start
    # TVM's own profiler names for the same stages (seconds, summed over rounds)
    timings = {k: float(v) for k, v in profiler.get().items()}
    # outermost scopes only: "A/B/C" is inside "A/B" when both are listed
    top = [k for k in timings if not any(k != o and k.startswith(o + "/") for o in timings)]
    prefixes = {"search": ("EvoSearch/",), "build": ("SendToBuilder",),
                "measure": ("SendToRunner", "JoinRunnerFutures"),
                "update": ("MeasureCallback/",), "prepare": ("InitializeTask",)}
    stage_seconds = {k: sum(timings[n] for n in top if n.startswith(p))
                     for k, p in prefixes.items()}
    stage_seconds["profiler"] = timings
    executable = compile_relax(database, mod, target, params=None)
stats = bench.bench_tvm(executable, "cpu", m.random_inputs(inputs, seed=seed))
print("RESULT " + json.dumps({"side": side, "tuning_seconds": tuning,
                              "latency_ms": stats.median_ms, "std_ms": stats.std_ms,
                              "stage_seconds": stage_seconds}))
"""


def run_side(side: str, model_path: str, args) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            side,
            model_path,
            str(args.trials),
            str(args.per_round),
            str(args.seed),
            str(args.threads),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TVM_LOG_DEBUG": "0"},
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    raise SystemExit(f"{side} failed with exit status {proc.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", help="sample model name")
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--per-round", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="search threads and build workers, for both sides",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from simpletvm.samples import write_sample

    model_path = str(write_sample(args.model, os.path.join(tempfile.mkdtemp(), "m.onnx")))
    started = time.time()
    ours = run_side("ours", model_path, args)
    theirs = run_side("tune_relax", model_path, args)
    out = {
        "model": args.model,
        "trials": args.trials,
        "per_round": args.per_round,
        "seed": args.seed,
        "threads": args.threads,
        "ours": ours,
        "tune_relax": theirs,
        "tuning_time_ratio": ours["tuning_seconds"] / theirs["tuning_seconds"],
        "latency_ratio": ours["latency_ms"] / theirs["latency_ms"],
        "wall_seconds": time.time() - started,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"model={args.model} trials={args.trials} per_round={args.per_round} "
        f"seed={args.seed} threads={args.threads}"
    )
    print(f"{'':12}{'tuning s':>10}{'latency ms':>12}")
    print(f"{'ours':12}{ours['tuning_seconds']:>10.1f}{ours['latency_ms']:>12.3f}")
    print(f"{'tune_relax':12}{theirs['tuning_seconds']:>10.1f}{theirs['latency_ms']:>12.3f}")
    print(f"tuning time ratio (ours/theirs): {out['tuning_time_ratio']:.2f}  (target <= 0.5)")
    print(f"latency ratio     (ours/theirs): {out['latency_ratio']:.2f}  (target <= 1.05)")
    print(f"{'stage':10}{'ours s':>10}{'tune_relax s':>14}")
    for kind in ("prepare", "search", "build", "measure", "update"):
        mine = ours["stage_seconds"].get(kind, float("nan"))
        theirs_s = theirs["stage_seconds"].get(kind, float("nan"))
        print(f"{kind:10}{mine:>10.1f}{theirs_s:>14.1f}")
    profile = theirs["stage_seconds"].get("profiler", {})
    print("tune_relax profiler: " + ", ".join(f"{k}={v:.1f}" for k, v in sorted(profile.items())))


if __name__ == "__main__":
    main()
