"""A shared-run worker's error budget, judged as its jobs finish on run-wide counts.

Each worker counts its own jobs and writes them on its heartbeat; the
budget is judged on every worker's counts summed (`Session.beat`). That
alone lets a fast worker run a whole beat's jobs past an exhausted budget.
`RunWideTracker` judges at every finished job too, as a single-process run
does: this worker's counts plus the other workers' as the last beat read
them (so a run that no worker joined is judged exactly as in one process).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncbatch._errors import ErrorKind
from asyncbatch._policy._budget import BudgetExceeded, BudgetTracker, ErrorBudget

__all__ = ["RunWideTracker"]


class RunWideTracker(BudgetTracker):
    """Counts this worker's jobs; judges them with the other workers' last counts added."""

    __slots__ = ("_others",)

    def __init__(self, budget: ErrorBudget) -> None:
        super().__init__(budget)
        self._others: tuple[int, int, int, dict[ErrorKind, int]] | None = None

    def seen(self, total: Mapping[str, Any], mine: Mapping[str, Any]) -> None:
        """Every worker's counts summed (``total``), of which ``mine`` were this worker's."""

        def less(name: str) -> int:
            return max(0, int(total.get(name, 0)) - int(mine.get(name, 0)))

        kinds_t, kinds_m = total.get("by_kind") or {}, mine.get("by_kind") or {}
        by_kind = {
            k: max(0, int(kinds_t.get(k.value, 0)) - int(kinds_m.get(k.value, 0)))
            for k in ErrorKind
        }
        self._others = (less("jobs"), less("failures"), less("retries"), by_kind)

    def _judge(self) -> BudgetExceeded | None:
        others = self._others
        if others is None:
            return super()._judge()
        saved = self.jobs, self.failures, self.retries, self.by_kind
        jobs, failures, retries, by_kind = others
        self.jobs += jobs
        self.failures += failures
        self.retries += retries
        self.by_kind = {k: n + by_kind[k] for k, n in self.by_kind.items()}
        try:
            return super()._judge()
        finally:  # the counts stay this worker's own (its heartbeat writes them)
            self.jobs, self.failures, self.retries, self.by_kind = saved
