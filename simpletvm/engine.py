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
from .intrin import load_intrinsics
from .intrin import preload as _preload
from .remote import DeviceUnavailable, RemoteDevice, make_rpc_runner
from .stages import CPU, DEVICE, StageKind, StageOutcome, StageRequest
from .targets import TargetSpec, resolve_target
from .taskalloc import GradientAllocator, TaskState

__all__ = ["TuningOptions", "TuningJob", "DeviceUnavailable", "preload"]


def preload(target: str = "llvm") -> None:
    """Import TVM and the target's intrinsics now, so forked children start warm."""
    kind = target if not target.startswith("{") else resolve_target(target).kind
    _preload(kind)


@dataclass(frozen=True, kw_only=True)
class TuningOptions:
    trials: int = 64
    per_round: int = 16
    builder_workers: int = 1
    builder_timeout: float = 30.0
    builder_max_uses: int = 256
    runner_timeout: float = 30.0
    number: int = 3
    repeat: int = 1
    min_repeat_ms: int = 100
    cost_model: str = "xgb"
    seed: int = 0
    reuse: bool = False
    search_threads: int = 1
    max_trials_per_task: int | None = None
    # SLA-driven jobs: stop as soon as the whole model meets sla_ms (measured by an
    # evaluate stage every evaluate_every rounds), or when the budget or deadline ends
    sla_ms: float | None = None
    deadline_seconds: float | None = None
    evaluate_every: int = 2
    # tune only these task indices (a sub-job of a model split at the task level)
    only_tasks: tuple[int, ...] | None = None
    # EvolutionarySearch: MetaSchedule's defaults; tests shrink them
    population_size: int = 512
    init_min_unmeasured: int = 50
    genetic_num_iters: int = 4

    def validate(self) -> TuningOptions:
        from .errors import UserInputError

        checks = [("trials", self.trials, 0), ("per_round", self.per_round, 1),
                  ("builder_workers", self.builder_workers, 1), ("number", self.number, 1),
                  ("repeat", self.repeat, 1), ("min_repeat_ms", self.min_repeat_ms, 0),
                  ("search_threads", self.search_threads, 1)]
        for name, value, low in checks:
            if value < low:
                raise UserInputError(f"{name.replace('_', '-')} must be >= {low}, got {value}")
        if self.sla_ms is not None and self.sla_ms <= 0:
            raise UserInputError(f"sla-ms must be positive, got {self.sla_ms}")
        if self.deadline_seconds is not None and self.deadline_seconds <= 0:
            raise UserInputError("deadline must be positive")
        if self.evaluate_every < 1:
            raise UserInputError("evaluate-every must be >= 1")
        for name in ("builder_timeout", "runner_timeout"):
            if getattr(self, name) <= 0:
                raise UserInputError(f"{name.replace('_', '-')} must be positive")
        if self.cost_model not in ("xgb", "random"):
            raise UserInputError(f"unknown cost model '{self.cost_model}'; use xgb or random")
        return self


@dataclass
class _Round:
    task: TaskState
    candidates: list = field(default_factory=list)
    builder_results: list = field(default_factory=list)
    runner_results: list = field(default_factory=list)


