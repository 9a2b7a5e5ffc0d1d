"""PLACEHOLDER — being replaced by the report helper. Interface only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._classify import ErrorKind
from ._result import JobOutcome

__all__ = ["ErrorReport", "ReportBuilder"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReport:
    run_id: str
    groups: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "groups": self.groups}


class ReportBuilder:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def attempt_failed(
        self, key: str, kind: ErrorKind, exc: BaseException, at: float, will_retry: bool
    ) -> None:
        pass

    def job_finished(self, outcome: JobOutcome[Any]) -> None:
        pass

    def build(self, **sections: Any) -> ErrorReport:
        return ErrorReport(run_id=self.run_id)
