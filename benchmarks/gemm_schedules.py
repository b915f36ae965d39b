"""A Winograd batched matrix product: the tuned best against hand-written schedules.

Takes the task named TASK from MODEL's tuning tasks, times its best record from DB as
MetaSchedule measures it (the weight-layout block removed, the weights taken as packed),
and times register-blocked schedules written by hand: a P x O tile of the output
accumulated in a local buffer over the whole reduction, the weights packed in blocks of
O output channels, the tile unrolled and vectorised.

    python benchmarks/gemm_schedules.py resnet18.onnx --db resnet18-60m-0.db \\
        --task winograd_batch_gemm31
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--db", required=True)
    parser.add_argument("--task", required=True)
    args = parser.parse_args(argv)

    import numpy as np
    import tvm
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from simpletvm import model as m
    from simpletvm.compile import prepare_module, tuning_module
    from simpletvm.database import SQLiteDatabase
    from simpletvm.intrin import load_intrinsics
    from simpletvm.targets import resolve_target

    load_intrinsics("llvm")
    spec = resolve_target("llvm")
    target = spec.tvm_target()
    onnx_model = m.load_onnx(args.model)
    mod, _ = tuning_module(prepare_module(m.to_relax(onnx_model, m.model_inputs(onnx_model)),
                                          spec), spec, winograd="auto")
    tasks = ms.relax_integration.extract_tasks(m.fuse_for_tuning(mod, target,
                                                                 layout_rewrite=True), target)
    base = next(t.dispatched[0] for t in tasks if t.task_name == args.task)
    shapes = [[int(d) for d in p.shape] for p in base["main"].params]
    alpha, _, tiles, channels = shapes[0]
    flops = 2 * alpha * alpha * tiles * channels * shapes[2][3]
    print(f"{args.task}: {shapes}, {flops / 1e6:.0f} MFLOP\n")
    print("| schedule | ms | GFLOPS |")
    print("|---|---|---|")

    def timeit(module, label: str) -> None:
        with target:
            lib = tvm.compile(module, target=target)
        data = [tvm.runtime.tensor(np.random.rand(*[int(d) for d in p.shape]).astype("float32"))
                for p in module["main"].params]
        timer = lib.mod.time_evaluator("main", tvm.cpu(), number=10, repeat=7,
                                       min_repeat_ms=100)
        seconds = sorted(timer(*data).results)[3]
        print(f"| {label} | {seconds * 1e3:.3f} | {flops / seconds / 1e9:.1f} |", flush=True)

    db = SQLiteDatabase(args.db, target_key=spec.key)
    for record in db.get_top_k(db.commit_workload(base), 1):
        sch = Schedule(base)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        timeit(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(sch.mod),
               f"tuned best ({float(record.run_secs[0]) * 1e3:.3f} ms when tuned)")

    def by_hand(tile_p: int, tile_o: int):
        sch = Schedule(base)
        block = sch.get_sblock("winograd_batch_gemm")
        e, n, p, o, c = sch.get_loops(block)
        points = sch.fuse(e, n)
        p_outer, p_inner = sch.split(p, [None, tile_p])
        o_outer, o_inner = sch.split(o, [None, tile_o])
        o_vectors, o_lanes = sch.split(o_inner, [None, 8])
        sch.reorder(points, o_outer, p_outer, c, p_inner, o_vectors, o_lanes)
        sch.reverse_compute_at(sch.cache_write(block, 0, "local"), p_outer)
        sch.parallel(sch.fuse(points, o_outer))
        sch.unroll(p_inner)
        sch.unroll(o_vectors)
        sch.vectorize(o_lanes)
        sch.decompose_reduction(block, c)
        sch.transform_layout(block, ("read", 1),
                             lambda e, n, c, o: (e, n, o // tile_o, c, o % tile_o))
        return sch.mod

    for tile_p, tile_o in [(2, 32), (4, 16), (8, 16)]:
        if tiles % tile_p == 0:
            timeit(by_hand(tile_p, tile_o), f"by hand, {tile_p} x {tile_o} register tile")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
