"""Learning across jobs: does a tuning database that has seen similar models make the next
job faster? Cold (a fresh database) against warm (a database warmed up on other models of
one family), at equal wall-clock budgets, with ablations.

1. Warm-up: the sample CNN's family at other resolutions and widths (three variants,
   none of them the sample itself) is tuned into one database, and its shared cost model
   is trained (`simpletvm db train`).
2. Measurement: the sample `cnn` is tuned with `--time-budget B`, once per arm and
   repeat, each in a fresh process:
   - cold: a fresh, empty database (what a first job gets);
   - warm: a copy of the warmed-up database, shared model and transfer on (defaults);
   - shared_only: the copy, `--no-transfer`;  transfer_only: the copy, `--no-shared-model`.
3. SLA: an SLA job on a copy of the warm database, with the SLA at 1.2x the cold runs'
   median tuned latency: how many trials it needs.
4. Load time: the shared model of a database holding 10,000 measurements (the warm-up's
   features, repeated), loaded as a job does at its start.

Each step appends JSON lines to --out, so an interrupted run resumes.

    python benchmarks/transfer.py run --budget 150 --warmup 120 --repeats 3 \\
        --out docs/quality/transfer.jsonl
    python benchmarks/transfer.py report --out docs/quality/transfer.jsonl \\
        --figure docs/figures/quality/transfer.png
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import _revision, run_json  # noqa: E402 - a sibling benchmark's helpers

# (resolution, width): the warm-up family; the sample cnn is (64, 16)
VARIANTS = [(48, 16), (96, 16), (64, 24)]
ARMS = {"cold": None, "warm": [], "shared_only": ["--no-transfer"],
        "transfer_only": ["--no-shared-model"]}


def write_variant(path: Path, size: int, width: int) -> Path:
    """The sample CNN's structure (3 conv+relu, pool, dense) at another size and width."""
    import numpy as np

    from simpletvm.samples import SampleInput, _GraphBuilder

    g = _GraphBuilder(np.random.default_rng(size * 100 + width))
    x = g.op("Relu", [g.conv("input", 3, width)])
    x = g.op("Relu", [g.conv(x, width, 2 * width, stride=2)])
    x = g.op("Relu", [g.conv(x, 2 * width, 2 * width)])
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    out = g.dense(x, 2 * width, 10)
    model = g.model("cnn", [SampleInput("input", (1, 3, size, size))], out, (1, 10))
    path.write_bytes(model.SerializeToString())
    return path


def _copy_db(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as source, sqlite3.connect(dst) as copy:
        source.backup(copy)


def _rows(out: Path) -> list[dict]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def _append(out: Path, row: dict) -> None:
    row = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "revision": _revision(), **row}
    with out.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def _tune(model: Path, db: Path, args: list[str]) -> dict:
    cmd = ["simpletvm", "tune", str(model), "--db", str(db), "--json", *args]
    return run_json(cmd, ["simpletvm", "tune", model.name, "--db", db.name, "--json", *args])


