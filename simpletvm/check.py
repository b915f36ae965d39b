"""The output check: the exported module must compute what onnxruntime computes.

A tuned schedule is a program transformation, and a wrong one (a bad layout rewrite, a
miscompiled kernel) can be fast. So before a module is exported as good, its outputs on
the timing inputs are compared with onnxruntime's on the same inputs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import numpy as np


class OutputMismatchError(RuntimeError):
    """The tuned module's outputs differ from onnxruntime's beyond the tolerance."""


@dataclass(frozen=True)
class OutputCheck:
    max_abs_err: float
    max_rel_err: float  # max |tvm - ort| / max |ort|, per output, the largest
    rtol: float
    atol: float
    ok: bool

    def as_dict(self) -> dict:
        return asdict(self)


def reference_outputs(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, feeds)]


def compare(outputs: list[np.ndarray], reference: list[np.ndarray], *, rtol: float,
            atol: float) -> OutputCheck:
    """Each output must satisfy max|a - b| <= atol + rtol * max|b| (a norm-wise test,
    so that values near zero do not blow up the relative error)."""
    if len(outputs) != len(reference):
        return OutputCheck(float("inf"), float("inf"), rtol, atol, False)
    worst_abs, worst_rel, ok = 0.0, 0.0, True
    for got, want in zip(outputs, reference):
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape or not np.isfinite(got).all():
            return OutputCheck(float("inf"), float("inf"), rtol, atol, False)
        err = float(np.max(np.abs(got - want))) if want.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / scale if scale > 0 else err)
        ok = ok and err <= atol + rtol * scale
    return OutputCheck(worst_abs, worst_rel, rtol, atol, ok)


def module_outputs(executable, device_type: str,
                   feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``main`` once; on a GPU in a fresh process (CUDA does not survive a fork)."""
    if device_type == "cpu":
        from .bench import run_tvm_once

        out = run_tvm_once(executable, device_type, feeds)
        return [out] if isinstance(out, np.ndarray) else list(out)
    with tempfile.TemporaryDirectory(prefix="simpletvm-check-") as work:
        library, inputs, result = f"{work}/m.so", f"{work}/in.npz", f"{work}/out.npz"
        executable.export_library(library)
        np.savez(inputs, **feeds)
        proc = subprocess.run([sys.executable, "-m", "simpletvm.check", library, inputs,
                               device_type, result], capture_output=True, text=True,
                              timeout=900, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"running the module on {device_type} failed: {last}")
        with np.load(result) as data:
            return [data[f"out{i}"] for i in range(len(data.files))]


def _main(argv: list[str]) -> int:
    """``python -m simpletvm.check LIBRARY INPUTS.npz DEVICE OUT.npz`` (our own export)."""
    import tvm

    from .bench import run_tvm_once

    library, inputs, device_type, result = argv
    with np.load(inputs) as data:
        feeds = {name: data[name] for name in data.files}
    out = run_tvm_once(tvm.runtime.load_module(library), device_type, feeds)
    outs = [out] if isinstance(out, np.ndarray) else list(out)
    np.savez(result, **{f"out{i}": o for i, o in enumerate(outs)})
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
