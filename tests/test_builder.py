"""The persistent builder: workers survive across rounds, failures stay per candidate."""

import pytest

from .tvm_helpers import tiny_task

pytestmark = pytest.mark.slow


def _candidates(n):
    from tvm.s_tir.meta_schedule.builder import BuilderInput

    tiny = tiny_task()
    target = tiny.spec.tvm_target()
    return [BuilderInput(tiny.schedule.mod, target) for _ in range(n)], target, tiny.relax_mod


def _worker_pids(builder):
    return {w._proc.pid for w in builder._pool._worker_map.values() if w._proc is not None}


def test_workers_persist_and_recycle():
    from simpletvm.builder import PersistentBuilder

    inputs, _, _ = _candidates(3)
    builder = PersistentBuilder(target_kind="llvm", max_workers=1, max_uses=4)
    try:
        builder.warm_up()
        first = _worker_pids(builder)
        results = builder.build(inputs)
        assert all(r.error_msg is None for r in results)
        assert _worker_pids(builder) == first  # 1 warm-up + 3 builds: the same process
        builder.build(inputs[:1])  # the 5th use exceeds max_uses: a fresh worker
        assert _worker_pids(builder) != first
    finally:
        builder.shutdown()


def test_a_failing_candidate_does_not_fail_the_batch():
    from tvm.s_tir.meta_schedule.builder import BuilderInput

    from simpletvm.builder import PersistentBuilder

    inputs, target, relax_mod = _candidates(2)
    bad = BuilderInput(relax_mod, target)  # a Relax module, not TIR: its build fails
    builder = PersistentBuilder(target_kind="llvm", max_workers=1)
    try:
        results = builder.build([inputs[0], bad, inputs[1]])
        assert results[0].error_msg is None and results[2].error_msg is None
        assert results[1].error_msg.startswith("PersistentBuilder:")
    finally:
        builder.shutdown()
