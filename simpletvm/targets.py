"""Target parsing: plain names, TVM tags and the JSON dict form, with host detection.

TVM 0.27 refuses CLI strings such as ``"llvm -mcpu=..."``; users still type names, so we
turn names into the JSON-dict form here and fill in what the host tells us.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import TargetError

# The device name RunnerInput and tvm.runtime.device expect, by target kind.
_DEVICE_OF_KIND = {"llvm": "cpu", "cuda": "cuda", "rocm": "rocm", "metal": "metal",
                   "vulkan": "vulkan", "opencl": "opencl"}


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the TVM JSON config plus what the engine needs to know."""

    config: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.config["kind"])

    @property
    def device_type(self) -> str:
        return _DEVICE_OF_KIND.get(self.kind, self.kind)

    @property
    def is_gpu(self) -> bool:
        return self.kind in ("cuda", "rocm", "metal", "vulkan", "opencl")

    @property
    def key(self) -> str:
        """A canonical string used to key tuning records by target."""
        return json.dumps(self.config, sort_keys=True, separators=(",", ":"))

    def tvm_target(self):
        import tvm

        cfg = dict(self.config)
        host = cfg.pop("host", None)
        if host is not None:
            return tvm.target.Target(cfg, host=tvm.target.Target(host))
        return tvm.target.Target(cfg)


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@lru_cache(maxsize=1)
def _host_cpu() -> str | None:
    """The -mcpu for this host, checked against the vector features the OS exposes.

    LLVM names the CPU model (e.g. znver4), but a virtual machine may hide some of its
    features (AVX-512 here): code built for the model then dies with SIGILL. On x86 we
    therefore pick the CPU name from the feature flags the kernel reports.
    """
    import platform

    from tvm.target import codegen

    try:
        cpu = codegen.llvm_get_system_cpu()
    except Exception:  # noqa: BLE001 - an LLVM without host detection
        cpu = None
    if platform.machine() not in ("x86_64", "AMD64"):
        return cpu if cpu and cpu != "generic" else None
    flags = _cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= flags:
        return cpu if cpu and cpu != "generic" else "skylake-avx512"
    if {"avx2", "fma", "bmi2"} <= flags:
        return "haswell"
    if {"sse4_2", "popcnt"} <= flags:
        return "nehalem"
    return None


def gpu_available(device: str = "cuda") -> bool:
    """True if a device of this kind is visible and this TVM build can drive it.

    For CUDA we ask ``nvidia-smi`` instead of the CUDA runtime: initialising CUDA in this
    process would break it for every child forked from it (sched's runners are forked
    from a daemon that resolves their targets first).
    """
    import tvm

    if device == "cuda":
        return visible_cuda_gpus() > 0 and bool(tvm.runtime.enabled("cuda"))
    try:
        return bool(tvm.runtime.device(device, 0).exist)
    except Exception:  # noqa: BLE001
        return False


def visible_cuda_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def cuda_arch() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()[0] if out.strip() else ""
    return "sm_" + first.replace(".", "") if first else None


# MetaSchedule's GPU rules and VerifyGPUCode read these target attributes, which a bare
# {"kind": "cuda"} lacks. They are CUDA's per-block limits for every compute capability
# since 3.0 (the values TVM's nvidia/* tags carry): no need to ask the device, which would
# initialise CUDA in this process (see gpu_available).
CUDA_LIMITS = {"max_num_threads": 1024, "max_threads_per_block": 1024,
               "max_shared_memory_per_block": 49152, "registers_per_block": 65536,
               "thread_warp_size": 32}


def parse_target(spec: str | dict[str, Any]) -> TargetSpec:
    """The target as written (a name, a TVM tag or a JSON dict), checked for form only.

    Nothing is asked of a device and nothing is filled in from the host, so a CUDA target
    parses on a machine without a GPU (its ``kind`` and ``device_type`` are known): the
    scheduler maps a job to a kind of device with it. ``resolve_target`` builds on it.
    """
    import tvm

    if isinstance(spec, dict):
        config = dict(spec)
    else:
        text = spec.strip()
        if not text:
            raise TargetError("empty target; use a name such as 'llvm' or 'cuda', a TVM tag, "
                              "or a JSON dict like '{\"kind\": \"llvm\"}'")
        if text.startswith("{"):
            try:
                config = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TargetError(f"target JSON is malformed ({exc.msg} at char {exc.pos}); "
                                  "fix the JSON or use a plain name such as 'llvm'") from None
            if not isinstance(config, dict) or "kind" not in config:
                raise TargetError("target JSON must be an object with a 'kind' key, "
                                  "e.g. '{\"kind\": \"llvm\"}'")
        elif " " in text or text.startswith("-"):
            raise TargetError(f"target '{text}' uses the old CLI-string form that TVM 0.27 "
                              "refuses; use a name ('llvm'), a tag, or the JSON dict form")
        elif "/" in text:
            if text not in tvm.target.list_tags():
                raise TargetError(f"unknown target tag '{text}'; see tvm.target.list_tags() "
                                  "for the known tags, or use 'llvm' or 'cuda'")
            config = dict(_target_to_config(tvm.target.Target(text)))
        else:
            config = {"kind": text}
    return TargetSpec(config)


def resolve_target(spec: str | dict[str, Any], *, num_cores: int | None = None) -> TargetSpec:
    """Turn a name, tag or JSON dict into a TargetSpec, or raise TargetError."""
    import tvm

    config = dict(parse_target(spec).config)
    kind = str(config.get("kind"))
    if kind == "cuda" and not gpu_available("cuda"):
        raise TargetError("target 'cuda' needs an NVIDIA GPU, and none is visible here; "
                          "use --target llvm, or run on a machine with a GPU")
    if kind not in tvm.target.Target.list_kinds():  # creating one may query the device
        raise TargetError(f"unknown target '{kind}'; use 'llvm' for this CPU, 'cuda' for an "
                          "NVIDIA GPU, a TVM tag, or a JSON dict")
    if kind == "llvm":
        config.setdefault("num-cores", num_cores or host_cores())
        cpu = _host_cpu()
        if cpu and "mcpu" not in config and "mtriple" not in config:
            config["mcpu"] = cpu
    elif kind == "cuda":
        if "arch" not in config:
            arch = cuda_arch()
            if arch:
                config["arch"] = arch
        for key, value in CUDA_LIMITS.items():
            config.setdefault(key, value)
        config.setdefault("host", {"kind": "llvm", "mcpu": _host_cpu() or "generic"})
    try:
        TargetSpec(config).tvm_target()
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TargetError(f"TVM refused target {json.dumps(config)}: {first}") from None
    return TargetSpec(config)


def _target_to_config(target) -> dict[str, Any]:
    return json.loads(str(target))
