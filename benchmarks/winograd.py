"""Winograd against direct convolution at equal wall-clock budgets.

Each point runs `simpletvm tune MODEL --time-budget B --winograd MODE [--conv-layout L]
--json` in a fresh process with a fresh database, and appends its result to a JSON-lines
file (an interrupted run resumes), with each task's best kernel time read from the
point's database. Models: one 3x3 convolution + bias + relu (`conv:CIN,COUT,SIZE[,STRIDE]`,
built here with onnx.helper), or a sample name (`resnet18`); separate models with `;`.

    python benchmarks/winograd.py run --models "conv:128,128,28" --budget 150 \\
        --modes off,4 --layouts NCHW,NHWC --out docs/quality/winograd.jsonl
    python benchmarks/winograd.py run --models resnet18 --budget 300 --modes off,auto \\
        --out docs/quality/winograd.jsonl
    python benchmarks/winograd.py report --out docs/quality/winograd.jsonl
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import _revision, run_json  # noqa: E402 - a sibling benchmark's helpers


def write_conv(path: Path, cin: int, cout: int, size: int, stride: int = 1) -> Path:
    """conv 3x3 (pad 1, ``stride``) + bias + relu on a 1 x cin x size x size input."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4, kernel_shape=[3, 3],
                          strides=[stride, stride]),
         helper.make_node("Relu", ["c"], ["y"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                       [1, cout, -(-size // stride), -(-size // stride)])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _model_path(name: str, work: Path) -> Path:
    if name.startswith("conv:"):
        cin, cout, size, *stride = (int(v) for v in name[5:].split(","))
        stride = stride[0] if stride else 1
        path = work / f"conv-{cin}-{cout}-{size}-s{stride}.onnx"
        return path if path.exists() else write_conv(path, cin, cout, size, stride)
    path = work / f"{name}.onnx"
    if not path.exists():
        subprocess.run(["simpletvm", "sample", name, "-o", str(path)], check=True,
                       capture_output=True)
    return path


def task_bests(db: Path) -> dict[str, dict]:
    """Each task's best measured kernel time and its default schedule's, in ms."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT w.task_name, MIN(r.mean_secs), COUNT(r.id), d.mean_secs FROM workloads w "
            "LEFT JOIN records r ON r.workload_id = w.id "
            "LEFT JOIN defaults d ON d.workload_id = w.id GROUP BY w.id").fetchall()
    finally:
        conn.close()
    return {name: {"best_ms": best * 1e3 if best is not None else None, "records": count,
                   "default_ms": default * 1e3 if default is not None else None}
            for name, best, count, default in rows}


def cmd_run(args) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for row in map(json.loads, out.read_text().splitlines()):
            done.add((row["model"], row["budget_s"], row["mode"], row["layout"], row["seed"]))
    work = Path(args.work or tempfile.mkdtemp(prefix="winograd-"))
    work.mkdir(parents=True, exist_ok=True)
    for model in args.models.split(";"):  # conv:CIN,COUT,SIZE has commas of its own
        path = _model_path(model, work)
        for layout in args.layouts.split(","):
            for mode in args.modes.split(","):
                key = (model, args.budget, mode, layout, args.seed)
                if key in done:
                    continue
                db = work / f"{path.stem}-{mode}-{layout}-{args.budget:g}-{args.seed}.db"
                cmd = ["simpletvm", "tune", str(path), "--time-budget", f"{args.budget:g}s",
                       "--winograd", mode, "--conv-layout", layout, "--seed", str(args.seed),
                       "--db", str(db), "--json"]
                shown = ["simpletvm", "tune", path.name, *cmd[3:-3], "--db", "FRESH.db",
                         "--json"]
                print(f"{time.strftime('%H:%M:%S')} {model} {mode} {layout}", flush=True)
                row = {"model": model, "budget_s": args.budget, "mode": mode,
                       "layout": layout, "seed": args.seed,
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "revision": _revision(), **run_json(cmd, shown)}
                if db.exists():
                    row["tasks"] = task_bests(db)
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                r = row.get("result") or {}
                print(f"  rc={row['rc']} tuned={r.get('tuned_ms')} "
                      f"ort={r.get('onnxruntime_ms')} {row.get('error', '')}", flush=True)
    return 0


def cmd_report(args) -> int:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line]
    print("| model | budget s | winograd | layout | trials | tuned ms | onnxruntime ms | "
          "tuned / ort | untuned ms | output check (max rel err) | revision | date |")
    print("|" + "---|" * 12)
    for row in rows:
        r = row.get("result")
        if r is None:
            print(f"| {row['model']} | {row['budget_s']:g} | {row['mode']} | {row['layout']} "
                  f"| failed: {row.get('error', '?')} |" + " |" * 7)
            continue
        check = r.get("output_check") or {}
        print(f"| {row['model']} | {row['budget_s']:g} | {row['mode']} | {row['layout']} | "
              f"{r['trials']} | {r['tuned_ms']:.3f} | {r['onnxruntime_ms']:.3f} | "
              f"{r['tuned_ms'] / r['onnxruntime_ms']:.2f} | {r['untuned_ms']:.1f} | "
              f"{'ok' if check.get('ok') else 'no'} {check.get('max_rel_err', 0):.1g} | "
              f"{row['revision']} | {row['date']} |")
    if args.tasks:
        for row in rows:
            print(f"\n{row['model']} {row['mode']} {row['layout']}: task, best ms, records")
            for name, t in sorted((row.get("tasks") or {}).items(),
                                  key=lambda kv: -(kv[1]["best_ms"] or 0)):
                print(f"  {name[:60]} {t['best_ms']} {t['records']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="tune each model with each mode and layout (resumable)")
    run.add_argument("--models", default="conv:128,128,28",
                     help="';'-separated: conv:CIN,COUT,SIZE or a sample name")
    run.add_argument("--budget", type=float, default=150.0, help="seconds of tuning")
    run.add_argument("--modes", default="off,4", help="--winograd values, comma-separated")
    run.add_argument("--layouts", default="NCHW", help="--conv-layout values")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default="docs/quality/winograd.jsonl")
    run.add_argument("--work", default=None, help="where models and databases go")
    report = sub.add_parser("report", help="a markdown table of the recorded points")
    report.add_argument("--out", default="docs/quality/winograd.jsonl")
    report.add_argument("--tasks", action="store_true", help="each task's best time too")
    args = parser.parse_args(argv)
    return cmd_run(args) if args.command == "run" else cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
