"""Latency measurement shared by tuned TVM, untuned TVM and onnxruntime.

All three are timed the same way, so their numbers compare: warm-up calls, then samples,
each the mean of enough back-to-back calls to last ``min_sample_ms``; we report the median
and the spread of the samples. Sampling stops as soon as the median is known to within
``rel_precision`` (a distribution-free confidence interval from order statistics), or
when ``max_seconds`` have passed: a fixed count of samples took minutes on slow untuned
builds (36 calls of 3 s each) and wasted time on stable fast ones.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

# why sampling stopped
STABLE, TIME_CAP, MAX_SAMPLES = "stable", "time cap", "max samples"


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    samples: int
    stopped: str = ""  # STABLE, TIME_CAP or MAX_SAMPLES
    rounds: int = 1  # turns, alternating with other models (time_interleaved)

    def as_dict(self) -> dict:
        return asdict(self)


def time_callable(fn: Callable[[], object], *, sync: Callable[[], None] | None = None,
                  warmup: int = 5, repeat: int | None = None, min_sample_ms: float = 5.0,
                  max_seconds: float = 10.0, min_samples: int = 3,
                  rel_precision: float = 0.01, confidence: float = 0.95,
                  clock: Callable[[], float] = time.perf_counter) -> LatencyStats:
    """Time ``fn`` until its median is stable or ``max_seconds`` (warm-up included) pass.

    ``repeat`` caps the number of samples; at least ``min_samples`` (at most ``repeat``)
    are taken even past the time cap, so a slow model still gets a median. Warm-up takes
    up to ``warmup`` calls but at least one and stops once it has used a quarter of the
    time allowed. ``clock`` is injectable so tests simulate time instead of sleeping.
    """
    samples, stopped = _take_samples(
        fn, sync=sync, warmup=warmup, repeat=repeat, min_sample_ms=min_sample_ms,
        max_seconds=max_seconds, min_samples=min_samples, rel_precision=rel_precision,
        confidence=confidence, clock=clock)
    return _stats(samples, stopped)


def time_interleaved(runs: dict[str, tuple[Callable[[], object], Callable[[], None] | None]],
                     *, rounds: int = 3, max_seconds: float = 10.0,
                     **kwargs) -> dict[str, LatencyStats]:
    """Time several callables in alternating rounds; each one's samples are pooled.

    This machine's speed drifts by tens of percent within minutes (a shared host): timed
    one after the other, two models' ratio took that drift in. Here each callable gets
    ``rounds`` turns of ``max_seconds / rounds`` (warm-up included), in AB, BA, AB...
    order, so a drift weighs on all of them alike. The median reported is the median of
    the rounds' medians: each round weighs the same, however many samples it took (a
    slower round takes fewer). ``kwargs`` are ``time_callable``'s; a callable stopped by
    its precision in every round is STABLE.
    """
    pooled: dict[str, list[float]] = {name: [] for name in runs}
    medians: dict[str, list[float]] = {name: [] for name in runs}
    stops: dict[str, set[str]] = {name: set() for name in runs}
    order = list(runs)
    for turn in range(max(1, rounds)):
        for name in (order if turn % 2 == 0 else order[::-1]):
            fn, sync = runs[name]
            samples, stopped = _take_samples(fn, sync=sync,
                                             max_seconds=max_seconds / max(1, rounds),
                                             **kwargs)
            pooled[name].extend(samples)
            medians[name].append(statistics.median(samples))
            stops[name].add(stopped)
    return {name: _stats(pooled[name], STABLE if stops[name] == {STABLE} else
                         (TIME_CAP if TIME_CAP in stops[name] else MAX_SAMPLES),
                         rounds=max(1, rounds), median=statistics.median(medians[name]))
            for name in runs}


def _stats(samples: list[float], stopped: str, *, rounds: int = 1,
           median: float | None = None) -> LatencyStats:
    return LatencyStats(
        median_ms=statistics.median(samples) if median is None else median,
        mean_ms=statistics.fmean(samples),
        std_ms=statistics.pstdev(samples),
        min_ms=min(samples),
        samples=len(samples),
        stopped=stopped,
        rounds=rounds,
    )


def _take_samples(fn: Callable[[], object], *, sync: Callable[[], None] | None,
                  warmup: int = 5, repeat: int | None = None, min_sample_ms: float = 5.0,
                  max_seconds: float = 10.0, min_samples: int = 3,
                  rel_precision: float = 0.01, confidence: float = 0.95,
                  clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], str]:
    """``time_callable``'s sampling: the samples (ms per call) and why it stopped."""
    sync = sync or (lambda: None)
    most = repeat if repeat is not None else math.inf
    least = max(1, min(min_samples, most))
    began = clock()

    def timed_call() -> float:
        start = clock()
        fn()
        sync()
        return max(clock() - start, 1e-9)

    one = timed_call()
    for _ in range(warmup - 1):
        if clock() - began + one > max_seconds / 4:
            break
        one = timed_call()
    # how many calls make one sample last min_sample_ms
    number = max(1, int(min_sample_ms / 1e3 / one))
    ordered: list[float] = []
    samples: list[float] = []
    stopped = MAX_SAMPLES
    sample_s = one * number
    while len(samples) < most:
        if len(samples) >= least:
            if median_rel_halfwidth(ordered, confidence) <= rel_precision:
                stopped = STABLE
                break
            if clock() - began + sample_s > max_seconds:
                stopped = TIME_CAP
                break
        start = clock()
        for _ in range(number):
            fn()
        sync()
        sample_s = clock() - start
        samples.append(sample_s / number * 1e3)
        bisect.insort(ordered, samples[-1])
    return samples, stopped


