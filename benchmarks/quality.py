"""Quality of what `simpletvm tune` produces: tuned, untuned and onnxruntime latency of
the real-architecture samples at wall-clock budgets, with convergence and roofline.

Each point runs `simpletvm tune MODEL --time-budget B --json` in a fresh process with a
fresh tuning database, and appends its JSON result to a JSON-lines file, so an
interrupted run resumes where it stopped (points already recorded are skipped).

    python benchmarks/quality.py run --models cnn,mobilenet_v2 --budgets 5,15 \\
        --repeats 1 --out docs/quality/results.jsonl
    python benchmarks/quality.py report --out docs/quality/results.jsonl \\
        --figure docs/figures/quality/convergence.png
    python benchmarks/quality.py peak        # the GEMM microbenchmark behind the roofline

The roofline of a model is its FLOPs (the tasks' weight x FLOPs, as MetaSchedule counts
them) divided by this CPU's attainable peak, measured as the best of several float32
GEMMs (numpy's BLAS, all cores, 2048 x 2048): no schedule of the model can beat it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def gemm_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Attainable float32 GFLOPS on this machine: the best of ``repeats`` GEMMs."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _revision() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False).stdout.strip()
    # The results files this script appends to do not make the code uncommitted.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                            ".", ":(exclude)docs/quality"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return rev + ("+uncommitted" if dirty else "")


def _done(out: Path) -> set[tuple[str, str, float, int]]:
    if not out.exists():
        return set()
    keys = set()
    for line in out.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            keys.add((row.get("label", ""), row["model"], row["budget_min"], row["repeat"]))
    return keys


def run_point(model: str, budget_min: float, repeat: int, work: Path,
              extra: list[str], trials: int | None = None, target: str = "llvm", *,
              default_budget: bool = False) -> dict:
    path = work / f"{model}.onnx"
    if not path.exists():
        subprocess.run(["simpletvm", "sample", model, "-o", str(path)], check=True,
                       capture_output=True)
    db = work / f"{model}-{budget_min:g}m-{repeat}.db"
    budget = (["--trials", str(trials)] if trials is not None else
              [] if default_budget else ["--time-budget", f"{budget_min:g}m"])
    cmd = ["simpletvm", "tune", str(path), "--target", target, *budget, "--db", str(db),
           "--seed", str(repeat), "--json", *extra]
    started = time.gmtime()
    at = 5 + len(budget)  # where "--db" is
    shown = ["simpletvm", "tune", f"{model}.onnx", *cmd[3:at], "--db", "FRESH.db",
             *cmd[at + 2:]]
    return {"model": model, "budget_min": budget_min, "repeat": repeat,
            **({"default_budget": True} if default_budget else {}),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", started), "revision": _revision(),
            "extra": extra, **run_json(cmd, shown)}


def run_json(cmd: list[str], shown: list[str]) -> dict:
    """Run a ``--json`` command: the command as ``shown``, its wall time, its exit status,
    and its JSON result or its last error line."""
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    row = {"command": " ".join(shown), "wall_seconds": time.time() - start,
           "rc": proc.returncode}
    if proc.returncode == 0:
        row["result"] = json.loads(proc.stdout)
    else:
        row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return row


def cmd_run(args) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    work = Path(args.work or tempfile.mkdtemp(prefix="quality-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = args.extra.split() if args.extra else []
    # "default": neither --trials nor --time-budget, the budget simpletvm sizes itself
    default = args.budgets == "default"
    budgets = ([0.0] if args.trials is not None or default
               else [float(b) for b in args.budgets.split(",")])
    for repeat in range(args.repeats):
        for budget in budgets:
            for model in args.models.split(","):
                if (args.label, model, budget, repeat) in done:
                    continue
                print(f"{time.strftime('%H:%M:%S')} {args.label} {model} {budget:g} min "
                      f"repeat {repeat}", flush=True)
                row = run_point(model, budget, repeat, work, extra, args.trials, args.target,
                                default_budget=default)
                row["label"] = args.label
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                r = row.get("result") or {}
                print(f"  rc={row['rc']} tuned={r.get('tuned_ms')} "
                      f"untuned={r.get('untuned_ms')} ort={r.get('onnxruntime_ms')} "
                      f"{row.get('error', '')}", flush=True)
    return 0


def cmd_remeasure(args) -> int:
    """Time each recorded point again, from its tuning database, on a quiet machine.

    ``simpletvm tune --trials 0`` builds the same model from the database (the same
    records beat the same defaults) and times tuned, untuned and onnxruntime again: the
    run's own timings are taken while its tuning just ended, and while whatever else ran.
    """
    out = Path(args.out)
    quiet_path = out.with_name(out.stem + args.suffix + ".jsonl")
    done = set()
    if quiet_path.exists():
        for r in map(json.loads, quiet_path.read_text().splitlines()):
            done.add((r["label"], r["model"], r["budget_min"], r["repeat"]))
    for row in map(json.loads, out.read_text().splitlines()):
        key = (row.get("label", ""), row["model"], row["budget_min"], row["repeat"])
        if key in done or not row.get("result"):
            continue
        work = Path(args.work)
        db = work / f"{row['model']}-{row['budget_min']:g}m-{row['repeat']}.db"
        if (row["budget_min"] == 0 and not row.get("default_budget")) or not db.exists():
            continue
        cmd = ["simpletvm", "tune", str(work / f"{row['model']}.onnx"), "--trials", "0",
               "--db", str(db), "--json", *row.get("extra", [])]  # the run's graph options
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        quiet = {"label": key[0], "model": key[1], "budget_min": key[2], "repeat": key[3],
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "revision": _revision(), "rc": proc.returncode}
        if proc.returncode == 0:
            r = json.loads(proc.stdout)
            quiet.update({k: r.get(k) for k in ("tuned_ms", "untuned_ms", "onnxruntime_ms",
                                                "exported", "output_check", "threads")})
        print(json.dumps(quiet), flush=True)
        with quiet_path.open("a") as fh:
            fh.write(json.dumps(quiet) + "\n")
    return 0


def cmd_checkpoints(args) -> int:
    """The latency a long run had reached at earlier minutes, rebuilt from its database.

    A copy of the point's database keeps only what was recorded in the first M minutes
    of tuning (records and default times created before the first workload + M), and
    ``simpletvm tune --trials 0`` builds and times it as ``remeasure`` does. The task
    allocation does not depend on the budget (coverage first, then the gradient rule),
    so this is the run a budget of M minutes would have made, up to its last round.
    """
    import shutil
    import sqlite3

    out = Path(args.out)
    path = out.with_name(out.stem + args.suffix + ".jsonl")
    done = set()
    if path.exists():
        for r in map(json.loads, path.read_text().splitlines()):
            done.add((r["label"], r["model"], r["budget_min"], r["repeat"], r["at_min"]))
    work = Path(args.work)
    for row in map(json.loads, out.read_text().splitlines()):
        db = work / f"{row['model']}-{row['budget_min']:g}m-{row['repeat']}.db"
        if not row.get("result") or not db.exists():
            continue
        for at in (float(m) for m in args.at.split(",")):
            key = (row.get("label", ""), row["model"], row["budget_min"], row["repeat"], at)
            if key in done or at >= row["budget_min"]:
                continue
            cut = work / f"cut-{db.stem}-{at:g}m.db"
            shutil.copyfile(db, cut)
            conn = sqlite3.connect(cut)
            with conn:
                start = conn.execute("SELECT MIN(created) FROM workloads").fetchone()[0]
                conn.execute("DELETE FROM records WHERE created > ?", (start + at * 60,))
                conn.execute("DELETE FROM defaults WHERE created > ?", (start + at * 60,))
                kept = conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
            conn.close()
            cmd = ["simpletvm", "tune", str(work / f"{row['model']}.onnx"), "--trials", "0",
                   "--db", str(cut), "--json", *row.get("extra", [])]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            point = {"label": key[0], "model": key[1], "budget_min": key[2],
                     "repeat": key[3], "at_min": at, "records": kept,
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "revision": _revision(), "rc": proc.returncode}
            if proc.returncode == 0:
                r = json.loads(proc.stdout)
                point.update({k: r.get(k) for k in ("tuned_ms", "untuned_ms",
                                                    "onnxruntime_ms", "exported",
                                                    "output_check", "threads")})
            print(json.dumps(point), flush=True)
            with path.open("a") as fh:
                fh.write(json.dumps(point) + "\n")
            cut.unlink()
    return 0


_DIRECT_GFLOP: dict[str, float] = {}


def _model_gflop(result: dict, model: str | None = None, work: Path | None = None) -> float:
    """The model's own FLOPs: its tasks' weight x FLOPs with every convolution direct.

    A run's plan counts the tasks it tuned, and a Winograd task does 2.25 to 4 times
    fewer FLOPs than the convolution it computes: the roofline must not move with it.
    """
    plan = result.get("plan") or {}  # runs of revisions without a plan have no FLOPs
    tuned = sum(t["weight"] * t["flops"] for t in plan.get("tasks", [])) / 1e9
    if not result.get("winograd_convs") or model is None or work is None:
        return tuned
    if model not in _DIRECT_GFLOP:
        proc = subprocess.run(["simpletvm", "inspect", str(work / f"{model}.onnx"),
                               "--winograd", "off", "--json"], capture_output=True,
                              text=True, check=True)
        tasks = json.loads(proc.stdout)["tasks"]
        _DIRECT_GFLOP[model] = sum(t["weight"] * t["flops"] for t in tasks) / 1e9
    return _DIRECT_GFLOP[model]


def cmd_report(args) -> int:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines()
            if line.strip()]
    peak = args.peak or gemm_peak_gflops()
    print(f"Attainable peak (float32 GEMM 2048, all cores, best of 5): {peak:.1f} GFLOPS\n")
    print("| model | budget min | repeat | tasks | trials | untuned ms | tuned ms | "
          "onnxruntime ms | tuned / ort | roofline ms | exported | output check | "
          "tuning s | revision | date |")
    print("|" + "---|" * 15)
    for row in sorted(rows, key=lambda r: (r.get("label", ""), r["model"], r["budget_min"],
                                           r["repeat"])):
        r = row.get("result")
        name = f"{row['model']} {row.get('label', '')}".strip()
        if r is None:
            print(f"| {name} | {row['budget_min']:g} | {row['repeat']} | "
                  f"failed: {row.get('error', '?')} |" + " |" * 11)
            continue
        roof = _model_gflop(r, row["model"], Path(args.work) if args.work else None) / peak * 1e3
        check = r.get("output_check") or {}
        ratio = r["tuned_ms"] / r["onnxruntime_ms"] if r.get("onnxruntime_ms") else None
        print(f"| {name} | {row['budget_min']:g} | {row['repeat']} | {r['tasks']} | "
              f"{r['trials']} | {_ms(r.get('untuned_ms'))} | {_ms(r['tuned_ms'])} | "
              f"{_ms(r.get('onnxruntime_ms'))} | {f'{ratio:.2f}' if ratio else '-'} | "
              f"{roof:.3f} | {r.get('exported')} | "
              f"{'ok' if check.get('ok') else 'not run'} {check.get('max_abs_err', '')} | "
              f"{r['tuning_seconds']:.0f} | {row['revision']} | {row['date']} |")
    _spread(rows)
    _quiet_table(Path(args.out), rows, peak, Path(args.work) if args.work else None)
    _checkpoint_table(Path(args.out))
    if args.figure:
        _plot(rows, Path(args.figure))
    return 0


def _quiet_table(out: Path, rows: list[dict], peak: float, work: Path | None) -> None:
    quiet_path = out.with_name(out.stem + "-quiet.jsonl")
    if not quiet_path.exists():
        return
    flops = {(r.get("label", ""), r["model"], r["budget_min"], r["repeat"]):
             _model_gflop(r["result"], r["model"], work) for r in rows if r.get("result")}
    print("\nQuiet re-measure (`quality.py remeasure`: built again from each point's "
          "database, nothing else running):\n")
    print("| model | budget min | repeat | untuned ms | tuned ms | onnxruntime ms | "
          "tuned / ort | roofline ms | exported | date |")
    print("|" + "---|" * 10)
    for q in map(json.loads, quiet_path.read_text().splitlines()):
        if q.get("rc") != 0:
            continue
        key = (q["label"], q["model"], q["budget_min"], q["repeat"])
        ratio = q["tuned_ms"] / q["onnxruntime_ms"] if q.get("onnxruntime_ms") else None
        roof = flops.get(key, 0.0) / peak * 1e3
        print(f"| {q['model']} | {q['budget_min']:g} | {q['repeat']} | "
              f"{_ms(q.get('untuned_ms'))} | {_ms(q['tuned_ms'])} | "
              f"{_ms(q.get('onnxruntime_ms'))} | {f'{ratio:.2f}' if ratio else '-'} | "
              f"{roof:.3f} | {q.get('exported')} | {q['date']} |")


def _checkpoint_table(out: Path) -> None:
    path = out.with_name(out.stem + "-checkpoints.jsonl")
    if not path.exists():
        return
    print("\nCheckpoints (`quality.py checkpoints`: a long run's database as it stood after "
          "M minutes, built and timed again):\n")
    print("| model | run's budget min | at min | records | untuned ms | tuned ms | "
          "onnxruntime ms | tuned / ort | exported | revision | date |")
    print("|" + "---|" * 11)
    points = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for q in sorted(points, key=lambda q: (q["model"], q["budget_min"], q["at_min"])):
        if q.get("rc") != 0:
            continue
        ratio = q["tuned_ms"] / q["onnxruntime_ms"] if q.get("onnxruntime_ms") else None
        print(f"| {q['model']} | {q['budget_min']:g} | {q['at_min']:g} | {q['records']} | "
              f"{_ms(q.get('untuned_ms'))} | {_ms(q['tuned_ms'])} | "
              f"{_ms(q.get('onnxruntime_ms'))} | {f'{ratio:.2f}' if ratio else '-'} | "
              f"{q.get('exported')} | {q['revision']} | {q['date']} |")


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _spread(rows: list[dict]) -> None:
    groups: dict[tuple[str, float], list[float]] = {}
    for row in rows:
        if row.get("result"):
            name = f"{row['model']} {row.get('label', '')}".strip()
            groups.setdefault((name, row["budget_min"]), []).append(
                row["result"]["tuned_ms"])
    print("\n| model | budget min | runs | tuned ms min | max | spread (max-min)/min |")
    print("|---|---|---|---|---|---|")
    for (model, budget), values in sorted(groups.items()):
        if len(values) > 1:
            lo, hi = min(values), max(values)
            print(f"| {model} | {budget:g} | {len(values)} | {lo:.3f} | {hi:.3f} | "
                  f"{(hi - lo) / lo:.1%} |")


def _plot(rows: list[dict], path: Path) -> None:
    """Best whole-model estimate (sum of weight x best kernel) against tuning time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows if r.get("result")})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for row in rows:
            r = row.get("result")
            if row["model"] != model or not r:
                continue
            points = [(c["seconds"] / 60, c["best_ms"]) for c in r["convergence"]
                      if c.get("best_ms")]
            if points:
                ax.plot(*zip(*points), label=f"{row['budget_min']:g} min #{row['repeat']}")
            if r.get("onnxruntime_ms"):
                ax.axhline(r["onnxruntime_ms"], color="gray", linestyle="--", linewidth=0.8)
        ax.set_title(f"{model} (dashed: onnxruntime)")
        ax.set_xlabel("tuning minutes")
        ax.set_ylabel("estimated model ms")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nconvergence figure: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="tune the models at each budget (resumable)")
    run.add_argument("--models", default="cnn,mobilenet_v2,bert_encoder,resnet18")
    run.add_argument("--budgets", default="5,15,30,60", help=(
        "minutes, comma-separated, or 'default': the budget simpletvm sizes from the "
        "task count"))
    run.add_argument("--repeats", type=int, default=1)
    run.add_argument("--out", default="docs/quality/results.jsonl")
    run.add_argument("--work", default=None, help="where models and databases go")
    run.add_argument("--extra", default="", help="more `simpletvm tune` flags")
    run.add_argument("--trials", type=int, default=None,
                     help="a trial budget instead of the time budgets (budget_min 0)")
    run.add_argument("--label", default="", help="names a series (e.g. another revision)")
    run.add_argument("--target", default="llvm", help="llvm, cuda, a TVM tag, or JSON")
    report = sub.add_parser("report", help="markdown tables and the convergence figure")
    report.add_argument("--out", default="docs/quality/results.jsonl")
    report.add_argument("--figure", default=None)
    report.add_argument("--peak", type=float, default=None,
                        help="GFLOPS (default: measure with the GEMM microbenchmark)")
    report.add_argument("--work", default=None, help=(
        "the run's --work folder: its models give the direct FLOPs of Winograd runs"))
    remeasure = sub.add_parser("remeasure", help="time each point again from its database")
    remeasure.add_argument("--out", default="docs/quality/results.jsonl")
    remeasure.add_argument("--work", required=True, help="the run's --work folder")
    remeasure.add_argument("--suffix", default="-quiet",
                           help="rows go to OUT's name + SUFFIX + .jsonl (default: -quiet)")
    checkpoints = sub.add_parser("checkpoints", help=(
        "rebuild long runs as they stood at earlier minutes, from their databases"))
    checkpoints.add_argument("--out", default="docs/quality/results.jsonl")
    checkpoints.add_argument("--work", required=True, help="the run's --work folder")
    checkpoints.add_argument("--at", default="5,15,30", help="minutes, comma-separated")
    checkpoints.add_argument("--suffix", default="-checkpoints",
                             help="rows go to OUT's name + SUFFIX + .jsonl (default: -checkpoints)")
    sub.add_parser("peak", help="print this machine's attainable GEMM GFLOPS")
    args = parser.parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "report":
        return cmd_report(args)
    if args.command == "remeasure":
        return cmd_remeasure(args)
    if args.command == "checkpoints":
        return cmd_checkpoints(args)
    print(f"{gemm_peak_gflops():.1f} GFLOPS (float32 GEMM 2048, all cores, best of 5)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
