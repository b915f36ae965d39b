"""The coverage round: a decent schedule for every task before any evolutionary search.

A task that no round reaches keeps TVM's default CPU loops, 10 to 80 times slower than a
parallel, vectorised schedule. The evolutionary search spends seconds per round, so a
small budget reached only a few tasks. A coverage round is cheap instead: it samples
schedules from the task's design space (MetaSchedule's ``ReplayTrace``: random decisions,
postprocessors applied), ranks them with the cost model, and measures the best few next
to the task's default schedule. The default's time is the bar a record must beat to be
applied (a parallel schedule of a tiny kernel can be slower than the plain loop).
"""

from __future__ import annotations

from typing import Any


def coverage_context(mod, target, *, task_name: str, threads: int, seed: int, samples: int,
                     database, cost_model):
    """A TuneContext whose strategy samples ``samples`` schedules per call."""
    from tvm.s_tir import meta_schedule as ms

    ctx = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                         search_strategy=ms.search_strategy.ReplayTrace(),
                         task_name=task_name, num_threads=threads, rand_state=seed)
    spaces = ctx.generate_design_space()
    ctx.search_strategy.pre_tuning(samples, samples, spaces, database, cost_model)
    return ctx


def ranked_samples(ctx, cost_model, keep: int, *, seeded=(), sample: bool = True) -> list[Any]:
    """The ``keep`` most promising of ``seeded`` (schedules transferred from similar
    workloads, transfer.py) and, with ``sample``, the strategy's random samples.

    Seeded schedules, each among the best of a similar workload, take at least half of
    the places: the ones the cost model scores highest (higher is faster), or in their
    given order while the model is untrained and its scores are noise. The other places
    go to the best-scored of the rest.
    """
    seeded = list(seeded)
    samples = list(ctx.search_strategy.generate_measure_candidates() or []) if sample else []
    if len(seeded) + len(samples) <= keep:
        return seeded + samples
    informed = cost_model is not None and getattr(cost_model, "informed", True)
    ranked_seeds = _by_score(ctx, cost_model, seeded) if informed else seeded
    first = ranked_seeds[:(keep + 1) // 2]
    rest = ranked_seeds[len(first):] + samples
    return first + _by_score(ctx, cost_model, rest)[:keep - len(first)]


def _by_score(ctx, cost_model, candidates: list) -> list:
    if cost_model is None or len(candidates) < 2:
        return candidates
    scores = [float(s) for s in cost_model.predict(ctx, candidates)]
    return [candidates[i] for i in sorted(range(len(candidates)), key=lambda i: -scores[i])]


def default_candidate(mod):
    """The task as TVM builds it with no schedule: the baseline a record must beat."""
    from tvm.s_tir import Schedule
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate

    return MeasureCandidate(Schedule(mod), ArgInfo.from_prim_func(mod["main"]))
