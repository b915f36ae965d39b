"""A MetaSchedule builder whose worker processes live across rounds.

TVM's ``LocalBuilder`` starts a new process pool for every batch, and each new worker
imports all tensor intrinsics (about 20 s here) before its first build. Our workers
import TVM and the target's intrinsics once, then serve builds until they have done
``max_uses`` of them (bounding the memory leak that made TVM restart its pool). Each
candidate still runs in a worker process, so a crash or a timeout costs only that
candidate: TVM's ``PopenWorker`` kills a timed-out worker and starts a fresh one.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind


def _initialize_worker(target_kind: str) -> None:
    """Runs once in each fresh worker: import what building for this target needs."""
    from simpletvm.intrin import preload

    preload(target_kind)
    import tvm.driver  # noqa: F401
    import tvm.s_tir.transform  # noqa: F401


def _build_one(mod, target, artifact_dir: str) -> str:
    """Compile one candidate and export it as a shared library ready to load."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    with target:  # the GPU architecture from the target, not from the device (compile.py)
        rt_mod = tvm_build(mod, target=target)
    out_dir = tempfile.mkdtemp(prefix="cand-", dir=artifact_dir)
    # a unique file name: an RPC server loads uploads by name, and dlopen caches by path
    path = os.path.join(out_dir, os.path.basename(out_dir) + ".so")
    rt_mod.export_library(path)
    return path


@derived_object
class PersistentBuilder(PyBuilder):
    """Builds candidates in long-lived worker processes (see module docstring)."""

    def __init__(self, *, target_kind: str, max_workers: int = 1, timeout_sec: float = 30.0,
                 max_uses: int = 256, artifact_dir: str | None = None) -> None:
        super().__init__()
        self.max_workers = max_workers
        self.timeout_sec = timeout_sec
        self.artifact_dir = artifact_dir or tempfile.mkdtemp(prefix="simpletvm-build-")
        self._owns_dir = artifact_dir is None
        self._pool = PopenPoolExecutor(
            max_workers=max_workers,
            timeout=timeout_sec,
            initializer=_initialize_worker,
            initargs=(target_kind,),
            maximum_process_uses=max_uses,
        )

    def warm_up(self) -> None:
        """Start every worker now, so the first round's build is not charged start-up."""
        futures = [self._pool.submit(os.getpid) for _ in range(self.max_workers)]
        for future in futures:
            future.result()

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        results: list[BuilderResult] = []
        args = [(inp.mod, inp.target, self.artifact_dir) for inp in build_inputs]
        for item in self._pool.map_with_error_catching(lambda a: _build_one(*a), args):
            if item.status == StatusKind.COMPLETE:
                results.append(BuilderResult(item.value, None))
            elif item.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(
                    None, f"PersistentBuilder: Timeout, killed after {self.timeout_sec} seconds"))
            else:
                results.append(BuilderResult(
                    None, "PersistentBuilder: An exception occurred\n" + str(item.value)))
        return results

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)
        if self._owns_dir:
            shutil.rmtree(self.artifact_dir, ignore_errors=True)
