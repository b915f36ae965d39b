"""Where a tuned model's time goes: each kernel's share of one inference.

Builds MODEL from a tuning database as `simpletvm tune --trials 0` would (each task's best
record where it beats the task's default schedule), then times whole inferences and,
through the Relax VM's instrument hook, each call of each kernel. The hook adds a little
per call, so the kernels' sum is a bit above the whole model's time.

    python benchmarks/kernel_profile.py resnet18.onnx --db tuning.db [--winograd auto] \
        [--conv-layout auto]
"""

from __future__ import annotations

import argparse
import collections
import time


def profile(model_path: str, db_path: str, *, winograd: str, conv_layout: str = "auto",
            target: str = "llvm", repeats: int = 20) -> dict:
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from simpletvm import model as m
    from simpletvm.compile import compile_tuned, prepare_module, records_to_apply, tuning_module
    from simpletvm.database import SQLiteDatabase
    from simpletvm.intrin import load_intrinsics
    from simpletvm.targets import resolve_target

    spec = resolve_target(target)
    load_intrinsics(spec.kind)
    onnx_model = m.load_onnx(model_path)
    inputs = m.model_inputs(onnx_model)
    prepared = prepare_module(m.to_relax(onnx_model, inputs), spec, conv_layout=conv_layout)
    mod, _ = tuning_module(prepared, spec, winograd=winograd)
    tvm_target = spec.tvm_target()
    layout_rewrite = not spec.is_gpu
    tasks = ms.relax_integration.extract_tasks(
        m.fuse_for_tuning(mod, tvm_target, layout_rewrite=layout_rewrite), tvm_target)
    db = SQLiteDatabase(db_path, target_key=spec.key)
    task_mods = [t.dispatched[0] for t in tasks]
    chosen, kept = records_to_apply(db, task_mods, [db.default_seconds(t) for t in task_mods])
    executable = compile_tuned(mod, spec, chosen, layout_rewrite=layout_rewrite)
    vm = relax.VirtualMachine(executable, tvm.device(spec.device_type))
    feeds = m.random_inputs(inputs)
    args = [tvm.runtime.tensor(feeds[i.name]) for i in inputs]
    for _ in range(3):
        vm["main"](*args)
    start = time.perf_counter()
    for _ in range(repeats):
        vm["main"](*args)
    whole_ms = (time.perf_counter() - start) / repeats * 1e3
    seconds: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    began: dict[str, float] = {}

    def instrument(func, symbol, before, ret, *rest):
        if before:
            began[symbol] = time.perf_counter()
        else:
            seconds[symbol] += time.perf_counter() - began[symbol]
            calls[symbol] += 1
        return 0

    vm.set_instrument(instrument)
    for _ in range(repeats):
        vm["main"](*args)
    kernels = [{"kernel": k, "ms": s / repeats * 1e3, "calls": calls[k] // repeats}
               for k, s in sorted(seconds.items(), key=lambda kv: -kv[1])]
    return {"model_ms": whole_ms, "kernels": kernels,
            "kept_default": [tasks[i].task_name for i in kept]}


def main(argv: list[str] | None = None) -> int:
    from simpletvm.options import CONV_LAYOUTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--db", required=True)
    parser.add_argument("--winograd", default="auto")
    parser.add_argument("--conv-layout", default="auto", choices=CONV_LAYOUTS,
                        help="as the database was tuned")
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    result = profile(args.model, args.db, winograd=args.winograd,
                     conv_layout=args.conv_layout, target=args.target)
    total = sum(k["ms"] for k in result["kernels"])
    print(f"whole model {result['model_ms']:.3f} ms; kernels, as instrumented, "
          f"{total:.3f} ms; kept at the default schedule: {result['kept_default']}\n")
    print("| kernel | ms per inference | calls | share |")
    print("|---|---|---|---|")
    for k in result["kernels"][:args.top]:
        print(f"| {k['kernel']} | {k['ms']:.3f} | {k['calls']} | {k['ms'] / total:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
