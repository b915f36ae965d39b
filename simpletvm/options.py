"""The tuning options of one job, their defaults, and the engine's rules for them.

Every entry point (``simpletvm tune``, the Python API, ``sched submit``, superb) builds a
``TuningOptions``; the defaults are written here and nowhere else.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from .errors import UserInputError

# 32 candidates per round, population 256, 2 genetic iterations: on a 2-core machine
# MetaSchedule's defaults (16 per round here, population 512, 4 iterations) spent most
# of a time budget searching; these measured 3x the trials and a faster model in the
# same time (docs/quality.md, benchmarks/search_settings.py)
DEFAULT_PER_ROUND = 32
# A budget given neither in trials nor in time is sized from the model's task count:
# the coverage round of every task, then this many search rounds per significant task.
DEFAULT_ROUNDS_PER_TASK = 2
MIN_DEFAULT_TRIALS = 64
# where a fixed trial count is needed before the model is read (sched submit, superb)
FIXED_DEFAULT_TRIALS = 64
# A task is significant when its share of the model's weighted FLOPs is at least this.
SIGNIFICANT_SHARE = 0.005
# how 3x3 convolutions are computed on a CPU (winograd.py): by the rough roofline, or one
# Winograd tile wherever it applies, or always directly
WINOGRAD_MODES = ("auto", "off", "2", "4")
# the layout 2-D convolutions are tuned in: "auto" is NHWC on a CPU (its schedules
# vectorise output channels; at equal budgets resnet18 and mobilenet_v2 came out 1.8 and
# 1.6 times faster than in NCHW: docs/quality.md) and the model's own NCHW on a GPU
CONV_LAYOUTS = ("auto", "NCHW", "NHWC")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


# A shrunk evolutionary search and one timing per candidate (docs/tvm-facts.md: 0.6 s a
# round instead of 20 s): for tests and benchmarks that tune for real but briefly.
SHRUNK_SEARCH = {"population_size": 32, "init_min_unmeasured": 8, "genetic_num_iters": 1,
                 "number": 1, "repeat": 1, "min_repeat_ms": 0}


@dataclass(frozen=True, kw_only=True)
class TuningOptions:
    # the budget: measured trials over all tasks (None: sized from the task count) and/or
    # wall-clock seconds of tuning; whichever ends first stops the search
    trials: int | None = None
    time_budget_seconds: float | None = None
    per_round: int = DEFAULT_PER_ROUND
    # None: every core of the host (a job alone); sched passes the slots it grants
    builder_workers: int | None = None
    search_threads: int | None = None
    builder_timeout: float = 30.0
    builder_max_uses: int = 256
    runner_timeout: float = 30.0
    number: int = 3
    repeat: int = 1
    min_repeat_ms: int = 100
    cost_model: str = "xgb"
    seed: int = 0
    reuse: bool = False
    max_trials_per_task: int | None = None
    # coverage round: before any evolutionary search, every task samples this many
    # schedules from its design space, ranks them with the cost model and measures the
    # best few, next to its default schedule (0 turns coverage off)
    coverage_samples: int = 64
    coverage_measured: int = 4
    # CPU: let MetaSchedule choose the weights' layout (folded into constants at build)
    layout_rewrite: bool = True
    # CONV_LAYOUTS: "NHWC" converts 2-D convolutions to NHWC before tuning, "NCHW" keeps
    # the model's, "auto" picks by target (conv_layout_for)
    conv_layout: str = "auto"
    # CPU: 3x3 stride-1 convolutions by Winograd (winograd.py): "auto" where the rough
    # roofline says it pays, "2" or "4" for that tile everywhere it applies, "off"
    winograd: str = "auto"
    # learning across jobs (costmodel.py, transfer.py; needs a tuning database): use the
    # target's shared cost model, retrained once this many new measurements are stored;
    # seed tasks with no records from workloads of the same structure
    shared_model: bool = True
    shared_model_every: int = 256
    transfer: bool = True
    # finalize compares the exported module's outputs with onnxruntime's
    check_outputs: bool = True
    output_rtol: float = 1e-3
    output_atol: float = 1e-4
    # SLA-driven jobs: stop as soon as the whole model meets sla_ms (measured by an
    # evaluate stage every evaluate_every rounds), or when the budget or deadline ends
    sla_ms: float | None = None
    deadline_seconds: float | None = None
    evaluate_every: int = 2
    # tune only these task indices (a sub-job of a model split at the task level)
    only_tasks: tuple[int, ...] | None = None
    # EvolutionarySearch (see DEFAULT_PER_ROUND); tests shrink them further
    population_size: int = 256
    init_min_unmeasured: int = 50
    genetic_num_iters: int = 2

    def __post_init__(self) -> None:
        # layouts and modes in any case, from every entry point (CLI, TOML, JSON, Python)
        if isinstance(self.conv_layout, str):
            object.__setattr__(self, "conv_layout", normal_conv_layout(self.conv_layout))
        if isinstance(self.winograd, str):
            object.__setattr__(self, "winograd", self.winograd.lower())

    def validate(self) -> TuningOptions:
        """Raise UserInputError naming the first option that breaks the engine's rules."""
        for f in fields(self):
            _check_number(f.name, getattr(self, f.name))
        at_least = {"per_round": 1, "builder_workers": 1, "number": 1, "repeat": 1,
                    "min_repeat_ms": 0, "search_threads": 1, "evaluate_every": 1,
                    "population_size": 1, "init_min_unmeasured": 0, "genetic_num_iters": 0,
                    "builder_max_uses": 1, "coverage_samples": 0, "coverage_measured": 0,
                    "trials": 0, "max_trials_per_task": 1, "seed": 0,
                    "shared_model_every": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise UserInputError(f"{_flag(name)} must be >= {low}, got {value}")
        for name in ("builder_timeout", "runner_timeout", "output_rtol", "output_atol",
                     "sla_ms", "deadline_seconds", "time_budget_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserInputError(f"{_flag(name)} must be positive, got {value}")
        _check_choice("conv layout", self.conv_layout, CONV_LAYOUTS)
        _check_choice("winograd mode", self.winograd, WINOGRAD_MODES)
        if self.cost_model not in ("xgb", "random"):
            raise UserInputError(f"unknown cost model '{self.cost_model}'; use xgb or random")
        return self

    def resolved(self, *, cores: int) -> TuningOptions:
        """Threads and workers filled in: all ``cores`` where the user left them unset."""
        from dataclasses import replace

        return replace(self, builder_workers=self.builder_workers or cores,
                       search_threads=self.search_threads or cores)


# what each field must hold: ints where the engine counts, floats where it times
_INTS = {"trials", "per_round", "builder_workers", "search_threads", "builder_max_uses",
         "number", "repeat", "min_repeat_ms", "seed", "max_trials_per_task",
         "coverage_samples", "coverage_measured", "evaluate_every", "population_size",
         "init_min_unmeasured", "genetic_num_iters", "shared_model_every"}
_BOOLS = {"reuse", "layout_rewrite", "check_outputs", "shared_model", "transfer"}


def normal_conv_layout(value: str) -> str:
    """``--conv-layout`` as written by a user (any case) in CONV_LAYOUTS' spelling."""
    return value.lower() if value.lower() == "auto" else value.upper()


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else UserInputError saying which are."""
    if value not in choices:
        raise UserInputError(f"unknown {what} '{value}'; use " + ", ".join(choices))
    return value


def conv_layout_for(layout: str, *, gpu: bool) -> str:
    """The layout convolutions are tuned in on a GPU or CPU target: "NCHW" or "NHWC".

    Any case; an unknown layout is refused (library callers such as
    ``compile.prepare_module`` are not behind ``TuningOptions.validate``)."""
    layout = _check_choice("conv layout", normal_conv_layout(layout), CONV_LAYOUTS)
    if layout == "auto":
        return "NCHW" if gpu else "NHWC"
    return layout


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _check_number(name: str, value) -> None:
    if value is None or name in ("cost_model", "only_tasks", "conv_layout", "winograd"):
        return
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise UserInputError(f"{_flag(name)} must be true or false, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserInputError(f"{_flag(name)} must be a number, got {value!r}")
    if name in _INTS and not isinstance(value, int):
        raise UserInputError(f"{_flag(name)} must be a whole number, got {value!r}")
    if not math.isfinite(value):
        raise UserInputError(f"{_flag(name)} must be finite, got {value!r}")
    if abs(value) > (2**31 - 1 if name in _INTS else 1e12):  # C++ ints; sane seconds
        raise UserInputError(f"{_flag(name)} is too large: {value!r}")


def option_names() -> tuple[str, ...]:
    """Every option a job specification may set."""
    return tuple(f.name for f in fields(TuningOptions) if f.name != "only_tasks")


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``2h``, ``1h30m`` or a bare number of seconds."""
    raw = text.strip().lower()
    try:
        seconds = float(raw)
    except ValueError:
        seconds = None
    if seconds is None:
        parts = _DURATION.findall(raw)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != raw.replace(" ", ""):
            raise ValueError(
                f"duration {text!r} is not like 90s, 30m, 2h or 1h30m; give a number and a unit"
            ) from None
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"duration {text!r} must be positive")
    return seconds
