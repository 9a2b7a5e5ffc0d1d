"""The error budget: how many failures a run may spend before it aborts (or alerts).

An `ErrorBudget` states the limits; a `BudgetTracker` (one per run) counts
failed attempts and finished jobs and hands back a `BudgetExceeded` verdict the
first time a limit is crossed. The executor acts on the verdict: it emits
``ab.BudgetExhausted`` and, with ``action="abort"``, aborts the batch with the
verdict as the `BatchAborted` cause.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from asyncbatch._errors import AsyncBatchError, ConfigError, ErrorKind
from asyncbatch._result import JobOutcome, JobStatus

__all__ = ["BudgetExceeded", "BudgetTracker", "ErrorBudget"]

BudgetAction = Literal["abort", "alert"]
_ACTIONS = ("abort", "alert")


def _rate(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a rate in (0, 1], got {value!r}")
    if not 0 < value <= 1:
        raise ConfigError(f"{name} must be a rate in (0, 1], got {value!r} (5% is 0.05)")
    return float(value)


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorBudget:
    """How many failures a run may spend: ``ErrorBudget(max_failure_rate=0.05)``.

    A *failure* is a job that finished DEAD_LETTERED or FAILED; *finished
    jobs* are those that ended SUCCEEDED, DEAD_LETTERED or FAILED in this run
    (jobs SKIPPED on resume, CANCELLED or COMPENSATED are not counted). A limit
    is exceeded when the observed value is strictly greater than it, and the
    budget is exhausted by the first limit exceeded; the verdict is given once.

    Args:
        max_failure_rate: failures / finished jobs may not exceed this rate in
            (0, 1]. Judged only once at least ``min_jobs`` jobs have finished,
            so a few early failures cannot abort a large batch.
        max_failures: absolute number of failures allowed; judged from the
            first job on (``max_failures=0``: the first failure exhausts it).
        min_jobs: finished jobs needed before the rates and the retry ratio
            are judged.
        per_kind: ``{ErrorKind: max rate}``: failures whose final kind is that
            kind / finished jobs; each kind is judged on its own (after
            ``min_jobs``), e.g. ``{ErrorKind.PERMANENT: 0.01}`` aborts on bad
            input while transient failures use the overall rate.
        max_retry_ratio: retries scheduled / finished jobs may not exceed this
            (> 0; 0.5 means one retry per two jobs); judged after ``min_jobs``.
            Catches a dependency that is failing even while retries still
            save the jobs.
        action: ``"abort"`` stops the batch (``BatchAborted`` whose ``cause``
            is the `BudgetExceeded` verdict); ``"alert"`` only emits
            ``ab.BudgetExhausted`` and lets the batch finish.

    Raises:
        ConfigError: a limit is out of range, the action is unknown, or no
            limit is set at all.
    """

    max_failure_rate: float | None = None
    max_failures: int | None = None
    min_jobs: int = 100
    per_kind: Mapping[ErrorKind, float] | Mapping[str, float] | None = None
    max_retry_ratio: float | None = None
    action: BudgetAction = "abort"

    def __post_init__(self) -> None:
        if self.max_failure_rate is not None:
            _rate(self.max_failure_rate, "ErrorBudget max_failure_rate")
        if self.max_failures is not None:
            _count(self.max_failures, "ErrorBudget max_failures")
        _count(self.min_jobs, "ErrorBudget min_jobs")
        if self.per_kind is not None:
            if not isinstance(self.per_kind, Mapping):
                raise ConfigError(
                    "ErrorBudget per_kind must be a dict {ErrorKind: rate}, "
                    f"got {self.per_kind!r}"
                )
            per_kind: dict[ErrorKind, float] = {}
            for kind, rate in self.per_kind.items():
                try:
                    k = ErrorKind(kind)
                except ValueError:
                    kinds = ", ".join(k.value for k in ErrorKind)
                    raise ConfigError(
                        f"ErrorBudget per_kind keys must be ErrorKinds ({kinds}), got {kind!r}"
                    ) from None
                per_kind[k] = _rate(rate, f"ErrorBudget per_kind[{k.value}]")
            object.__setattr__(self, "per_kind", per_kind or None)
        ratio = self.max_retry_ratio
        if ratio is not None and (
            isinstance(ratio, bool)
            or not isinstance(ratio, int | float)
            or not math.isfinite(ratio)
            or ratio <= 0
        ):
            raise ConfigError(
                f"ErrorBudget max_retry_ratio must be a number > 0 (retries per job), got {ratio!r}"
            )
        if self.action not in _ACTIONS:
            raise ConfigError(f'ErrorBudget action must be "abort" or "alert", got {self.action!r}')
        if (
            self.max_failure_rate is None
            and self.max_failures is None
            and self.per_kind is None
            and self.max_retry_ratio is None
        ):
            raise ConfigError(
                "ErrorBudget needs at least one limit; HINT: ErrorBudget(max_failure_rate=0.05)"
            )

    def limits(self) -> dict[str, Any]:
        """The limits as a JSON-safe dict (kinds by value)."""
        return {
            "max_failure_rate": self.max_failure_rate,
            "max_failures": self.max_failures,
            "min_jobs": self.min_jobs,
            "per_kind": None
            if self.per_kind is None
            else {ErrorKind(k).value: v for k, v in self.per_kind.items()},
            "max_retry_ratio": self.max_retry_ratio,
        }


class BudgetExceeded(AsyncBatchError):
    """The verdict: a run spent its error budget.

    Raised as the ``cause`` of `BatchAborted` when the budget's action is
    ``"abort"``; carried by the ``ab.BudgetExhausted`` event either way.

    Attributes:
        reason: the limit that was exceeded: ``"max_failures"``,
            ``"max_failure_rate"``, ``"per_kind"`` or ``"max_retry_ratio"``.
        limit: that limit's value.
        observed: the value that exceeded it (a count, rate or ratio).
        failures: failed jobs so far (DEAD_LETTERED or FAILED).
        jobs: finished jobs so far.
        retries: retries scheduled so far.
        kind: the `ErrorKind` for a ``per_kind`` limit, else None.
        action: the budget's action, ``"abort"`` or ``"alert"``.
    """

    def __init__(
        self,
        *,
        reason: str,
        limit: float,
        observed: float,
        failures: int,
        jobs: int,
        retries: int = 0,
        kind: ErrorKind | None = None,
        action: str = "abort",
    ) -> None:
        self.reason = reason
        self.limit = limit
        self.observed = observed
        self.failures = failures
        self.jobs = jobs
        self.retries = retries
        self.kind = kind
        self.action = action
        super().__init__(self._message())

    def _message(self) -> str:
        if self.reason == "max_failures":
            return (
                f"{self.failures} failed jobs exceed max_failures={self.limit:g} "
                f"(after {self.jobs} jobs)"
            )
        if self.reason == "max_retry_ratio":
            return (
                f"retry ratio {self.observed:.3g} ({self.retries} retries over "
                f"{self.jobs} jobs) exceeds max_retry_ratio={self.limit:g}"
            )
        if self.reason == "per_kind" and self.kind is not None:
            failed = round(self.observed * self.jobs)
            return (
                f"{self.kind.value} failure rate {self.observed:.1%} ({failed} of "
                f"{self.jobs} jobs) exceeds per_kind[{self.kind.value}]={self.limit:.4g}"
            )
        return (
            f"failure rate {self.observed:.1%} ({self.failures} of {self.jobs} jobs) "
            f"exceeds max_failure_rate={self.limit:.4g}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only __init__: rebuild from the fields, not from self.args.
        return (_rebuild, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """The verdict's fields, JSON-safe (``kind`` by value)."""
        return {
            "reason": self.reason,
            "limit": self.limit,
            "observed": self.observed,
            "failures": self.failures,
            "jobs": self.jobs,
            "retries": self.retries,
            "kind": None if self.kind is None else self.kind.value,
            "action": self.action,
        }


