"""Which task gets the next round: round-robin first, then MetaSchedule's gradient rule.

This mirrors ``GradientBased`` in MetaSchedule (from the Ansor paper): after every
task has had one round, pick the task whose weighted latency is expected to drop most,
``weight * (alpha * backward_gradient + (1 - alpha) * best / rounds)``. It is written
in Python because the C++ scheduler owns the whole loop and cannot hand us one round.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class TaskState:
    index: int
    name: str
    weight: float
    max_trials: int
    flops: float = 0.0
    trials_done: int = 0
    rounds: int = 0
    terminated: bool = False
    best_history: list[float] = field(default_factory=list)  # best seconds after each round
    covered: bool = False  # its coverage round has run
    default_secs: float | None = None  # its default (unscheduled) kernel time, if measured

    @property
    def best(self) -> float | None:
        return self.best_history[-1] if self.best_history else None

    @property
    def active(self) -> bool:
        return not self.terminated and self.trials_done < self.max_trials


class GradientAllocator:
    def __init__(self, tasks: list[TaskState], *, alpha: float = 0.2, window: int = 3,
                 seed: int = 0) -> None:
        self.tasks = tasks
        self.alpha = alpha
        self.window = window
        self._rng = random.Random(seed)

    def next_task(self) -> TaskState | None:
        active = [t for t in self.tasks if t.active]
        if not active:
            return None
        # round-robin until each active task has had one round, heaviest work first
        # (weight x FLOPs), so a small budget goes where the model's time is
        fresh = [t for t in active if t.rounds == 0]
        if fresh:
            return max(fresh, key=lambda t: (t.weight * t.flops, -t.index))
        best_grad, chosen = -1.0, []
        for task in active:
            grad = self._gradient(task)
            if grad > best_grad + 1e-18:
                best_grad, chosen = grad, [task]
            elif abs(grad - best_grad) <= 1e-18:
                chosen.append(task)
        return self._rng.choice(chosen)

    def _gradient(self, task: TaskState) -> float:
        history = [h for h in task.best_history if h < 1e9]
        if not history:
            # nothing valid measured yet: keep trying it, as MetaSchedule does
            return float("inf")
        n, best, w = len(history), history[-1], self.window
        backward = (history[n - 1 - w] - best) / w if n >= 1 + w else 0.0
        forward = best / n
        return task.weight * (self.alpha * backward + (1 - self.alpha) * forward)