def median_rel_halfwidth(ordered: list[float], confidence: float = 0.95) -> float:
    """Half the width of the median's confidence interval, relative to the median.

    The interval is [x_(j+1), x_(n-j)] of the sorted samples: it holds the true median
    with probability 1 - 2 P(B <= j), B ~ Binomial(n, 1/2), whatever the distribution.
    Infinite while there are too few samples for any interval (fewer than 6 at 95 %).
    """
    n = len(ordered)
    j = _order_statistic_rank(n, (1 - confidence) / 2)
    if j is None:
        return math.inf
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    if median <= 0:
        return math.inf
    return (ordered[n - 1 - j] - ordered[j]) / 2 / median


def _order_statistic_rank(n: int, tail: float) -> int | None:
    """The largest j with P(Binomial(n, 1/2) <= j) <= tail, or None if there is none."""
    if n > 200:  # normal approximation, conservative by one
        j = math.floor((n - 1 - _z(tail) * math.sqrt(n)) / 2) - 1
        return j if j >= 0 else None
    cdf, j = 0.0, -1
    for k in range(n + 1):
        cdf += math.comb(n, k) / 2**n
        if cdf > tail:
            break
        j = k
    return j if j >= 0 else None


def _z(tail: float) -> float:
    return statistics.NormalDist().inv_cdf(1 - tail)


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
    """``python -m simpletvm.bench LIBRARY INPUTS.npz DEVICE KWARGS_JSON``: print stats.

    The parent reads the last line of stdout, so whatever TVM prints meanwhile goes to
    stderr (see ``render.stdout_to_stderr``).
    """
    import tvm

    from .render import real_stdout, stdout_to_stderr

    library, feeds, device_type, kwargs = argv
    with stdout_to_stderr():
        with np.load(feeds) as data:
            inputs = {name: data[name] for name in data.files}
        stats = bench_tvm(tvm.runtime.load_module(library), device_type, inputs,
                          isolate=False, **json.loads(kwargs))
        real_stdout.write(json.dumps(stats.as_dict()) + "\n")
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
    run = onnxruntime_runner(model_bytes, inputs, use_gpu=use_gpu, threads=threads)
    if run is None:
        return None
    try:
        return time_callable(run, **kwargs)
    except Exception:  # noqa: BLE001 - a baseline that fails is reported as missing
        return None


def onnxruntime_runner(model_bytes: bytes, inputs: dict[str, np.ndarray], *,
                       use_gpu: bool = False, threads: int | None = None):
    """A zero-argument callable running the model in onnxruntime, or None if it cannot."""
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
        session.run(None, feed)  # a model onnxruntime loads but cannot run fails here
    except Exception:  # noqa: BLE001 - a baseline that fails is reported as missing
        return None
    return lambda: session.run(None, feed)


def time_against_onnxruntime(executable_or_module, device_type: str,
                             inputs: dict[str, np.ndarray], model_bytes: bytes, *,
                             use_gpu: bool = False, threads: int | None = None,
                             rounds: int = 3, **kwargs
                             ) -> tuple[LatencyStats, LatencyStats | None]:
    """The TVM module's and onnxruntime's latency on the same inputs.

    On a CPU the two are timed in alternating rounds (``time_interleaved``), so that
    their ratio, which users read first, does not take in the machine's drift. A GPU
    module is timed in a fresh process (``bench_tvm``), and onnxruntime after it.
    """
    run = (onnxruntime_runner(model_bytes, inputs, use_gpu=use_gpu, threads=threads)
           if model_bytes else None)
    if device_type != "cpu" or run is None:
        tvm_stats = bench_tvm(executable_or_module, device_type, inputs, **kwargs)
        if run is None:
            return tvm_stats, None
        try:
            return tvm_stats, time_callable(run, **kwargs)
        except Exception:  # noqa: BLE001 - a baseline that fails is reported as missing
            return tvm_stats, None
    tvm_run, sync = tvm_runner(executable_or_module, device_type, inputs)
    timed = time_interleaved({"tvm": (tvm_run, sync), "onnxruntime": (run, None)},
                             rounds=rounds, **kwargs)
    return timed["tvm"], timed["onnxruntime"]


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
