"""Measure-stage throughput with 1, then 2, local TVM RPC servers under the scheduler.

For each server count: start that many ``tvm.exec.rpc_server`` processes on 127.0.0.1,
register them as remote devices of one kind, tune JOBS copies of a sample model on
them under the daemon (``interleaved``), and read the event log:

- candidates: trials measured, over all jobs;
- measure s: the sum of measure-stage durations; busy s: the time at least one measure
  ran (their union); overlap: the most measure stages running at once;
- cand/s: candidates per second of measure busy time (the devices' throughput);
- wall s: first stage start to last stage end (the batch's makespan).

    .venv/bin/python benchmarks/rpc_throughput.py [--model tiny] [--jobs 2] [--trials 16]

On this 2-core machine the CPU stages (search, build, update) dominate a round, so two
servers shorten the wall time little: a second server only helps while two jobs want
to measure at the same moment.  The local servers also share those 2 cores with the
CPU stages, so their timings are noisier than on a real remote device.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simpletvm.options import SHRUNK_SEARCH
from simpletvm.samples import write_sample
from tvmsched import api

FAST = SHRUNK_SEARCH  # the shrunk EvolutionarySearch, one timing per candidate


def start_server() -> tuple[subprocess.Popen, int]:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
         str(port), "--port-end", str(port + 1)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.closing(socket.socket()) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.2)
    raise TimeoutError(f"rpc_server on port {port} did not start")


def union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = now = 0
    for _, step in points:
        now += step
        peak = max(peak, now)
    return peak


def run(workdir: Path, model: Path, servers: int, args: argparse.Namespace) -> dict:
    db = workdir / f"servers-{servers}.db"
    procs = [start_server() for _ in range(servers)]
    try:
        for i, (_, port) in enumerate(procs):
            api.add_device(db, f"box-{i}", server=f"127.0.0.1:{port}", kind="bench")
        api.start_daemon(db, resources=["cpu=2", "cpu-device=1"])
        try:
            jobs = [
                api.submit(
                    db,
                    model=str(model),
                    trials=args.trials,
                    per_round=args.per_round,
                    seed=seed,
                    device_kind="bench",
                    options=FAST,
                )  # fmt: skip
                for seed in range(args.jobs)
            ]
            states = api.wait(db, jobs, timeout=args.timeout)
        finally:
            api.stop_daemon(db, timeout=60)
    finally:
        for proc, _ in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    if set(states.values()) != {"done"}:
        raise RuntimeError(f"jobs did not finish: {states}")
    rows = api.events(db)
    measures = [(r["start"], r["end"]) for r in rows
                if r["stage"] == "measure" and r["resource"].startswith("box-")]  # fmt: skip
    trials = sum(api.job(db, j)["result"]["trials"] for j in jobs)
    busy = union(measures)
    return {
        "servers": servers,
        "candidates": trials,
        "measure_s": sum(b - a for a, b in measures),
        "busy_s": busy,
        "overlap": overlap(measures),
        "per_s": trials / busy if busy else 0.0,
        "wall_s": api.makespan(db),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="a simpletvm sample: tiny or cnn")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--per-round", type=int, default=8)
    parser.add_argument("--servers", default="1,2", help="server counts to try, in order")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    print(f"{args.jobs} x {args.model}, {args.trials} trials, {args.per_round} per round")
    print(f"{'servers':>7} {'candidates':>10} {'measure s':>9} {'busy s':>7} {'overlap':>7}"
          f" {'cand/s':>7} {'wall s':>7}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="rpc-throughput-") as tmp:
        workdir = Path(tmp)
        model = write_sample(args.model, workdir / f"{args.model}.onnx")
        for count in (int(n) for n in args.servers.split(",")):
            r = run(workdir, model, count, args)
            print(f"{r['servers']:>7} {r['candidates']:>10} {r['measure_s']:>9.2f}"
                  f" {r['busy_s']:>7.2f} {r['overlap']:>7} {r['per_s']:>7.2f}"
                  f" {r['wall_s']:>7.1f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
