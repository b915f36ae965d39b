"""Latency measurement shared by tuned TVM, untuned TVM and onnxruntime.

All three are timed the same way, so their numbers compare: warm-up calls, then
``repeat`` samples, each the mean of enough back-to-back calls to last ``min_sample_ms``;
we report the median and the spread of the samples.
"""

from __future__ import annotations

import statistics
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
              **kwargs) -> LatencyStats:
    run, sync = tvm_runner(executable_or_module, device_type, inputs)
    return time_callable(run, sync=sync, **kwargs)


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
