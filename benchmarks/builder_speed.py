"""Build time per candidate: in-process, our PersistentBuilder, and TVM's LocalBuilder.

Takes the sample CNN's largest conv2d task, samples N candidate schedules, and builds
them three ways, each once per round for R rounds (the stage model: one batch per round).
Prints seconds per candidate and the ratio of ours to in-process (target <= 1.5).

    .venv/bin/python benchmarks/builder_speed.py --candidates 16 --rounds 3
"""

from __future__ import annotations

import argparse
import time


def candidates(n: int):
    from tvm.s_tir import meta_schedule as ms

    from simpletvm import model as m
    from simpletvm.compile import prepare_module
    from simpletvm.samples import sample_model
    from simpletvm.targets import resolve_target

    spec = resolve_target({"kind": "llvm", "num-cores": 1})
    onnx_model = sample_model("cnn")
    mod = prepare_module(m.to_relax(onnx_model, m.model_inputs(onnx_model)), spec)
    target = spec.tvm_target()
    tasks = ms.relax_integration.extract_tasks(m.fuse_for_tuning(mod, target), target)
    task = max(tasks, key=lambda t: "conv2d2" in t.task_name)
    ctx = ms.TuneContext(
        mod=task.dispatched[0],
        target=target,
        space_generator="post-order-apply",
        search_strategy=ms.search_strategy.ReplayTrace(),
        task_name="c",
        num_threads=1,
        rand_state=1,
    )
    spaces = ctx.generate_design_space()
    ctx.search_strategy.pre_tuning(n, n, spaces, None, None)
    cands = ctx.search_strategy.generate_measure_candidates()
    return [c.sch.mod for c in cands], target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--skip-local-builder",
        action="store_true",
        help="skip TVM's LocalBuilder (about 20 s of imports per round)",
    )
    args = parser.parse_args()

    from simpletvm.intrin import preload

    preload("llvm")
    from tvm.s_tir.meta_schedule.builder import BuilderInput, LocalBuilder

    from simpletvm.builder import PersistentBuilder, _build_one

    mods, target = candidates(args.candidates)
    n = len(mods) * args.rounds
    import tempfile

    out_dir = tempfile.mkdtemp()
    start = time.perf_counter()
    for _ in range(args.rounds):
        for mod in mods:
            _build_one(mod, target, out_dir)
    in_process = (time.perf_counter() - start) / n

    builder = PersistentBuilder(target_kind="llvm", max_workers=1)
    warm_start = time.perf_counter()
    builder.warm_up()
    warm_up = time.perf_counter() - warm_start
    start = time.perf_counter()
    for _ in range(args.rounds):
        results = builder.build([BuilderInput(mod, target) for mod in mods])
        assert all(r.error_msg is None for r in results), results[0].error_msg
    ours = (time.perf_counter() - start) / n
    builder.shutdown()

    print(f"{len(mods)} candidates x {args.rounds} rounds, one build worker, llvm")
    print(f"in-process compile      : {in_process:.3f} s/candidate")
    print(
        f"PersistentBuilder       : {ours:.3f} s/candidate "
        f"(+ {warm_up:.1f} s worker start, once per job)"
    )
    print(f"ratio ours / in-process : {ours / in_process:.2f} (target <= 1.5)")
    if not args.skip_local_builder:
        local = LocalBuilder(max_workers=1)
        start = time.perf_counter()
        for _ in range(args.rounds):
            local.build([BuilderInput(mod, target) for mod in mods])
        theirs = (time.perf_counter() - start) / n
        print(
            f"TVM LocalBuilder        : {theirs:.3f} s/candidate "
            f"(ratio to in-process {theirs / in_process:.2f})"
        )


if __name__ == "__main__":
    main()
