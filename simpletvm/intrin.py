"""Import only the tensor intrinsics a target needs.

``import tvm.s_tir.tensor_intrin`` costs about 20 s here, 16 s of it registering CUDA
intrinsics, and ``TuneContext`` and TVM's ``default_build`` both trigger it even on an
llvm target. We register the package as an empty module first and import just the
submodules for the target kind, so the later ``import tvm.s_tir.tensor_intrin`` is free.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_PACKAGE = "tvm.s_tir.tensor_intrin"
_BY_KIND = {
    "llvm": ("x86", "arm_cpu", "riscv_cpu"),
    "cuda": ("cuda",),
    "rocm": ("rocm",),
    "metal": ("metal",),
}
_loaded: set[str] = set()


def _install_empty_package() -> types.ModuleType:
    existing = sys.modules.get(_PACKAGE)
    if existing is not None:
        return existing
    import tvm.s_tir  # noqa: F401 - the parent package must exist first

    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.submodule_search_locations is None:  # pragma: no cover
        raise ImportError(f"{_PACKAGE} not found in this TVM build")
    package = types.ModuleType(_PACKAGE)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    package.__package__ = _PACKAGE
    sys.modules[_PACKAGE] = package
    sys.modules["tvm.s_tir"].tensor_intrin = package
    return package


def load_intrinsics(kind: str) -> None:
    """Register the tensor intrinsics for one target kind (idempotent, cheap if done)."""
    if kind in _loaded:
        return
    _install_empty_package()
    for sub in _BY_KIND.get(kind, ()):
        importlib.import_module(f"{_PACKAGE}.{sub}")
    _loaded.add(kind)


def preload(kind: str) -> None:
    """Import TVM, MetaSchedule and the target's intrinsics: what a forked worker reuses."""
    import tvm  # noqa: F401
    import tvm.relax  # noqa: F401
    import tvm.s_tir.meta_schedule  # noqa: F401

    load_intrinsics(kind)
