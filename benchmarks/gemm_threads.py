"""A register-blocked float32 GEMM on TVM's runtime with 1, 2, ... threads, and numpy's.

Each thread count runs in a fresh process with ``TVM_NUM_THREADS`` set (TVM reads it once,
when its thread pool starts), and without it ("TVM default": on x86, half the logical
CPUs). The kernel: an 8 x 32 tile of the output accumulated in registers over the whole
reduction, the right-hand matrix packed in panels of 32 columns, parallel over panels.

    python benchmarks/gemm_threads.py --size 1024
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _child(size: int, target_json: str) -> dict:
    # no simpletvm here: importing it would set TVM_NUM_THREADS, and the row would not
    # show TVM's own default
    import numpy as np
    import tvm
    from tvm import te
    from tvm.s_tir import Schedule

    target = tvm.target.Target(json.loads(target_json))
    a_ph = te.placeholder((size, size), name="A")
    b_ph = te.placeholder((size, size), name="B")
    k = te.reduce_axis((0, size), name="k")
    c_ph = te.compute((size, size), lambda i, j: te.sum(a_ph[i, k] * b_ph[k, j], axis=k),
                      name="C")
    sch = Schedule(tvm.IRModule({"main": te.create_prim_func([a_ph, b_ph, c_ph])}))
    block = sch.get_sblock("C")
    i, j, kk = sch.get_loops(block)
    i_outer, i_inner = sch.split(i, [None, 8])
    j_outer, j_vectors, j_lanes = sch.split(j, [None, 2, 16])
    sch.reorder(j_outer, i_outer, kk, i_inner, j_vectors, j_lanes)
    sch.reverse_compute_at(sch.cache_write(block, 0, "local"), i_outer)
    sch.parallel(j_outer)
    sch.unroll(i_inner)
    sch.unroll(j_vectors)
    sch.vectorize(j_lanes)
    sch.decompose_reduction(block, kk)
    sch.transform_layout(block, ("read", 2), lambda k, j: (j // 32, k, j % 32))
    with target:
        lib = tvm.compile(sch.mod, target=target)
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    packed = b.reshape(size, size // 32, 32).transpose(1, 0, 2).copy()
    args = [tvm.runtime.tensor(a), tvm.runtime.tensor(packed),
            tvm.runtime.tensor(np.zeros((size, size), np.float32))]
    lib["main"](*args)
    error = float(np.abs(args[2].numpy() - a @ b).max())
    timer = lib.mod.time_evaluator("main", tvm.cpu(), number=5, repeat=7, min_repeat_ms=200)
    seconds = sorted(timer(*args).results)[3]
    return {"threads": tvm.runtime.num_threads(), "ms": seconds * 1e3,
            "gflops": 2 * size ** 3 / seconds / 1e9, "max_abs_err": error}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="M = N = K (a multiple of 32)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.size, args.child)))
        return 0

    from simpletvm.targets import resolve_target

    target_json = json.dumps(resolve_target("llvm").config)
    import numpy as np

    a = np.random.rand(args.size, args.size).astype(np.float32)
    a @ a
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    numpy_s = (time.perf_counter() - start) / 10
    print(f"{args.size}^3 float32 GEMM\n")
    print("| runtime | threads | ms | GFLOPS |")
    print("|---|---|---|---|")
    print(f"| numpy (its BLAS) | its own | {numpy_s * 1e3:.2f} | "
          f"{2 * args.size ** 3 / numpy_s / 1e9:.1f} |")
    base = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    runs = [("TVM default", base)] + [
        (f"TVM_NUM_THREADS={n}", {**base, "TVM_NUM_THREADS": str(n)})
        for n in range(1, (os.cpu_count() or 1) + 1)]
    for label, env in runs:
        out = subprocess.run([sys.executable, __file__, "--size", str(args.size),
                              "--child", target_json], env=env,
                             capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"| TVM, {label} | {row['threads']} | {row['ms']:.2f} | {row['gflops']:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
