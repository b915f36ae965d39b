"""Which evolutionary-search settings give the best model in a fixed wall-clock budget.

MetaSchedule's defaults (population 512, 4 genetic iterations) spend most of a round in
the search on a 2-core machine; a smaller population finds somewhat worse candidates per
round but leaves time to measure many more. Each setting tunes the sample CNN into a
fresh database for the same time budget and prints one JSON line.

    python benchmarks/search_settings.py --budget 150 \\
        --settings 512/4/16 256/2/32 128/1/32 512/4/64
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def run(model: str, population: int, iters: int, per_round: int, budget: float,
        work: Path, seed: int, conv_layout: str = "NCHW") -> dict:
    from simpletvm.options import TuningOptions
    from simpletvm.spec import JobSpec

    options = TuningOptions(time_budget_seconds=budget, population_size=population,
                            init_min_unmeasured=min(50, population), genetic_num_iters=iters,
                            per_round=per_round, seed=seed, conv_layout=conv_layout)
    db = work / f"{population}-{iters}-{per_round}-{seed}-{conv_layout}.db"
    result = JobSpec(model=model, options=options, tuning_db=str(db)).tuning_job().run_all()
    r = result.result()
    stages = r["stage_seconds"]
    return {"population": population, "genetic_iters": iters, "per_round": per_round,
            "conv_layout": conv_layout,
            "seed": seed, "budget_s": budget, "tuned_ms": r["tuned_ms"],
            "onnxruntime_ms": r["onnxruntime_ms"], "trials": r["trials"],
            **{f"{k}_s": round(v, 1) for k, v in stages.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="ONNX file (default: the sample cnn)")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds of tuning")
    parser.add_argument("--settings", nargs="+", default=["512/4/16", "256/2/32"],
                        help="population/genetic iterations/candidates per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conv-layouts", nargs="+", default=["NCHW"],
                        help="each setting runs once per layout (NCHW, NHWC)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="search-settings-"))
    model = args.model
    if model is None:
        from simpletvm.samples import write_sample

        model = str(write_sample("cnn", work / "cnn.onnx"))
    for setting in args.settings:
        population, iters, per_round = (int(x) for x in setting.split("/"))
        for layout in args.conv_layouts:
            print(json.dumps(run(model, population, iters, per_round, args.budget, work,
                                 args.seed, layout)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
