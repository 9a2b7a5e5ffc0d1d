"""PLACEHOLDER — being replaced by the report helper. Interface only."""

from __future__ import annotations

from typing import Any

from ._classify import ErrorKind
from ._errors import AsyncBatchError
from ._result import JobOutcome

__all__ = ["BudgetExceeded", "BudgetTracker", "ErrorBudget"]


class ErrorBudget:
    def __init__(self, **kw: Any) -> None:
        self.action = kw.get("action", "abort")


class BudgetExceeded(AsyncBatchError):
    pass


class BudgetTracker:
    def __init__(self, budget: ErrorBudget) -> None:
        self.budget = budget

    def record_attempt(self, kind: ErrorKind, will_retry: bool) -> BudgetExceeded | None:
        return None

    def record_job(self, outcome: JobOutcome[Any]) -> BudgetExceeded | None:
        return None

    def state(self) -> dict[str, Any]:
        return {}