def _rebuild(fields: dict[str, Any]) -> BudgetExceeded:
    kind = fields.get("kind")
    return BudgetExceeded(**{**fields, "kind": None if kind is None else ErrorKind(kind)})


_SUCCEEDED = JobStatus.SUCCEEDED
_DEAD = JobStatus.DEAD_LETTERED
_FAILED = JobStatus.FAILED


class BudgetTracker:
    """Counts one run's failures against an `ErrorBudget`.

    The executor calls `record_attempt` on every failed attempt and
    `record_job` on every finished job; each returns the `BudgetExceeded`
    verdict the first time the budget is exhausted and None otherwise. Both
    are on the hot path: a success costs an increment and one comparison.
    With ``judge=False`` it only counts (a worker of a shared run: the
    budget is judged on every worker's counts summed, see `judge_totals`).
    """

    __slots__ = (
        "_exhausted",
        "_judge_at",
        "_judges",
        "_per_kind",
        "attempts",
        "budget",
        "by_kind",
        "failures",
        "jobs",
        "retries",
        "verdict",
    )

    def __init__(self, budget: ErrorBudget, *, judge: bool = True) -> None:
        self.budget = budget
        self._judges = judge
        self.jobs = 0
        self.failures = 0
        self.attempts = 0
        self.retries = 0
        self.by_kind = dict.fromkeys(ErrorKind, 0)
        self.verdict: BudgetExceeded | None = None
        self._exhausted = False
        # Rates are judged from this many finished jobs on (never on zero jobs).
        self._judge_at: float = max(budget.min_jobs, 1) if judge else math.inf
        self._per_kind = tuple((ErrorKind(k), v) for k, v in (budget.per_kind or {}).items())

    @property
    def exhausted(self) -> bool:
        """True once the budget has been exhausted."""
        return self._exhausted

    def record_attempt(self, kind: ErrorKind, will_retry: bool) -> BudgetExceeded | None:
        """Count one failed attempt (a retry when ``will_retry``)."""
        self.attempts += 1
        if not will_retry:
            return None
        self.retries += 1
        limit = self.budget.max_retry_ratio
        if (
            limit is None
            or self._exhausted
            or self.jobs < self._judge_at
            or self.retries / self.jobs <= limit
        ):
            return None
        return self._exceeded("max_retry_ratio", limit, self.retries / self.jobs)

    def record_job(self, outcome: JobOutcome[Any]) -> BudgetExceeded | None:
        """Count one finished job; judge the limits when it can change a verdict."""
        status = outcome.status
        if status is _SUCCEEDED:
            self.jobs += 1
            # A success only lowers the rates; it matters once: when judging starts.
            if self.jobs == self._judge_at and not self._exhausted:
                return self._judge()
            return None
        if status is not _DEAD and status is not _FAILED:
            return None
        self.jobs += 1
        self.failures += 1
        if outcome.kind is not None:
            self.by_kind[outcome.kind] += 1
        if self._exhausted:
            return None
        return self._judge()

    def judge_totals(
        self, *, jobs: int, failures: int, retries: int, by_kind: Mapping[str, int]
    ) -> BudgetExceeded | None:
        """Judge counts summed elsewhere (every worker of a shared run); the verdict once."""
        if self._exhausted:
            return None
        self.jobs, self.failures, self.retries = jobs, failures, retries
        self.by_kind = {k: int(by_kind.get(k.value, 0)) for k in ErrorKind}
        return self._judge()

    def totals(self) -> dict[str, Any]:
        """What `judge_totals` sums over workers: this tracker's counts, JSON-safe."""
        return {
            "jobs": self.jobs,
            "failures": self.failures,
            "retries": self.retries,
            "by_kind": {k.value: n for k, n in self.by_kind.items()},
        }

    def _judge(self) -> BudgetExceeded | None:
        if not self._judges:
            return None
        b = self.budget
        jobs, failures = self.jobs, self.failures
        if b.max_failures is not None and failures > b.max_failures:
            return self._exceeded("max_failures", b.max_failures, failures)
        if jobs < self._judge_at:
            return None
        if b.max_failure_rate is not None and failures / jobs > b.max_failure_rate:
            return self._exceeded("max_failure_rate", b.max_failure_rate, failures / jobs)
        for kind, limit in self._per_kind:
            rate = self.by_kind[kind] / jobs
            if rate > limit:
                return self._exceeded("per_kind", limit, rate, kind)
        ratio = b.max_retry_ratio
        if ratio is not None and self.retries / jobs > ratio:
            return self._exceeded("max_retry_ratio", ratio, self.retries / jobs)
        return None

    def _exceeded(
        self, reason: str, limit: float, observed: float, kind: ErrorKind | None = None
    ) -> BudgetExceeded:
        self._exhausted = True
        self.verdict = BudgetExceeded(
            reason=reason,
            limit=limit,
            observed=observed,
            failures=self.failures,
            jobs=self.jobs,
            retries=self.retries,
            kind=kind,
            action=self.budget.action,
        )
        return self.verdict

    def state(self) -> dict[str, Any]:
        """A JSON-safe snapshot for the report: limits, observed values, verdict."""
        jobs = self.jobs
        verdict = self.verdict
        return {
            "action": self.budget.action,
            "limits": self.budget.limits(),
            "jobs": jobs,
            "failures": self.failures,
            "failure_rate": self.failures / jobs if jobs else 0.0,
            "failures_by_kind": {k.value: n for k, n in self.by_kind.items()},
            "failed_attempts": self.attempts,
            "retries": self.retries,
            "retry_ratio": self.retries / jobs if jobs else 0.0,
            "exhausted": self._exhausted,
            "reason": None if verdict is None else verdict.reason,
            "message": None if verdict is None else str(verdict),
            "verdict": None if verdict is None else verdict.to_dict(),
        }
