"""One scheduling pass: read the registry, ask the strategy, write the grants.

Shared by the daemon (wall clock) and the simulator (simulated clock via ``now``).
"""

from __future__ import annotations

import time

from .models import Grant
from .registry import Registry
from .strategies import Snapshot, Strategy, get_strategy

DEFAULT_STRATEGY = "interleaved"


class Dispatcher:
    def __init__(self, registry: Registry, *, strategy: str | Strategy | None = None) -> None:
        self.registry = registry
        self._fixed = get_strategy(strategy) if strategy is not None else None
        self._named: Strategy | None = None
        self._reasons: dict[int, str] = {}

    @property
    def strategy(self) -> Strategy:
        """The fixed strategy, else the one stored in the registry (changeable while running)."""
        if self._fixed is not None:
            return self._fixed
        name = self.registry.get_setting("strategy", DEFAULT_STRATEGY) or DEFAULT_STRATEGY
        if self._named is None or self._named.name != name:
            self._named = get_strategy(name)
        return self._named

    def dispatch(self, now: float | None = None) -> list[Grant]:
        """Grant what the strategy allows.  With ``now=None`` (wall clock) the grants are
        stamped under the write lock, so the event log orders them after every release
        they depend on; the simulator passes its own clock."""
        pending = self.registry.pending()
        if not pending:
            return []
        strategy = self.strategy
        snap = Snapshot(
            resources=self.registry.resources(),
            pending=pending,
            leases=self.registry.active_leases(),
            now=time.time() if now is None else now,
            estimates=self.registry.stage_estimates() if strategy.uses_estimates else None,
        )
        decision = strategy.decide(snap)
        changed = {j: r for j, r in decision.waits.items() if self._reasons.get(j) != r}
        self._reasons.update(changed)
        for p, _ in decision.grants:
            self._reasons.pop(p.job_id, None)
        if not decision.grants and not changed:
            return []
        return self.registry.grant(
            decision.grants, now=now, reasons=changed, enforce_capacity=not strategy.oversubscribes
        )
