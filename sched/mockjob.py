"""MockJob: a StagedJob whose stages sleep or burn CPU for configured durations.

It exercises and simulates the scheduler without TVM.  Spec strings look like
``rounds=3,search=0.2,build=0.3,measure=0.1,update=0.05`` with optional ``prepare=``,
``finalize=``, ``jitter=`` (relative, 0 <= j < 1), ``cpu=burn|sleep``, ``seed=``,
``workers=`` (cpu slots a build stage asks for), ``device=any|gpu|cpu`` and ``probe=N``
(a measure stage times a fixed CPU workload N times instead of sleeping, to show how
other jobs' CPU stages distort measurements).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from simpletvm.stages import CPU, DEVICE, StageKind, StageOutcome, StageRequest

from .limits import MAX_POOL, MAX_PROBES, MAX_ROUNDS, MAX_STAGE_SECONDS

TRIALS_PER_ROUND = 16
_FLOAT_KEYS = ("prepare", "search", "build", "measure", "update", "finalize", "jitter")
_INT_KEYS = ("rounds", "seed", "workers", "probe")
_CHOICES = {"cpu": ("burn", "sleep"), "device": ("any", "gpu", "cpu")}
KEYS = _FLOAT_KEYS + _INT_KEYS + tuple(_CHOICES)
_MAXIMA = {"rounds": MAX_ROUNDS, "workers": MAX_POOL, "probe": MAX_PROBES, "seed": 2**63 - 1}


@dataclass(frozen=True)
class MockSpec:
    rounds: int = 1
    prepare: float = 0.0
    search: float = 0.0
    build: float = 0.0
    measure: float = 0.0
    update: float = 0.0
    finalize: float = 0.0
    jitter: float = 0.0
    cpu: str = "sleep"
    seed: int = 0
    workers: int = 1
    device: str = "any"
    probe: int = 0

    @classmethod
    def parse(cls, text: str) -> MockSpec:
        """Parse ``key=value,...``; every mistake is a ValueError that says what to write."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty mock spec; expected e.g. 'rounds=2,search=0.1,measure=0.1'")
        values: dict[str, Any] = {}
        for part in text.split(","):
            part = part.strip()
            key, sep, raw = part.partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep or not key or not raw:
                raise ValueError(f"mock spec item {part!r} is not key=value")
            if key not in KEYS:
                raise ValueError(f"unknown mock spec key {key!r}; known keys: {', '.join(KEYS)}")
            if key in values:
                raise ValueError(f"mock spec key {key!r} is given twice")
            values[key] = _convert(key, raw)
        return cls(**values)

    def __str__(self) -> str:
        default = MockSpec()
        parts = [f"{k}={v}" for k, v in asdict(self).items() if v != getattr(default, k)]
        return ",".join(parts) or "rounds=1"

    def stages(self) -> list[tuple[StageKind, float]]:
        """The planned stages with jittered durations, deterministic for a given seed."""
        plan: list[tuple[StageKind, float]] = []
        if self.prepare > 0:
            plan.append((StageKind.PREPARE, self.prepare))
        for _ in range(self.rounds):
            plan += [
                (StageKind.SEARCH, self.search),
                (StageKind.BUILD, self.build),
                (StageKind.MEASURE, self.measure),
                (StageKind.UPDATE, self.update),
            ]
        plan.append((StageKind.FINALIZE, self.finalize))
        rng = random.Random(self.seed)
        return [(k, max(0.0, s * (1 + rng.uniform(-self.jitter, self.jitter)))) for k, s in plan]


