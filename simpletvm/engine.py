"""The stage-by-stage tuning engine: one model's MetaSchedule tuning as explicit stages.

MetaSchedule's ``tune_relax`` runs search, build, measure and update inside one C++
loop, so nobody outside can decide when the device is measured. ``TuningJob`` drives
the same components (TuneContext, EvolutionarySearch, a builder, a runner, the cost
model, the database) one stage per ``run_stage`` call, so a scheduler can interleave
stages of many jobs. State between stages lives in memory; tuning records go to the
SQLite database as soon as they are measured, which is what a restarted job resumes from.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import model as model_mod
from .coverage import coverage_context, default_candidate, ranked_samples
from .intrin import load_intrinsics
from .intrin import preload as _preload
from .options import TuningOptions, conv_layout_for
from .pg import is_url
from .plan import TuningPlan, default_trials, make_plan
from .remote import (
    DeviceUnavailable,
    RemoteDevice,
    collect_results,
    discard_pool,
    make_rpc_runner,
)
from .stages import CPU, DEVICE, StageKind, StageOutcome, StageRequest
from .targets import TargetSpec, host_cores, parse_target, resolve_target
from .taskalloc import GradientAllocator, TaskState

__all__ = ["TuningOptions", "TuningJob", "DeviceUnavailable", "preload"]


def preload(target: str = "llvm") -> None:
    """Import TVM and the target's intrinsics now, so forked children start warm."""
    _preload(parse_target(target).kind)


@dataclass
class _Round:
    task: TaskState
    coverage: bool = False  # a coverage round (see coverage.py), not an evolutionary one
    started: float = 0.0
    candidates: list = field(default_factory=list)
    default: Any = None  # the task's default schedule, measured beside the candidates
    builder_results: list = field(default_factory=list)
    runner_results: list = field(default_factory=list)

    @property
    def batch(self) -> list:
        """What is built and measured: the default schedule first, if any."""
        return ([self.default] if self.default is not None else []) + self.candidates


# no budget in trials (a time budget alone): progress reports 0 as the total. The
# largest C++ int: MetaSchedule's search strategies take their trial count as one
UNBOUNDED_TRIALS = 2**31 - 1
# tries of a coverage round's sampling (see TuningJob._coverage_candidates)
COVERAGE_ATTEMPTS = 3


