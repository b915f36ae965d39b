"""Resource detection and ``--resource NAME=CAPACITY`` parsing.

Defaults: a ``cpu`` pool with one slot per core; one exclusive ``gpuN`` per GPU that
``nvidia-smi -L`` lists; on a machine without GPUs, one exclusive ``cpu-device``: the
cores a CPU target is measured on (a measure stage on it also claims every cpu slot).
"""

from __future__ import annotations

import os
import re

from simpletvm.errors import TargetError
from simpletvm.targets import TargetSpec, parse_target, visible_cuda_gpus

from .limits import MAX_DEVICES, MAX_POOL, check_int
from .models import Resource, ResourceKind

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]*$")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def visible_gpus() -> int:
    return visible_cuda_gpus()  # light: simpletvm.targets imports TVM only when asked


def kind_for_name(name: str) -> ResourceKind:
    lowered = name.lower()
    if lowered == "cpu":
        return ResourceKind.CPU
    if lowered.startswith(("gpu", "cuda")):
        return ResourceKind.GPU
    if lowered.startswith(("cpu-device", "cpu-measure")):
        return ResourceKind.CPU_DEVICE
    return ResourceKind.DEVICE


def parse_resource(text: str) -> list[Resource]:
    """``cpu=8`` is a pool of 8 slots; ``gpu=2`` is gpu0 and gpu1; ``gpu0=1`` one device."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not _NAME.match(name):
        raise ValueError(f"resource {text!r} is not NAME=CAPACITY (e.g. cpu=8 or gpu=1)")
    try:
        capacity = int(raw)
    except ValueError:
        raise ValueError(f"resource {text!r}: capacity must be a whole number") from None
    kind = kind_for_name(name)
    check_int(f"resource {text!r}: capacity", capacity, 1,
              MAX_POOL if kind is ResourceKind.CPU else MAX_DEVICES)  # fmt: skip
    if kind is ResourceKind.CPU:
        return [Resource(name, kind, capacity, False)]
    if capacity == 1:
        return [Resource(name, kind, 1, True)]
    return [Resource(f"{name}{i}", kind, 1, True) for i in range(capacity)]


def detect(overrides: list[str] | dict[str, int] | None = None) -> list[Resource]:
    """Detected resources, with any override replacing the detected resource of that kind."""
    if isinstance(overrides, dict):
        overrides = [f"{k}={v}" for k, v in overrides.items()]
    given: list[Resource] = []
    for text in overrides or []:
        given += parse_resource(text)
    kinds = {r.kind for r in given}
    names = [r.name for r in given]
    if len(set(names)) != len(names):
        raise ValueError(f"resource names must be unique, got {', '.join(names)}")
    found = list(given)
    if ResourceKind.CPU not in kinds:
        found.append(Resource("cpu", ResourceKind.CPU, cpu_count(), False))
    if not kinds - {ResourceKind.CPU}:
        gpus = visible_gpus()
        if gpus:
            found += [Resource(f"gpu{i}", ResourceKind.GPU, 1, True) for i in range(gpus)]
        else:
            found.append(Resource("cpu-device", ResourceKind.CPU_DEVICE, 1, True))
    return found


def device_kind_of_target(target: TargetSpec) -> str | None:
    """Which local device kind a parsed or resolved target measures on: 'gpu' for a GPU
    kind, 'cpu-device' for a CPU one, None (any device) for any other kind."""
    if target.is_gpu:
        return ResourceKind.GPU.value
    if target.device_type == "cpu" or target.kind == "c":
        return ResourceKind.CPU_DEVICE.value
    return None


def device_kind_for_target(target: str) -> str | None:
    """``device_kind_of_target`` of a target as written: a name, a TVM tag such as
    ``nvidia/nvidia-a100``, or a JSON dict. Only the target's config is read: no device is
    queried (a CUDA target maps to 'gpu' without initialising CUDA). None if malformed."""
    try:
        return device_kind_of_target(parse_target(target))
    except (TargetError, KeyError):
        return None


def device_kind_for_mock(device: str) -> str | None:
    return {"gpu": ResourceKind.GPU.value, "cpu": ResourceKind.CPU_DEVICE.value}.get(device)
