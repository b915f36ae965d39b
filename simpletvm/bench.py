"""Latency measurement shared by tuned TVM, untuned TVM and onnxruntime.

All three are timed the same way, so their numbers compare: warm-up calls, then
``repeat`` samples, each the mean of enough back-to-back calls to last ``min_sample_ms``;
we report the median and the spread of the samples.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    samples: int

    def as_dict(self) -> dict:
        return asdict(self)


def time_callable(fn: Callable[[], object], *, sync: Callable[[], None] | None = None,
                  warmup: int = 5, repeat: int = 30, min_sample_ms: float = 5.0) -> LatencyStats:
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    # calibrate: how many calls make one sample last min_sample_ms
    start = time.perf_counter()
    fn()
    sync()
    one = max(time.perf_counter() - start, 1e-7)
    number = max(1, int(min_sample_ms / 1e3 / one))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        samples.append((time.perf_counter() - start) / number * 1e3)
    return LatencyStats(
        median_ms=statistics.median(samples),
        mean_ms=statistics.fmean(samples),
        std_ms=statistics.pstdev(samples),
        min_ms=min(samples),
        samples=repeat,
    )


def tvm_runner(executable_or_module, device_type: str, inputs: dict[str, np.ndarray]):
    """A zero-argument callable running the model's ``main``, and the device's sync."""
    import tvm
    from tvm import relax

    dev = tvm.runtime.device(device_type, 0)
    vm = relax.VirtualMachine(executable_or_module, dev)
    args = [tvm.runtime.tensor(v, dev) for v in inputs.values()]
    main = vm["main"]
    return (lambda: main(*args)), dev.sync


def bench_tvm(executable_or_module, device_type: str, inputs: dict[str, np.ndarray],
              *, isolate: bool | None = None, **kwargs) -> LatencyStats:
    """Time the model's ``main``; on a GPU (``isolate`` unset) in a fresh process.

    CUDA cannot be used in a process forked from one that had initialised it, and sched's
    runners are forked from a daemon that has imported TVM: on the H100 the finalize
    stage failed there with ``cudaErrorInitializationError``. A spawned process starts
    clean; it loads only the library we export here, never one from a model file.
    """
    if isolate is None:
        isolate = device_type != "cpu"
    if isolate:
        return _bench_in_fresh_process(executable_or_module, device_type, inputs, kwargs)
    run, sync = tvm_runner(executable_or_module, device_type, inputs)
    return time_callable(run, sync=sync, **kwargs)


def _bench_in_fresh_process(executable, device_type: str, inputs: dict[str, np.ndarray],
                            kwargs: dict, timeout: float = 900.0) -> LatencyStats:
    with tempfile.TemporaryDirectory(prefix="simpletvm-bench-") as work:
        library = f"{work}/model.so"
        executable.export_library(library)
        feeds = f"{work}/inputs.npz"
        np.savez(feeds, **inputs)
        proc = subprocess.run(
            [sys.executable, "-m", "simpletvm.bench", library, feeds, device_type,
             json.dumps(kwargs)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"timing on {device_type} in a fresh process failed: {last}")
    return LatencyStats(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _main(argv: list[str]) -> int:
    """``python -m simpletvm.bench LIBRARY INPUTS.npz DEVICE KWARGS_JSON``: print stats."""
    import tvm

    library, feeds, device_type, kwargs = argv
    with np.load(feeds) as data:
        inputs = {name: data[name] for name in data.files}
    stats = bench_tvm(tvm.runtime.load_module(library), device_type, inputs, isolate=False,
                      **json.loads(kwargs))
    print(json.dumps(stats.as_dict()))
    return 0


def run_tvm_once(executable_or_module, device_type: str, inputs: dict[str, np.ndarray]):
    run, _ = tvm_runner(executable_or_module, device_type, inputs)
    out = run()
    if hasattr(out, "numpy"):
        return out.numpy()
    return [o.numpy() for o in out]


def bench_onnxruntime(model_bytes: bytes, inputs: dict[str, np.ndarray], *, use_gpu: bool = False,
                      threads: int | None = None, **kwargs) -> LatencyStats | None:
    """onnxruntime's latency on the same inputs, or None if onnxruntime cannot run it."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(model_bytes, options, providers=providers)
        feed = dict(inputs)
        return time_callable(lambda: session.run(None, feed), **kwargs)
    except Exception:  # noqa: BLE001 - a baseline that fails is reported as missing
        return None


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