def cmd_run(args) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = _rows(out)
    # a resumed run goes on in the work directory of the first (its warm database)
    earlier = next((r["work"] for r in rows if r.get("work")), None)
    work = Path(args.work or earlier or tempfile.mkdtemp(prefix="transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    done = {(r["step"], r.get("arm"), r.get("repeat"), r.get("model")) for r in rows}
    warm_db = work / "warm.db"
    for size, width in VARIANTS:
        name = f"cnn{size}w{width}"
        model = write_variant(work / f"{name}.onnx", size, width)
        if ("warmup", None, None, name) in done:
            continue
        print(f"{time.strftime('%H:%M:%S')} warm-up {name}", flush=True)
        _append(out, {"step": "warmup", "model": name, "work": str(work),
                      **_tune(model, warm_db, ["--time-budget", f"{args.warmup}s"])})
    if ("train", None, None, None) not in done:
        proc = subprocess.run(["simpletvm", "db", "train", "--db", str(warm_db), "--json"],
                              capture_output=True, text=True, check=True)
        _append(out, {"step": "train", **json.loads(proc.stdout)})
    target = work / "cnn.onnx"
    subprocess.run(["simpletvm", "sample", "cnn", "-o", str(target)], check=True,
                   capture_output=True)
    for repeat in range(args.repeats):
        for arm, flags in ARMS.items():
            if ("run", arm, repeat, None) in done:
                continue
            db = work / f"{arm}-{repeat}.db"
            db.unlink(missing_ok=True)
            if flags is not None:
                _copy_db(warm_db, db)
            print(f"{time.strftime('%H:%M:%S')} {arm} repeat {repeat}", flush=True)
            row = _tune(target, db, ["--time-budget", f"{args.budget}s", "--seed",
                                     str(repeat), *(flags or [])])
            _append(out, {"step": "run", "arm": arm, "repeat": repeat,
                          "budget_seconds": args.budget, **row})
            r = row.get("result") or {}
            print(f"  tuned={r.get('tuned_ms')} ort={r.get('onnxruntime_ms')} "
                  f"transfer={r.get('transfer')} {row.get('error', '')}", flush=True)
    if ("sla", None, None, None) not in done:
        cold = [r["result"]["tuned_ms"] for r in _rows(out)
                if r["step"] == "run" and r["arm"] == "cold" and r.get("result")]
        sla = 1.2 * statistics.median(cold)
        db = work / "sla.db"
        db.unlink(missing_ok=True)
        _copy_db(warm_db, db)
        _append(out, {"step": "sla", "sla_ms": sla,
                      **_tune(target, db, ["--sla-ms", f"{sla:.4f}", "--trials", "512"])})
    if ("load", None, None, None) not in done:
        _append(out, {"step": "load", **load_time(warm_db, work / "big.db", 10_000)})
    return 0


def load_time(warm_db: Path, big_db: Path, records: int) -> dict:
    """Fill a database with ``records`` stored features (the warm-up's, repeated), train
    its shared model, and time the load a job does at its start (5 times)."""
    from simpletvm.costmodel import SharedCostModel, SharedModelStore
    from simpletvm.database import connect

    big_db.unlink(missing_ok=True)
    connect(big_db).close()
    with sqlite3.connect(warm_db) as src:
        rows = src.execute("SELECT target, group_hash, n_rows, n_cols, features, mean_secs, "
                           "created FROM cost_features").fetchall()
    target = rows[0][0]
    with sqlite3.connect(big_db) as dst:
        for i in range(records):
            row = rows[i % len(rows)]
            dst.execute("INSERT INTO cost_features (target, group_hash, n_rows, n_cols, "
                        "features, mean_secs, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (row[0], f"{row[1]}-{i // len(rows)}", *row[2:]))
    store = SharedModelStore(big_db, target)
    trained = store.train_and_save(threads=2)
    loads = []
    for _ in range(5):
        start = time.perf_counter()
        model = SharedCostModel(threads=2, store=SharedModelStore(big_db, target))
        loads.append(time.perf_counter() - start)
    return {"records": records, "train_seconds": trained["seconds"] if trained else None,
            "loaded_records": model.loaded_records, "load_seconds": loads,
            "db_bytes": big_db.stat().st_size}


def _curve(result: dict) -> list[tuple[float, float]]:
    """(seconds, estimate) once every task has a time: before that the sum leaves some out."""
    return [(p["seconds"], p["best_ms"]) for p in result.get("convergence") or []
            if p.get("best_ms") is not None and p.get("complete", True)]


def _time_to(curve: list[tuple[float, float]], level: float) -> float | None:
    return next((s for s, ms in curve if ms <= level), None)


def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cmd_report(args) -> int:
    rows = _rows(Path(args.out))
    runs = [r for r in rows if r["step"] == "run" and r.get("result")]
    by_arm = {arm: sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["repeat"])
              for arm in ARMS}
    cold = {r["repeat"]: r["result"] for r in by_arm["cold"]}
    print("| arm | tuned ms, median (min-max) | spread | estimate at budget end, ms | "
          "time to cold's final estimate, s (share of cold's time) | time to 1.2x ORT, s | "
          "tasks seeded, measured | retraining, share of tuning time |")
    print("|---|---|---|---|---|---|---|---|")
    for arm, arm_rows in by_arm.items():
        if not arm_rows:
            continue
        tuned = [r["result"]["tuned_ms"] for r in arm_rows]
        ends, reach, reach_ort, seeded, retrain = [], [], [], [], []
        for r in arm_rows:
            res, curve = r["result"], _curve(r["result"])
            ends.append(curve[-1][1] if curve else None)
            base = cold.get(r["repeat"])
            base_curve = _curve(base) if base else []
            if base_curve:
                hit = _time_to(curve, base_curve[-1][1])
                reach.append(f"{_fmt(hit, 0)} ({_fmt(hit / base_curve[-1][0] if hit else None)})")
            hit = _time_to(curve, 1.2 * res["onnxruntime_ms"])
            reach_ort.append(_fmt(hit, 0))
            t = res.get("transfer") or {}
            seeded.append(f"{t.get('tasks', 0)}, {t.get('measured', 0)}")
            trained = sum(x["seconds"] for x in (res.get("shared_model") or {}).get(
                "trainings", []))
            retrain.append(f"{trained:.1f} s ({trained / res['tuning_seconds'] * 100:.1f}%)")
        spread = (max(tuned) - min(tuned)) / statistics.median(tuned) * 100
        print(f"| {arm} | {statistics.median(tuned):.3f} ({min(tuned):.3f}-{max(tuned):.3f}) | "
              f"{spread:.0f}% | {' / '.join(_fmt(e, 3) for e in ends)} | {' / '.join(reach)} | "
              f"{' / '.join(reach_ort)} | {' / '.join(seeded)} | {' / '.join(retrain)} |")
    ort = [r["result"]["onnxruntime_ms"] for r in runs]
    if ort:
        print(f"\nonnxruntime: median {statistics.median(ort):.3f} ms over the runs")
    for r in rows:
        if r["step"] == "sla":
            res = r.get("result") or {}
            print(f"\nSLA job: sla {r['sla_ms']:.3f} ms, met={res.get('sla_met')}, "
                  f"trials {res.get('trials')}, stop: {res.get('stop_reason')}, "
                  f"transfer {res.get('transfer')} ({r['command']})")
        if r["step"] == "load":
            print(f"\nshared model on {r['records']} records: trained in "
                  f"{_fmt(r['train_seconds'], 1)} s; load at job start "
                  f"{min(r['load_seconds']):.3f}-{max(r['load_seconds']):.3f} s")
        if r["step"] == "train":
            print(f"\nwarm-up model: {r.get('trained')}")
    if args.figure and runs:
        _plot(by_arm, Path(args.figure))
    return 0


def _plot(by_arm: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"cold": "tab:blue", "warm": "tab:red", "shared_only": "tab:orange",
              "transfer_only": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, arm_rows in by_arm.items():
        for i, r in enumerate(arm_rows):
            curve = _curve(r["result"])
            if curve:
                ax.step([s for s, _ in curve], [ms for _, ms in curve], where="post",
                        color=colors[arm], alpha=0.8 if arm in ("cold", "warm") else 0.45,
                        label=arm if i == 0 else None)
    ort = statistics.median(r["result"]["onnxruntime_ms"] for rs in by_arm.values() for r in rs)
    ax.axhline(ort, color="black", linestyle="--", linewidth=1, label="onnxruntime")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the job started")
    ax.set_ylabel("estimated latency, ms (sum of task bests)")
    ax.set_title("sample cnn: cold vs warm database (each line one run)")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="warm up, then tune cold and warm (resumable)")
    run.add_argument("--budget", type=float, default=150.0, help="seconds per measured run")
    run.add_argument("--warmup", type=float, default=120.0, help="seconds per warm-up model")
    run.add_argument("--repeats", type=int, default=3)
    run.add_argument("--out", default="docs/quality/transfer.jsonl")
    run.add_argument("--work", help="work directory, kept for a resume (default: the one "
                     "--out names, else a new temp dir)")
    report = sub.add_parser("report", help="the markdown table and the convergence figure")
    report.add_argument("--out", default="docs/quality/transfer.jsonl")
    report.add_argument("--figure", default=None)
    args = parser.parse_args(argv)
    return {"run": cmd_run, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