class TuningJob:
    """One model's tuning. Drive it with ``next_stage()`` / ``run_stage()``."""

    def __init__(self, onnx_model, inputs: list[model_mod.InputSpec], target: TargetSpec, *,
                 options: TuningOptions, db_path: str | Path | None = None,
                 output: str | Path | None = None, name: str = "model",
                 job_tag: str | None = None, measure_baselines: bool = True) -> None:
        self.onnx_model = onnx_model
        self.inputs = inputs
        self.target = target
        self.options = options.validate()
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
        self._started = None
        self._rounds_since_evaluate = 0
        self.stop_reason: str | None = None
        self.sla_history: list[dict[str, float]] = []

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
        info = {"target": self.target.kind,
                # round hints: the predictive strategy estimates remaining work from them
                "round": rounds_done + 1,
                "rounds": max(rounds_done + 1, -(-opts.trials // opts.per_round))}
        if self._round is not None:
            info.update(task=self._round.task.name, candidates=len(self._round.candidates))
        return StageRequest(self._next, needs, info)

    def run_stage(self, *, grant: dict[str, Any] | None = None) -> StageOutcome:
        kind = self._next
        if kind is None:
            raise RuntimeError("the job is finished; there is no stage to run")
        start = time.perf_counter()
        self._started = self._started or time.time()
        self._grant = grant or {}
        getattr(self, f"_{kind.value}")()
        seconds = time.perf_counter() - start
        self.stage_seconds[kind.value] = self.stage_seconds.get(kind.value, 0.0) + seconds
        if self._result:
            self._result["stage_seconds"] = dict(self.stage_seconds)
        progress = self.progress()
        return StageOutcome(kind, seconds, progress["trials_done"], progress["trials_total"],
                            progress["best_latency_ms"],
                            {"task": progress["current_task"]})

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
        return {"trials_done": done, "trials_total": self.options.trials,
                "best_latency_ms": self._result.get("tuned_ms", estimate),
                "current_task": self._round.task.name if self._round else None,
                "stage": self._next.value if self._next else "done",
                "sla_ms": self.options.sla_ms,
                "model_ms": self.sla_history[-1]["latency_ms"] if self.sla_history else None,
                "trend": [round(h["latency_ms"], 4) for h in self.sla_history[-5:]]}

    def result(self) -> dict[str, Any]:
        return dict(self._result)

    def estimated_latency_ms(self) -> float | None:
        """Sum of weight x best kernel time over tasks measured so far (a lower bound)."""
        known = [(t.weight, t.best) for t in self._tasks if t.best is not None and t.best < 1e9]
        return sum(w * b for w, b in known) * 1e3 if known else None

    @property
    def tasks(self) -> list[TaskState]:
        return list(self._tasks)

    # ---- stages
    def _prepare(self) -> None:
        from tvm.s_tir import meta_schedule as ms

        from .compile import prepare_module
        from .database import SQLiteDatabase

        load_intrinsics(self.target.kind)
        target = self.target.tvm_target()
        relax_mod = model_mod.to_relax(self.onnx_model, self.inputs)
        self.relax_mod = prepare_module(relax_mod, self.target)
        fused = model_mod.fuse_for_tuning(self.relax_mod, target)
        extracted = ms.relax_integration.extract_tasks(fused, target)
        self.database = (SQLiteDatabase(self.db_path, target_key=self.target.key,
                                        job_tag=self.job_tag)
                         if self.db_path else ms.database.MemoryDatabase())
        opts = self.options
        cap = opts.max_trials_per_task or opts.trials
        from tvm.s_tir.analysis import estimate_tir_flops

        for index, task in enumerate(extracted):
            mod = task.dispatched[0]
            try:
                flops = float(estimate_tir_flops(mod))
            except Exception:  # noqa: BLE001 - some functions have no countable loops
                flops = 0.0
            state = TaskState(index, task.task_name, float(task.weight), max_trials=cap,
                              flops=flops)
            if opts.only_tasks is not None and index not in opts.only_tasks:
                state.terminated = True
            existing = self._count_existing(mod)
            if existing:
                self.served["tasks"] += 1
                self.served["records"] += existing
                if opts.reuse:
                    state.terminated = True
            if self.job_tag and self.db_path:
                state.trials_done = self.database.count_records(mod, job_tag=self.job_tag)
            best = self._best_seconds(mod)
            if best is not None:
                state.best_history.append(best)
            self._tasks.append(state)
            self._contexts.append((task, mod))
        self.allocator = GradientAllocator(self._tasks, seed=opts.seed)
        if opts.trials > 0 and any(t.active for t in self._tasks):
            self._setup_tuning(ms, target)
        if opts.sla_ms is not None:
            self._next = StageKind.EVALUATE  # the database may already meet the SLA
            return
        self._advance_after_update()

    def _count_existing(self, mod) -> int:
        if not self.db_path:
            return 0
        return self.database.count_records(mod)

    def _best_seconds(self, mod) -> float | None:
        return self.database.best_seconds(mod) if self.db_path else None

    def _setup_tuning(self, ms, target) -> None:
        from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, LocalRunner

        from .builder import PersistentBuilder

        opts = self.options
        if opts.cost_model == "xgb":
            self.cost_model = ms.cost_model.XGBModel(num_tuning_cores=opts.search_threads)
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
            ctx.search_strategy.pre_tuning(state.max_trials, opts.per_round, spaces,
                                           self.database, self.cost_model)
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
        self.cost_model.update(ctx, candidates, results)

    def _budget_left(self) -> int:
        return self.options.trials - sum(t.trials_done for t in self._tasks)

    def _search(self) -> None:
        task = self._round.task
        ctx, _ = self._contexts[task.index]
        candidates = ctx.search_strategy.generate_measure_candidates()
        left = self._budget_left()
        if not candidates:
            task.terminated = True
            ctx.search_strategy.post_tuning()
            self._round = None
            self._advance_after_update()
            return
        self._round.candidates = list(candidates)[:max(left, 0)]
        self._next = StageKind.BUILD

    def _build(self) -> None:
        from tvm.s_tir.meta_schedule.builder import BuilderInput

        ctx, _ = self._contexts[self._round.task.index]
        inputs = [BuilderInput(c.sch.mod, ctx.target) for c in self._round.candidates]
        self._round.builder_results = self.builder.build(inputs)
        self._next = StageKind.MEASURE

    def _measure(self) -> None:
        from tvm.s_tir.meta_schedule.runner import RunnerInput, RunnerResult

        ok = [(i, r) for i, r in enumerate(self._round.builder_results) if r.error_msg is None]
        inputs = [RunnerInput(r.artifact_path, self.target.device_type,
                              self._round.candidates[i].args_info) for i, r in ok]
        remote = self._remote_device()
        runner = self._rpc_runner(remote) if remote else self.runner
        futures = runner.run(inputs) if inputs else []
        results = [RunnerResult(None, r.error_msg) for r in self._round.builder_results]
        collected = (self._collect_remote(futures, remote) if remote
                     else [f.result() for f in futures])
        for (i, _), result in zip(ok, collected):
            results[i] = result
        if remote and inputs and all(results[i].run_secs is None for i, _ in ok):
            reason = remote.probe()
            if reason is not None:
                # leave the job at this measure stage: the scheduler re-grants elsewhere
                raise DeviceUnavailable(remote.label, reason)
        self._round.runner_results = results
        self._next = StageKind.UPDATE

    def _collect_remote(self, futures, remote: RemoteDevice) -> list:
        """Results of an RPC batch, bounded in time: TVM's RPCRunnerFuture waits for ever.

        A server that accepts the connection and then never answers (a wedged board)
        would hang the stage; past the session timeout we give up on the rest of the
        batch and discard the runner, whose worker is stuck in the socket.
        """
        from tvm.s_tir.meta_schedule.runner import RunnerResult

        out = []
        for index, future in enumerate(futures):
            deadline = time.monotonic() + remote.session_timeout + 5
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            if not future.done():
                message = (f"RPCRunner: no answer from {remote.label} within "
                           f"{remote.session_timeout + 5:g} s")
                out += [RunnerResult(None, message)] * (len(futures) - index)
                runner = self.__dict__.get("_rpc_runners", {}).pop(remote, None)
                if runner is not None:
                    _discard_pool(runner.pool)
                break
            out.append(future.result())
        return out

    def _remote_device(self) -> RemoteDevice | None:
        rpc_grant = self._grant.get("rpc") if self._grant else None
        return RemoteDevice.from_grant(rpc_grant) if rpc_grant else None

    def _rpc_runner(self, device: RemoteDevice):
        from tvm.s_tir.meta_schedule.runner import EvaluatorConfig

        runners = self.__dict__.setdefault("_rpc_runners", {})
        if device not in runners:
            opts = self.options
            runners[device] = make_rpc_runner(device, EvaluatorConfig(
                number=opts.number, repeat=opts.repeat, min_repeat_ms=opts.min_repeat_ms,
                enable_cpu_cache_flush=False))
        return runners[device]

    def _update(self) -> None:
        from tvm.s_tir.meta_schedule.database import TuningRecord

        from .database import FAILED_RUN_SECS

        rnd = self._round
        ctx, mod = self._contexts[rnd.task.index]
        workload = self.database.commit_workload(mod)
        best = rnd.task.best
        for cand, res in zip(rnd.candidates, rnd.runner_results):
            run_secs = list(res.run_secs) if res.run_secs is not None else [FAILED_RUN_SECS]
            self.database.commit_tuning_record(TuningRecord(
                cand.sch.trace, workload, run_secs, ctx.target, cand.args_info))
            if res.run_secs is not None:
                mean = sum(float(s) for s in res.run_secs) / len(res.run_secs)
                best = mean if best is None else min(best, mean)
        ctx.search_strategy.notify_runner_results(rnd.candidates, rnd.runner_results)
        self.cost_model.update(ctx, rnd.candidates, rnd.runner_results)
        for res in rnd.builder_results:
            if res.artifact_path:
                shutil.rmtree(os.path.dirname(res.artifact_path), ignore_errors=True)
        rnd.task.trials_done += len(rnd.candidates)
        rnd.task.rounds += 1
        self._rounds_since_evaluate += 1
        rnd.task.best_history.append(best if best is not None else FAILED_RUN_SECS)
        self.convergence.append({"trials": sum(t.trials_done for t in self._tasks),
                                 "seconds": time.time() - self._started,
                                 "best_ms": self.estimated_latency_ms()})
        self._round = None
        self._advance_after_update()

    def _evaluate(self) -> None:
        """Build the whole model from the database and measure it against the SLA."""
        from . import bench
        from .compile import compile_tuned
        from .model import random_inputs

        executable = compile_tuned(self.relax_mod, self.target, self.database)
        stats = bench.bench_tvm(executable, self.target.device_type,
                                random_inputs(self.inputs, seed=self.options.seed), repeat=10)
        self.sla_history.append({"trials": sum(t.trials_done for t in self._tasks),
                                 "seconds": time.time() - self._started,
                                 "latency_ms": stats.median_ms})
        if stats.median_ms <= self.options.sla_ms:
            self.stop_reason = "sla met"
            self._next = StageKind.COMPILE
            return
        self._advance_after_update(evaluated=True)

    def _deadline_passed(self) -> bool:
        deadline = self.options.deadline_seconds
        return deadline is not None and time.time() - self._started >= deadline

    def _advance_after_update(self, *, evaluated: bool = False) -> None:
        sla = self.options.sla_ms is not None
        if sla and not evaluated and self._rounds_since_evaluate >= self.options.evaluate_every:
            self._rounds_since_evaluate = 0
            self._next = StageKind.EVALUATE
            return
        if self._deadline_passed():
            self.stop_reason = "deadline"
        elif self._budget_left() > 0 and self.options.trials > 0:
            task = self.allocator.next_task()
            if task is not None and self._contexts[task.index][0] is not None:
                self._round = _Round(task)
                self._next = StageKind.SEARCH
                return
            self.stop_reason = self.stop_reason or "search space exhausted"
        else:
            self.stop_reason = self.stop_reason or "budget"
        if sla and not evaluated and self._rounds_since_evaluate > 0:
            self._rounds_since_evaluate = 0
            self._next = StageKind.EVALUATE  # measure the last rounds before stopping
            return
        self._next = StageKind.COMPILE

    def _compile(self) -> None:
        from .finalize import compile_job

        self._shutdown_workers()  # no candidate is built or measured after this
        self._compiled = compile_job(self)
        self.executable = self._compiled.tuned
        self._next = StageKind.FINALIZE

    def _finalize(self) -> None:
        from .finalize import finalize_job

        self._result = finalize_job(self, self._compiled)
        self._compiled = None
        self._next = None

    def _shutdown_workers(self) -> None:
        builder = getattr(self, "builder", None)
        if builder is not None:
            builder.shutdown()
        runners = [getattr(self, "runner", None), *self.__dict__.get("_rpc_runners", {}).values()]
        for runner in runners:
            if runner is not None:
                runner.pool.shutdown(wait=False)

    def close(self) -> None:
        self._shutdown_workers()


def _discard_pool(pool) -> None:
    """Kill a PopenPool whose worker hangs in a socket, without blocking on it.

    TVM's ``PopenPoolExecutor.shutdown`` takes the pool's lock and then closes each
    worker's pipes, which blocks while another thread reads from them; if it blocks or
    raises, the lock stays taken, the next queued item waits on it for ever, and the
    interpreter never exits (it joins every executor thread at exit). So we never take
    that lock: queued items are cancelled first, then the worker processes are killed,
    which gives a reader blocked in ``recv`` its EOF and lets its thread finish.
    """
    threadpool = getattr(pool, "_threadpool", None)
    if threadpool is not None:
        threadpool.shutdown(wait=False, cancel_futures=True)
    for worker in list(getattr(pool, "_worker_map", {}).values()):
        proc = getattr(worker, "_proc", None)
        if proc is not None:
            try:
                proc.kill()
            except OSError:
                pass