class TuningJob:
    """One model's tuning. Drive it with ``next_stage()`` / ``run_stage()``."""

    def __init__(self, onnx_model, inputs: list[model_mod.InputSpec], target: TargetSpec, *,
                 options: TuningOptions, db_path: str | Path | None = None,
                 output: str | Path | None = None, name: str = "model",
                 job_tag: str | None = None, measure_baselines: bool = True) -> None:
        self.onnx_model = onnx_model
        self.inputs = inputs
        self.target = target
        self.options = options.validate().resolved(
            cores=int(target.config.get("num-cores") or host_cores()))
        self.db_path = str(db_path) if db_path else None
        self.output = str(output) if output else None
        self.name = name
        self.job_tag = job_tag
        self.measure_baselines = measure_baselines
        self.stage_seconds: dict[str, float] = {}
        self.convergence: list[dict[str, float]] = []
        self.served: dict[str, int] = {"tasks": 0, "records": 0}
        self._next: StageKind | None = StageKind.PREPARE
        self._round: _Round | None = None
        self._tasks: list[TaskState] = []
        self._contexts: list[Any] = []
        self._result: dict[str, Any] = {}
        self._compiled = None  # the compile stage's models, until finalize times them
        self.executable = None  # the tuned model, once compiled
        self._started: float | None = None
        self._rounds_since_evaluate = 0
        self.stop_reason: str | None = None
        self.sla_history: list[dict[str, float]] = []
        # CPU targets let MetaSchedule choose the weights' layout (compile folds it)
        self.layout_rewrite = self.options.layout_rewrite and not target.is_gpu
        self.trials = 0  # the trial budget, sized at prepare when the options leave it unset
        self.plan: TuningPlan | None = None
        self.relax_mod = None  # the module tuned and built (Winograd rewritten, on a CPU)
        self.base_mod = None  # before that rewrite: what the untuned baseline builds
        self.winograd_convs = 0
        self.database = None
        self.allocator: GradientAllocator | None = None
        self.cost_model = None
        self.builder = None
        self.runner = None
        self._rpc_runners: dict[RemoteDevice, Any] = {}
        self._coverage_contexts: dict[int, Any] = {}
        self._round_seconds: dict[bool, list[float]] = {True: [], False: []}
        self._grant: dict[str, Any] = {}
        self.coverage = {"tasks": 0, "candidates": 0}
        # schedule transfer (transfer.py): per task index, candidates replayed from
        # workloads of the same structure; counted as tasks seeded, candidates, measured
        self._transferred: dict[int, list] = {}
        self.transfer = {"tasks": 0, "candidates": 0, "measured": 0}
        self._apply_transferred = False  # an SLA build with them met the SLA
        self.kept_default: list[str] = []  # tasks whose records lost to their default

    @classmethod
    def from_model(cls, model_path: str | Path, *, target: str = "llvm",
                   options: TuningOptions | None = None, db_path: str | Path | None = None,
                   output: str | Path | None = None,
                   input_shapes: dict[str, tuple[int, ...]] | None = None,
                   job_tag: str | None = None, measure_baselines: bool = True) -> TuningJob:
        """Validate everything cheap up front, so bad input fails before any stage runs."""
        from .compile import check_writable
        from .database import connect

        onnx_model = model_mod.load_onnx(model_path)
        inputs = model_mod.model_inputs(onnx_model, input_shapes)
        model_mod.check_operators(onnx_model)
        spec = resolve_target(target)
        options = (options or TuningOptions()).validate()
        if db_path:
            if not is_url(str(db_path)):  # a postgresql:// URL: the server checks
                check_writable(db_path, "tuning database")
            connect(db_path).close()
        if output:
            check_writable(output, "output")
        return cls(onnx_model, inputs, spec, options=options, db_path=db_path, output=output,
                   name=Path(model_path).stem, job_tag=job_tag,
                   measure_baselines=measure_baselines)

    # ---- the stage contract
    def next_stage(self) -> StageRequest | None:
        if self._next is None:
            return None
        opts = self.options
        needs = {
            StageKind.PREPARE: {CPU: 1},
            StageKind.SEARCH: {CPU: opts.search_threads},
            StageKind.BUILD: {CPU: opts.builder_workers},
            StageKind.MEASURE: {DEVICE: 1},
            StageKind.UPDATE: {CPU: 1},
            StageKind.EVALUATE: {CPU: 1, DEVICE: 1},
            StageKind.COMPILE: {CPU: 1},
            StageKind.FINALIZE: {CPU: 1, DEVICE: 1},
        }[self._next]
        rounds_done = sum(t.rounds for t in self._tasks)
        planned = -(-self.trials // opts.per_round) if self.trials < UNBOUNDED_TRIALS else 0
        info = {"target": self.target.kind,
                # round hints: the predictive strategy estimates remaining work from them
                "round": rounds_done + 1,
                "rounds": max(rounds_done + 1, planned)}
        if self._round is not None:
            info.update(task=self._round.task.name, candidates=len(self._round.batch),
                        coverage=self._round.coverage)
        return StageRequest(self._next, needs, info)

    def run_stage(self, *, grant: dict[str, Any] | None = None) -> StageOutcome:
        kind = self._next
        if kind is None:
            raise RuntimeError("the job is finished; there is no stage to run")
        start = time.perf_counter()
        self._started = self._started or time.time()
        self._grant = grant or {}
        self._stage_methods()[kind]()
        seconds = time.perf_counter() - start
        self.stage_seconds[kind.value] = self.stage_seconds.get(kind.value, 0.0) + seconds
        if self._result:
            self._result["stage_seconds"] = dict(self.stage_seconds)
        progress = self.progress()
        return StageOutcome(kind, seconds, progress["trials_done"], progress["trials_total"],
                            progress["best_latency_ms"],
                            {"task": progress["current_task"]})

    def _stage_methods(self) -> dict[StageKind, Any]:
        return {StageKind.PREPARE: self._prepare, StageKind.SEARCH: self._search,
                StageKind.BUILD: self._build, StageKind.MEASURE: self._measure,
                StageKind.UPDATE: self._update, StageKind.EVALUATE: self._evaluate,
                StageKind.COMPILE: self._compile, StageKind.FINALIZE: self._finalize}

    def run_all(self, on_stage=None) -> TuningJob:
        """Run every stage back to back (what ``simpletvm tune`` does)."""
        while self.next_stage() is not None:
            outcome = self.run_stage()
            if on_stage is not None:
                on_stage(outcome, self)
        return self

    def progress(self) -> dict[str, Any]:
        done = sum(t.trials_done for t in self._tasks)
        estimate = self.estimated_latency_ms()
        total = self.trials if self.trials < UNBOUNDED_TRIALS else 0
        return {"trials_done": done, "trials_total": total,
                "best_latency_ms": self._result.get("tuned_ms", estimate),
                "current_task": self._round.task.name if self._round else None,
                "stage": self._next.value if self._next else "done",
                "elapsed_seconds": time.time() - self._started if self._started else 0.0,
                "time_budget_seconds": self.options.time_budget_seconds,
                "sla_ms": self.options.sla_ms,
                "model_ms": self.sla_history[-1]["latency_ms"] if self.sla_history else None,
                "trend": [round(h["latency_ms"], 4) for h in self.sla_history[-5:]]}

    def result(self) -> dict[str, Any]:
        return dict(self._result)

    def estimated_latency_ms(self) -> float | None:
        """Sum over tasks of weight x the kernel time the build will use (tasks measured
        so far: their best record, or their default schedule where that is faster)."""
        known = []
        for t in self._tasks:
            times = [x for x in (t.best, t.default_secs) if x is not None and x < 1e9]
            if times:
                known.append((t.weight, min(times)))
        return sum(w * b for w, b in known) * 1e3 if known else None

    @property
    def tasks(self) -> list[TaskState]:
        return list(self._tasks)

    # ---- stages
    def _prepare(self) -> None:
        from tvm.s_tir import meta_schedule as ms

        from .compile import prepare_module, tuning_module
        from .database import SQLiteDatabase

        load_intrinsics(self.target.kind)
        target = self.target.tvm_target()
        relax_mod = model_mod.to_relax(self.onnx_model, self.inputs)
        self.base_mod = prepare_module(relax_mod, self.target,
                                       conv_layout=self.options.conv_layout)
        self.relax_mod, self.winograd_convs = tuning_module(
            self.base_mod, self.target, winograd=self.options.winograd)
        # weights (constants) may take the layout a schedule picks, on a CPU
        fused = model_mod.fuse_for_tuning(self.relax_mod, target,
                                          layout_rewrite=self.layout_rewrite)
        extracted = ms.relax_integration.extract_tasks(fused, target)
        self.database = (SQLiteDatabase(self.db_path, target_key=self.target.key,
                                        job_tag=self.job_tag)
                         if self.db_path else ms.database.MemoryDatabase())
        for index, task in enumerate(extracted):
            self._tasks.append(self._task_state(index, task))
            self._contexts.append((task, task.dispatched[0]))
        opts = self.options
        if opts.trials is not None:
            self.trials = opts.trials
        elif opts.time_budget_seconds is not None:
            self.trials = UNBOUNDED_TRIALS
        else:
            self.trials = default_trials(self._tasks, opts)
        self.plan = make_plan(self._tasks, opts, min(self.trials, UNBOUNDED_TRIALS),
                              winograd_convs=self.winograd_convs)
        self.allocator = GradientAllocator(self._tasks, seed=opts.seed)
        if self.trials > 0 and any(t.active for t in self._tasks):
            self._setup_tuning(ms, target)
        if opts.sla_ms is not None:
            self._next = StageKind.EVALUATE  # the database may already meet the SLA
            return
        self._advance_after_update()

    def _task_state(self, index: int, task) -> TaskState:
        from tvm.s_tir.analysis import estimate_tir_flops

        opts = self.options
        mod = task.dispatched[0]
        try:
            flops = float(estimate_tir_flops(mod))
        except Exception:  # noqa: BLE001 - some functions have no countable loops
            flops = 0.0
        state = TaskState(index, task.task_name, float(task.weight),
                          max_trials=opts.max_trials_per_task or UNBOUNDED_TRIALS, flops=flops)
        if opts.only_tasks is not None and index not in opts.only_tasks:
            state.terminated = True
        if not self.db_path:
            return state
        existing = self.database.count_records(mod)
        if existing:
            self.served["tasks"] += 1
            self.served["records"] += existing
            if opts.reuse:
                state.terminated = True
        if self.job_tag:
            state.trials_done = self.database.count_records(mod, job_tag=self.job_tag)
            state.covered = state.trials_done > 0
        best = self.database.best_seconds(mod)
        if best is not None:
            state.best_history.append(best)
        state.default_secs = self.database.default_seconds(mod)
        return state

    def _setup_tuning(self, ms, target) -> None:
        from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, LocalRunner

        from .builder import PersistentBuilder

        opts = self.options
        if opts.cost_model == "xgb":
            from .costmodel import SharedCostModel, SharedModelStore

            store = SharedModelStore(self.db_path, self.target.key) if self.db_path else None
            self.cost_model = SharedCostModel(threads=opts.search_threads, store=store,
                                              use_shared=opts.shared_model,
                                              train_every=opts.shared_model_every)
        else:
            self.cost_model = ms.cost_model.RandomModel(seed=opts.seed)
        contexts = []
        for state, (task, mod) in zip(self._tasks, self._contexts):
            if self.db_path:
                self.database.commit_workload(mod)
                self.database.name_workload(mod, task.task_name)
            if not state.active:
                contexts.append(None)
                continue
            strategy = ms.search_strategy.EvolutionarySearch(
                population_size=opts.population_size,
                init_min_unmeasured=min(opts.init_min_unmeasured, opts.population_size),
                genetic_num_iters=opts.genetic_num_iters)
            ctx = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                                 search_strategy=strategy, task_name=task.task_name,
                                 num_threads=opts.search_threads,
                                 rand_state=opts.seed * 1000 + state.index + 1)
            spaces = ctx.generate_design_space()
            ctx.search_strategy.pre_tuning(min(state.max_trials, self.trials), opts.per_round,
                                           spaces, self.database, self.cost_model)
            self._warm_cost_model(ctx, mod)
            contexts.append(ctx)
        self._contexts = [(c, m) for c, (_, m) in zip(contexts, self._contexts)]
        self.builder = PersistentBuilder(target_kind=self.target.kind,
                                         max_workers=opts.builder_workers,
                                         timeout_sec=opts.builder_timeout,
                                         max_uses=opts.builder_max_uses)
        self.builder.warm_up()
        self.runner = LocalRunner(
            timeout_sec=opts.runner_timeout,
            evaluator_config=EvaluatorConfig(number=opts.number, repeat=opts.repeat,
                                             min_repeat_ms=opts.min_repeat_ms,
                                             enable_cpu_cache_flush=False))

    def _warm_cost_model(self, ctx, mod) -> None:
        """Train the cost model on records already in the database for this task."""
        if not self.db_path or not self.database.has_workload(mod):
            return
        from tvm.s_tir.meta_schedule.database import Workload
        from tvm.s_tir.meta_schedule.runner import RunnerResult

        records = self.database.get_top_k(Workload(mod), 256)
        if not records:
            return
        candidates = [r.as_measure_candidate() for r in records]
        results = [RunnerResult(list(r.run_secs), None) for r in records]
        # old records are in the shared model's data already: not stored again
        getattr(self.cost_model, "warm", self.cost_model.update)(ctx, candidates, results)

    def _budget_left(self) -> int:
        return self.trials - sum(t.trials_done for t in self._tasks)

    def _search(self) -> None:
        rnd = self._round
        if rnd.coverage:
            self._coverage_search(rnd)
            return
        ctx, _ = self._contexts[rnd.task.index]
        candidates = ctx.search_strategy.generate_measure_candidates()
        if not candidates:
            rnd.task.terminated = True
            ctx.search_strategy.post_tuning()
            self._round = None
            self._advance_after_update()
            return
        rnd.candidates = list(candidates)[:max(self._budget_left(), 0)]
        if self._wants_default(rnd.task):
            rnd.default = default_candidate(self._contexts[rnd.task.index][1])
        self._next = StageKind.BUILD

    def _coverage_search(self, rnd: _Round) -> None:
        task, opts = rnd.task, self.options
        _, mod = self._contexts[task.index]
        keep = min(opts.coverage_measured, max(self._budget_left(), 0))
        if keep > 0:
            seeded = self._transfer_for(task)
            rnd.candidates = self._coverage_candidates(task, keep, seeded)
            measured = sum(1 for c in rnd.candidates if any(c is s for s in seeded))
            self.transfer["measured"] += measured
        if self._wants_default(task):
            rnd.default = default_candidate(mod)
        if not rnd.batch:
            task.covered = True
            self._round = None
            self._advance_after_update()
            return
        self._next = StageKind.BUILD

    def _coverage_candidates(self, task: TaskState, keep: int, seeded: list) -> list:
        """The coverage round's candidates. MetaSchedule's ReplayTrace fails a whole batch
        when one sampled trace cannot be replayed (seen on Winograd's data pack: 5 of 20
        seeds of 64 samples), so a failed batch is sampled again with other seeds, and
        after three failures the round measures the transferred schedules alone."""
        for attempt in range(COVERAGE_ATTEMPTS):
            try:
                return ranked_samples(self._coverage_context(task, attempt=attempt),
                                      self.cost_model, keep, seeded=seeded)
            except RuntimeError:
                continue
        return ranked_samples(self._coverage_context(task), self.cost_model, keep,
                              seeded=seeded, sample=False)

    def _wants_default(self, task: TaskState) -> bool:
        """Measure the task's default schedule once, on a CPU. On a GPU the untuned
        build is DLight's, not the unscheduled function (which does not build there)."""
        return task.default_secs is None and not self.target.is_gpu

    def _coverage_context(self, task: TaskState, *, attempt: int = 0):
        """The task's coverage context; ``attempt`` > 0 makes a fresh one with another seed
        (``_coverage_search`` retries when a sampled schedule could not be replayed)."""
        if task.index not in self._coverage_contexts or attempt:
            opts = self.options
            _, mod = self._contexts[task.index]
            self._coverage_contexts[task.index] = coverage_context(
                mod, self.target.tvm_target(), task_name=task.name,
                threads=opts.search_threads,
                seed=opts.seed * 1000 + task.index + 7 + 100_003 * attempt,
                samples=opts.coverage_samples, database=self.database,
                cost_model=self.cost_model)
        return self._coverage_contexts[task.index]

    def _transfer_for(self, task: TaskState) -> list:
        """Candidates replayed from similar workloads, for a task with no records of its
        own (computed once per task; empty when transfer is off or finds nothing)."""
        if task.index in self._transferred:
            return self._transferred[task.index]
        found: list = []
        if self.options.transfer and self.db_path and task.best is None:
            from .transfer import PER_SOURCE, SOURCES, transferred_candidates

            _, mod = self._contexts[task.index]
            found = transferred_candidates(self.database, self._coverage_context(task), mod,
                                           sources=SOURCES, per_source=PER_SOURCE,
                                           seed=self.options.seed * 1000 + task.index)
            if found:
                self.transfer["tasks"] += 1
                self.transfer["candidates"] += len(found)
        self._transferred[task.index] = found
        return found

    def _round_context(self, rnd: _Round):
        if rnd.coverage:
            return self._coverage_contexts.get(rnd.task.index) or self._contexts[rnd.task.index][0]
        return self._contexts[rnd.task.index][0]

    def _build(self) -> None:
        from tvm.s_tir.meta_schedule.builder import BuilderInput

        target = self.target.tvm_target()
        inputs = [BuilderInput(c.sch.mod, target) for c in self._round.batch]
        self._round.builder_results = self.builder.build(inputs)
        self._next = StageKind.MEASURE

    def _measure(self) -> None:
        from tvm.s_tir.meta_schedule.runner import RunnerInput, RunnerResult

        batch = self._round.batch
        ok = [(i, r) for i, r in enumerate(self._round.builder_results) if r.error_msg is None]
        inputs = [RunnerInput(r.artifact_path, self.target.device_type, batch[i].args_info)
                  for i, r in ok]
        remote = self._remote_device()
        runner = self._rpc_runner(remote) if remote else self.runner
        futures = runner.run(inputs) if inputs else []
        results = [RunnerResult(None, r.error_msg) for r in self._round.builder_results]
        collected = (collect_results(futures, remote, on_wedged=self._drop_rpc_runner)
                     if remote else [f.result() for f in futures])
        for (i, _), result in zip(ok, collected):
            results[i] = result
        if remote and inputs and all(results[i].run_secs is None for i, _ in ok):
            reason = remote.probe()
            if reason is not None:
                # leave the job at this measure stage: the scheduler re-grants elsewhere
                raise DeviceUnavailable(remote.label, reason)
        self._round.runner_results = results
        self._next = StageKind.UPDATE

    def _remote_device(self) -> RemoteDevice | None:
        rpc_grant = self._grant.get("rpc") if self._grant else None
        return RemoteDevice.from_grant(rpc_grant) if rpc_grant else None

    def _drop_rpc_runner(self, device: RemoteDevice) -> None:
        runner = self._rpc_runners.pop(device, None)
        if runner is not None:
            discard_pool(runner.pool)

    def _rpc_runner(self, device: RemoteDevice):
        from tvm.s_tir.meta_schedule.runner import EvaluatorConfig

        if device not in self._rpc_runners:
            opts = self.options
            self._rpc_runners[device] = make_rpc_runner(device, EvaluatorConfig(
                number=opts.number, repeat=opts.repeat, min_repeat_ms=opts.min_repeat_ms,
                enable_cpu_cache_flush=False))
        return self._rpc_runners[device]

    def _update(self) -> None:
        from tvm.s_tir.meta_schedule.database import TuningRecord

        from .database import FAILED_RUN_SECS

        rnd = self._round
        ctx = self._round_context(rnd)
        _, mod = self._contexts[rnd.task.index]
        results = list(rnd.runner_results)
        if rnd.default is not None:
            self._record_default(rnd.task, mod, results.pop(0))
        workload = self.database.commit_workload(mod)
        best = rnd.task.best
        for cand, res in zip(rnd.candidates, results):
            run_secs = list(res.run_secs) if res.run_secs is not None else [FAILED_RUN_SECS]
            self.database.commit_tuning_record(TuningRecord(
                cand.sch.trace, workload, run_secs, ctx.target, cand.args_info))
            if res.run_secs is not None:
                mean = sum(float(s) for s in res.run_secs) / len(res.run_secs)
                best = mean if best is None else min(best, mean)
        if rnd.candidates:
            ctx.search_strategy.notify_runner_results(rnd.candidates, results)
            self.cost_model.update(ctx, rnd.candidates, results)
        for res in rnd.builder_results:
            if res.artifact_path:
                shutil.rmtree(os.path.dirname(res.artifact_path), ignore_errors=True)
        rnd.task.trials_done += len(rnd.candidates)
        rnd.task.rounds += 1
        if rnd.coverage:
            rnd.task.covered = True
            self.coverage["tasks"] += 1
            self.coverage["candidates"] += len(rnd.candidates)
        self._rounds_since_evaluate += 1
        rnd.task.best_history.append(best if best is not None else FAILED_RUN_SECS)
        self._round_seconds[rnd.coverage].append(time.time() - rnd.started)
        self.convergence.append({"trials": sum(t.trials_done for t in self._tasks),
                                 "seconds": time.time() - self._started,
                                 "best_ms": self.estimated_latency_ms(),
                                 # every task measured: the estimate is the whole model's
                                 "complete": all(t.best is not None or t.default_secs
                                                 is not None for t in self._tasks)})
        self._round = None
        self._advance_after_update()

    def _record_default(self, task: TaskState, mod, result) -> None:
        from .database import FAILED_RUN_SECS

        if result.run_secs is None:
            task.default_secs = FAILED_RUN_SECS  # it failed to run: any record beats it
            return
        task.default_secs = sum(float(s) for s in result.run_secs) / len(result.run_secs)
        if self.db_path:
            self.database.record_default_seconds(mod, task.default_secs)

    def apply_database(self, *, transferred: bool = False):
        """The records the build applies: each task's best, where it beats the default
        schedule (``compile.records_to_apply``); remembers the tasks left at default.
        With ``transferred``, a task with no records of its own takes its most promising
        transferred schedule (an SLA build, measured as a whole before it is kept)."""
        from .compile import records_to_apply

        defaults = [t.default_secs for t in self._tasks]
        chosen, kept = records_to_apply(self.database, [m for _, m in self._contexts],
                                        defaults)
        self.kept_default = [self._tasks[i].name for i in kept]
        if transferred:
            self._add_transferred(chosen)
        return chosen

    def _add_transferred(self, chosen) -> None:
        from tvm.s_tir.meta_schedule.database import TuningRecord

        from .coverage import ranked_samples

        target = self.target.tvm_target()
        for task in self._tasks:
            if task.best is not None or task.terminated:
                continue
            seeded = self._transfer_for(task)
            if not seeded:
                continue
            best = ranked_samples(self._coverage_context(task), self.cost_model, 1,
                                  seeded=seeded, sample=False)[0]
            _, mod = self._contexts[task.index]
            # unmeasured here: the one record of its workload, so its time orders nothing
            chosen.commit_tuning_record(TuningRecord(
                best.sch.trace, chosen.commit_workload(mod), [1.0], target, best.args_info))

    def _evaluate(self) -> None:
        """Build the whole model from the database and measure it against the SLA."""
        from . import bench
        from .compile import compile_tuned
        from .model import random_inputs

        with_transfer = self.options.transfer and self.db_path is not None
        executable = compile_tuned(self.relax_mod, self.target,
                                   self.apply_database(transferred=with_transfer),
                                   layout_rewrite=self.layout_rewrite)
        stats = bench.bench_tvm(executable, self.target.device_type,
                                random_inputs(self.inputs, seed=self.options.seed), repeat=10)
        self.sla_history.append({"trials": sum(t.trials_done for t in self._tasks),
                                 "seconds": time.time() - self._started,
                                 "latency_ms": stats.median_ms})
        if stats.median_ms <= self.options.sla_ms:
            self.stop_reason = "sla met"
            self._apply_transferred = with_transfer
            self._next = StageKind.COMPILE
            return
        self._advance_after_update(evaluated=True)

    def _deadline_passed(self) -> bool:
        deadline = self.options.deadline_seconds
        return deadline is not None and time.time() - self._started >= deadline

    def _time_left_for(self, coverage: bool) -> bool:
        """Whether a round of this kind fits in what is left of the time budget."""
        budget = self.options.time_budget_seconds
        if budget is None or self._started is None:
            return True
        past = self._round_seconds[coverage]
        typical = sorted(past)[len(past) // 2] if past else 0.0
        return time.time() - self._started + typical <= budget

    def _next_round(self) -> _Round | None:
        """Coverage rounds first, heaviest task first; then the gradient rule."""
        opts = self.options
        if opts.coverage_measured > 0 and opts.coverage_samples > 0:
            pending = [t for t in self._tasks if t.active and not t.covered
                       and self._contexts[t.index][0] is not None]
            if pending:
                task = max(pending, key=lambda t: (t.weight * t.flops, -t.index))
                if not self._time_left_for(True):
                    self.stop_reason = "time budget"
                    return None
                return _Round(task, coverage=True, started=time.time())
        task = self.allocator.next_task()
        if task is None or self._contexts[task.index][0] is None:
            self.stop_reason = self.stop_reason or "search space exhausted"
            return None
        if not self._time_left_for(False):
            self.stop_reason = "time budget"
            return None
        return _Round(task, started=time.time())

    def _advance_after_update(self, *, evaluated: bool = False) -> None:
        sla = self.options.sla_ms is not None
        if sla and not evaluated and self._rounds_since_evaluate >= self.options.evaluate_every:
            self._rounds_since_evaluate = 0
            self._next = StageKind.EVALUATE
            return
        if self._deadline_passed():
            self.stop_reason = "deadline"
        elif self._budget_left() > 0 and self.trials > 0:
            self._round = self._next_round()
            if self._round is not None:
                self._next = StageKind.SEARCH
                return
        else:
            self.stop_reason = self.stop_reason or "budget"
        if sla and not evaluated and self._rounds_since_evaluate > 0:
            self._rounds_since_evaluate = 0
            self._next = StageKind.EVALUATE  # measure the last rounds before stopping
            return
        self._next = StageKind.COMPILE

    def _compile(self) -> None:
        from .finalize import compile_models

        self._shutdown_workers()  # no candidate is built or measured after this
        self._compiled = compile_models(self.relax_mod, self.target,
                                        self.apply_database(
                                            transferred=self._apply_transferred),
                                        layout_rewrite=self.layout_rewrite,
                                        output=self.output, inputs=self.inputs,
                                        untuned=self.measure_baselines,
                                        untuned_mod=self.base_mod)
        self.executable = self._compiled.tuned
        self._next = StageKind.FINALIZE

    def _finalize(self) -> None:
        from .finalize import FINAL_STAGES, sla_summary, time_and_export

        timed = time_and_export(self._compiled, onnx_model=self.onnx_model,
                                inputs=self.inputs, target=self.target, options=self.options,
                                baselines=self.measure_baselines)
        self.executable = self._compiled.exported
        self._compiled = None
        self._next = None
        tuning = sum(v for k, v in self.stage_seconds.items() if k not in FINAL_STAGES)
        self._result = {
            **sla_summary(self.options.sla_ms, self.sla_history, timed["tuned_ms"],
                          self.stop_reason),
            "model": self.name, "target": self.target.kind,
            # the resolved target (-mcpu, cores): figures from other machines compare by it
            "target_config": dict(self.target.config), **timed,
            "trials": sum(t.trials_done for t in self._tasks), "tasks": len(self._tasks),
            "tasks_kept_default": list(self.kept_default), "coverage": dict(self.coverage),
            "winograd_convs": self.winograd_convs,
            "conv_layout": conv_layout_for(self.options.conv_layout, gpu=self.target.is_gpu),
            "transfer": dict(self.transfer), "shared_model": self._shared_model_summary(),
            "plan": self.plan.as_dict() if self.plan else None,
            "stop_reason": self.stop_reason, "served_from_db": dict(self.served),
            "tuning_seconds": tuning, "stage_seconds": dict(self.stage_seconds),
            "convergence": list(self.convergence)}

    def _shared_model_summary(self) -> dict:
        summary = getattr(self.cost_model, "summary", None)
        return summary() if summary else {"enabled": False, "loaded_records": 0,
                                           "load_seconds": 0.0, "trainings": []}

    def _shutdown_workers(self) -> None:
        if self.builder is not None:
            self.builder.shutdown()
        for runner in [self.runner, *self._rpc_runners.values()]:
            if runner is not None:
                runner.pool.shutdown(wait=False)

    def close(self) -> None:
        """Stop the build and measurement workers of a job abandoned before compile."""
        self._shutdown_workers()
