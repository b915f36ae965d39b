"""Schedule transfer: seed a task that has no records from workloads of the same structure.

Most tasks of a new model are new workloads, yet many differ from a tuned one only in
shape: the same fused operators (``conv2d + add + relu``) at another resolution or width.
Such a workload's best traces are good starting points. They are replayed on the new
workload; the decisions that depend on the shape (a tile split whose product is not the
new loop's extent) are sampled afresh, and the postprocessors check the result. The
survivors join the task's coverage round, where the cost model ranks them beside random
samples and the most promising are measured first (``TuningJob._coverage_search``).

Two workloads have the same structure when their TensorIR differs only in numbers
(extents, strides, constants): ``structure_key`` hashes the printed function with every
number replaced. The key is stored with each workload in the tuning database.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

# how many similar workloads to draw from, and how many of each one's best records
SOURCES = 4
PER_SOURCE = 8
_NUMBER = re.compile(r"(?<![A-Za-z_])\d+(?:\.\d+)?(?:e[-+]?\d+)?")
# sampling instructions whose decision is replayed as is when it still fits
_TILE = "SamplePerfectTile"
_KEEP_ON_RETRY = {"SampleCategorical"}  # unroll depth, vector width: no shape in them


def structure_key(mod) -> str:
    """A hash of the workload's TensorIR with every number erased (see module doc)."""
    text = _NUMBER.sub("#", mod.script(show_meta=False))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _fits_tiles(sch):
    """Keep a tile decision whose product is the loop's extent; re-sample the others."""

    def provider(inst, inputs, attrs, decision):
        if decision is None or inst.kind.name != _TILE:
            return decision
        extent = sch.get(inputs[0]).extent
        product = 1
        for factor in decision:
            product *= int(factor)
        return decision if hasattr(extent, "value") and product == extent.value else None

    return provider


def _resample_all_but_categorical(inst, inputs, attrs, decision):
    return decision if inst.kind.name in _KEEP_ON_RETRY else None


def replay(trace, mod, postprocs, *, seed: int):
    """The trace applied to ``mod`` and post-processed, or None where it cannot apply."""
    from tvm.s_tir import Schedule

    for attempt, make_provider in enumerate((_fits_tiles,
                                             lambda _sch: _resample_all_but_categorical)):
        sch = Schedule(mod, seed=1 + (seed + attempt) % (2**31 - 2))
        try:
            trace.apply_to_schedule(sch, remove_postproc=True,
                                    decision_provider=make_provider(sch))
            sch.enter_postproc()
            if all(p.apply(sch) for p in postprocs):
                return sch
        except Exception:  # noqa: BLE001 - TVM raises several error kinds for a bad replay
            continue
    return None


def transferred_candidates(database, ctx, mod, *, sources: int, per_source: int,
                           seed: int) -> list[Any]:
    """Candidates for ``mod`` replayed from the best records of similar workloads."""
    import tvm_ffi
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate

    postprocs = list(ctx.space_generator.postprocs)
    seen: set[int] = set()
    out = []
    for workload in database.similar_workloads(mod, limit=sources):
        for offset, record in enumerate(database.get_top_k(workload, per_source)):
            sch = replay(record.trace, mod, postprocs, seed=seed + offset)
            if sch is None:
                continue
            shash = int(tvm_ffi.structural_hash(sch.mod))
            if shash in seen:
                continue
            seen.add(shash)
            # in the layout the schedule rewrote the weights to, as MetaSchedule measures them
            out.append(MeasureCandidate(sch, ArgInfo.from_entry_func(sch.mod, remove_preproc=True)))
    return out
