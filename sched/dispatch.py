"""One scheduling pass: read the registry, ask the strategy, write the grants.

Shared by the daemon (wall clock) and the simulator (simulated clock via ``now``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .models import Grant
from .registry import PassView, Registry
from .strategies import Snapshot, Strategy, get_strategy

DEFAULT_STRATEGY = "interleaved"


# given the holders of leases: suspend returns the epochs it stopped (None: all of them)
SuspendFn = Callable[[list[dict[str, Any]]], list[int] | None]
ResumeFn = Callable[[list[dict[str, Any]]], None]


class Dispatcher:
    """Grants stages; ``suspend`` and ``resume`` stop and continue the holders of leases
    (the daemon signals runner processes, the simulator moves its clock); without them a
    strategy's preemptions are not used."""

    def __init__(
        self,
        registry: Registry,
        *,
        strategy: str | Strategy | None = None,
        suspend: SuspendFn | None = None,
        resume: ResumeFn | None = None,
    ) -> None:
        self.registry = registry
        self._fixed = get_strategy(strategy) if strategy is not None else None
        self._named: Strategy | None = None
        self._reasons: dict[int, str] = {}
        self.suspend, self.resume = suspend, resume

    @property
    def strategy(self) -> Strategy:
        """The fixed strategy, else the one stored in the registry (changeable while running)."""
        if self._fixed is not None:
            return self._fixed
        return self.strategy_in(self.registry.get_setting("strategy"))

    def strategy_in(self, name: str | None) -> Strategy:
        """The fixed strategy, else the one the ``strategy`` setting ``name`` names."""
        if self._fixed is not None:
            return self._fixed
        name = name or DEFAULT_STRATEGY
        if self._named is None or self._named.name != name:
            self._named = get_strategy(name)
        return self._named

    @property
    def wants_estimates(self) -> bool:
        """Does the strategy last used read stage estimates (so a pass reads them too)?"""
        known = self._fixed or self._named
        return known is not None and known.uses_estimates

    def view(self, *, queued: int = 0) -> PassView:
        return self.registry.pass_view(queued=queued, estimates=self.wants_estimates)

    def resume_finished(
        self, now: float | None = None, leases: list[dict[str, Any]] | None = None
    ) -> int:
        """Continue the stages suspended for measurements that have ended (``leases``, if
        already read); how many."""
        leases = self.registry.suspended_leases() if leases is None else leases
        if not leases:
            return 0
        if self.resume is not None:
            self.resume(leases)  # continue first: a crash in between leaves them resumable
        self.registry.resume_leases([lease["epoch"] for lease in leases], now=now)
        return len(leases)

    def dispatch(self, now: float | None = None, view: PassView | None = None) -> list[Grant]:
        """Grant what the strategy allows, from ``view`` if the caller has read it.  With
        ``now=None`` (wall clock) the grants are stamped under the write lock, so the event
        log orders them after every release they depend on; the simulator passes its own
        clock."""
        view = view or self.view()
        if self.resume_finished(now, view.suspended):
            view = self.view()  # the resumed leases hold their units again
        if not view.pending:
            return []
        strategy = self.strategy_in(view.setting("strategy"))
        estimates = None
        if strategy.uses_estimates:
            estimates = view.estimates or self.registry.stage_estimates()
        snap = Snapshot(
            resources=view.resources,
            pending=view.pending,
            leases=view.leases,
            now=time.time() if now is None else now,
            estimates=estimates,
            # the preempt setting: ``sched start --no-preempt`` turns it off
            preempt=self.suspend is not None and view.setting("preempt", "on") != "off",
        )
        decision = strategy.decide(snap)
        changed = {j: r for j, r in decision.waits.items() if self._reasons.get(j) != r}
        self._reasons.update(changed)
        for p, _ in decision.grants:
            self._reasons.pop(p.job_id, None)
        if not decision.grants and not changed:
            return []
        return self.registry.grant(
            decision.grants,
            now=now,
            reasons=changed,
            enforce_capacity=not strategy.oversubscribes,
            suspend=decision.suspend,
            on_suspend=self.suspend,
        )
