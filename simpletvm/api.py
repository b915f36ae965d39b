"""The chainable API: ``SimpleTVM.load(...).target(...).tune(...).build().benchmark()``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import bench
from . import model as model_mod
from .compile import compile_untuned, export, prepare_module
from .engine import TuningJob, TuningOptions
from .errors import UserInputError
from .targets import TargetSpec, resolve_target
from .threads import runtime_threads


class SimpleTVM:
    """One model's pipeline. Methods that change it return ``self``; results are attributes.

    Attributes after the matching call: ``job`` / ``records`` / ``tuning_seconds`` /
    ``stage_seconds`` (tune), ``executable`` (build), ``latency`` (benchmark, a
    LatencyStats), ``comparison`` (compare), ``artifact`` (export).
    """

    def __init__(self, onnx_model, inputs: list[model_mod.InputSpec], path: Path) -> None:
        self.onnx_model = onnx_model
        self.inputs = inputs
        self.path = path
        self.target_spec: TargetSpec | None = None
        self.job: TuningJob | None = None
        self.executable = None
        self.latency: bench.LatencyStats | None = None
        self.comparison: dict[str, Any] | None = None
        self.artifact: Path | None = None
        self.tuning_seconds: float = 0.0
        self.stage_seconds: dict[str, float] = {}
        self.records: int = 0

    @classmethod
    def load(cls, path: str | Path, *,
             input_shapes: dict[str, tuple[int, ...]] | None = None) -> SimpleTVM:
        onnx_model = model_mod.load_onnx(path)
        inputs = model_mod.model_inputs(onnx_model, input_shapes)
        model_mod.check_operators(onnx_model)
        return cls(onnx_model, inputs, Path(path))

    def target(self, target: str | dict = "llvm") -> SimpleTVM:
        self.target_spec = resolve_target(target)
        return self

    def _spec(self) -> TargetSpec:
        if self.target_spec is None:
            self.target("llvm")
        return self.target_spec

    def tune(self, *, trials: int | None = None, db: str | Path | None = None, on_stage=None,
             **options) -> SimpleTVM:
        """Tune on the stage-by-stage engine; the records land in ``db`` (SQLite).

        ``trials=None`` sizes the budget from the task count; ``options`` are further
        ``TuningOptions`` fields (``time_budget_seconds=600``, ``search_threads=2``...)."""
        opts = TuningOptions(trials=trials, **options).validate()
        self.job = TuningJob(self.onnx_model, self.inputs, self._spec(), options=opts,
                             db_path=db, name=self.path.stem, measure_baselines=False)
        self.job.run_all(on_stage)
        result = self.job.result()
        self.executable = self.job.executable
        self.records = result["trials"]
        self.tuning_seconds = result["tuning_seconds"]
        self.stage_seconds = result["stage_seconds"]
        return self

    def _untuned_module(self):
        """The graph the untuned baseline builds: the tuning job's, as ``simpletvm tune``
        times it (its convolution layout), or the default options' before tuning."""
        if self.job is not None and self.job.base_mod is not None:
            return self.job.base_mod
        return prepare_module(model_mod.to_relax(self.onnx_model, self.inputs), self._spec(),
                              conv_layout=TuningOptions().conv_layout)

    def build(self) -> SimpleTVM:
        """Compile: from the tuning database if tuned, else TVM's untuned default."""
        if self.executable is None:
            self.executable = compile_untuned(self._untuned_module(), self._spec())
        return self

    def benchmark(self, **kwargs) -> SimpleTVM:
        if self.executable is None:
            self.build()
        feeds = model_mod.random_inputs(self.inputs)
        self.latency = bench.bench_tvm(self.executable, self._spec().device_type, feeds,
                                       **kwargs)
        return self

    def compare(self) -> SimpleTVM:
        """Untuned TVM, tuned TVM (if tuned) and onnxruntime, measured the same way."""
        spec = self._spec()
        feeds = model_mod.random_inputs(self.inputs)
        untuned = bench.bench_tvm(compile_untuned(self._untuned_module(), spec),
                                  spec.device_type, feeds)
        model_bytes = self.onnx_model.SerializeToString()
        threads = runtime_threads()  # onnxruntime on as many threads as TVM's runtime
        if self.job is not None:  # tuned and onnxruntime in alternating rounds
            tuned, ort = bench.time_against_onnxruntime(
                self.executable, spec.device_type, feeds, model_bytes, use_gpu=spec.is_gpu,
                threads=threads)
        else:
            tuned = None
            ort = bench.bench_onnxruntime(model_bytes, feeds, use_gpu=spec.is_gpu,
                                          threads=threads)
        self.comparison = {
            "untuned_ms": untuned.median_ms,
            "tuned_ms": tuned.median_ms if tuned else None,
            "onnxruntime_ms": ort.median_ms if ort else None,
            "speedup": untuned.median_ms / tuned.median_ms if tuned else None,
            "threads": None if spec.is_gpu else threads,
        }
        return self

    def export(self, path: str | Path) -> SimpleTVM:
        if self.executable is None:
            raise UserInputError("nothing to export yet; call build() or tune() first")
        self.artifact = export(self.executable, path, target_spec=self._spec(),
                               inputs=self.inputs)
        return self