def _convert(key: str, raw: str) -> Any:
    if key in _CHOICES:
        if raw not in _CHOICES[key]:
            raise ValueError(f"mock spec {key}={raw!r}: expected one of {', '.join(_CHOICES[key])}")
        return raw
    try:
        value = int(raw) if key in _INT_KEYS else float(raw)
    except ValueError:
        kind = "an integer" if key in _INT_KEYS else "a number of seconds"
        raise ValueError(f"mock spec {key}={raw!r}: expected {kind}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"mock spec {key}={raw!r}: expected a finite number")
    if value < 0:
        raise ValueError(f"mock spec {key}={raw!r}: must not be negative")
    limit = _MAXIMA.get(key, MAX_STAGE_SECONDS)
    if value > limit:  # rounds=1e9 would plan four billion stages
        raise ValueError(f"mock spec {key}={raw}: must be at most {limit}")
    if key == "rounds" and value < 1:
        raise ValueError("mock spec rounds must be at least 1")
    if key == "workers" and value < 1:
        raise ValueError("mock spec workers must be at least 1")
    if key == "jitter" and value >= 1:
        raise ValueError(f"mock spec jitter={raw}: must be below 1 (a relative spread)")
    return value


def probe_once() -> float:
    """Milliseconds for a fixed single-threaded workload (about 1 ms on an idle core)."""
    start = time.perf_counter()
    total = 0
    for i in range(20000):
        total += i * i
    return (time.perf_counter() - start) * 1000


def burn(seconds: float) -> None:
    """Keep one core busy for ``seconds`` of wall time."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


class MockJob:
    """A StagedJob over a MockSpec; ``completed`` skips stages already done (resume)."""

    def __init__(
        self,
        spec: MockSpec | str,
        *,
        completed: int = 0,
        sleeper: Callable[[float], None] | None = None,
    ) -> None:
        self.spec = MockSpec.parse(spec) if isinstance(spec, str) else spec
        self.plan = self.spec.stages()
        self.index = min(completed, len(self.plan))
        self.stage_seconds: dict[str, float] = {}
        self.probe_ms: list[float] = []
        if sleeper is None:
            sleeper = burn if self.spec.cpu == "burn" else time.sleep
        self._sleep = sleeper

    def _round(self) -> int:
        offset = 1 if self.spec.prepare > 0 else 0
        return max(0, min(self.spec.rounds, (self.index - offset) // 4 + 1))

    def planned_seconds(self) -> float:
        return self.plan[self.index][1]

    def next_stage(self) -> StageRequest | None:
        if self.index >= len(self.plan):
            return None
        kind = self.plan[self.index][0]
        if kind is StageKind.MEASURE:
            needs = {DEVICE: 1}
        elif kind is StageKind.FINALIZE:
            needs = {CPU: 1, DEVICE: 1}
        elif kind is StageKind.BUILD:
            needs = {CPU: self.spec.workers}
        else:
            needs = {CPU: 1}
        info = {"index": self.index, "round": self._round(), "rounds": self.spec.rounds}
        return StageRequest(kind, needs, info)

    def run_stage(self, *, grant: dict[str, Any] | None = None) -> StageOutcome:
        if self.index >= len(self.plan):
            raise RuntimeError("MockJob: run_stage called after the last stage")
        kind, seconds = self.plan[self.index]
        start = time.perf_counter()
        real = self._sleep in (time.sleep, burn)  # else a simulated clock: report the plan
        if kind is StageKind.MEASURE and self.spec.probe and real:
            self.probe_ms += [probe_once() for _ in range(self.spec.probe)]
        else:
            self._sleep(seconds)
        elapsed = time.perf_counter() - start if real else seconds
        self.stage_seconds[kind.value] = self.stage_seconds.get(kind.value, 0.0) + elapsed
        self.index += 1
        progress = self.progress()
        return StageOutcome(
            kind,
            elapsed,
            progress["trials_done"],
            progress["trials_total"],
            progress["best_latency_ms"],
        )

    def _measured_rounds(self) -> int:
        return sum(1 for kind, _ in self.plan[: self.index] if kind is StageKind.MEASURE)

    def progress(self) -> dict[str, Any]:
        rounds = self._measured_rounds()
        return {
            "trials_done": rounds * TRIALS_PER_ROUND,
            "trials_total": self.spec.rounds * TRIALS_PER_ROUND,
            "best_latency_ms": round(1.0 / (1 + rounds), 4) if rounds else None,
            "current_task": "mock",
        }

    def result(self) -> dict[str, Any]:
        if self.index < len(self.plan):
            return {}
        return {
            "artifact": None,
            "tuned_ms": self.progress()["best_latency_ms"],
            "untuned_ms": 1.0,
            "onnxruntime_ms": None,
            "trials": self.progress()["trials_done"],
            "tuning_seconds": round(sum(self.stage_seconds.values()), 6),
            "stage_seconds": dict(self.stage_seconds),
            **({"probe": probe_summary(self.probe_ms)} if self.probe_ms else {}),
        }


def probe_summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    mean = sum(ordered) / len(ordered)
    std = (sum((x - mean) ** 2 for x in ordered) / len(ordered)) ** 0.5
    return {
        "samples": len(ordered),
        "median_ms": round(ordered[len(ordered) // 2], 4),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 4),
        "std_ms": round(std, 4),
    }
