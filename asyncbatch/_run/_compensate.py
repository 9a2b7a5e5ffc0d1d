"""Saga rollback: undo succeeded jobs, newest first, each with its own retries.

When a batch aborts and ``compensate=`` is set, every job that succeeded (in
this run or an earlier run of the same run id) is undone with
``await compensate(item, result)`` in reverse completion order, one at a time
so that later effects are undone before the ones they may depend on.

Progress is checkpointed: the run is marked ``"compensating"`` first, and each
undone job is committed as COMPENSATED. A crash during rollback therefore
resumes the rollback (not the batch) when the same run id is run again. A
compensation that fails for good leaves the job SUCCEEDED with the failure
recorded (``compensation_error``) and reported. Undo functions should be
idempotent: after a crash the one in flight runs again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from asyncbatch._policy._retry import Retry
from asyncbatch._result import JobOutcome, JobStatus
from asyncbatch._store import JobRecord, Store

__all__ = ["Compensation", "Done", "compensate_all"]

Undo = Callable[[Any, Any], Awaitable[Any]]


@dataclass(slots=True)
class Done:
    """A succeeded job that may need undoing."""

    key: str
    item: Any
    result: Any
    index: int | None
    status: JobStatus | None
    """How this invocation reported it: SUCCEEDED, SKIPPED (an earlier one's), or
    None (an earlier one's this invocation never reached)."""


@dataclass(slots=True)
class Compensation:
    """What a rollback did (the report's ``compensation`` section)."""

    compensated: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary."""
        return {
            "compensated": self.compensated,
            "failed": len(self.failed),
            "failures": dict(list(self.failed.items())[:20]),
            "resumed": self.resumed,
        }


async def compensate_all(
    done: list[Done],
    undo: Undo,
    *,
    run_id: str,
    store: Store | None,
    durability: Any,
    retry: Retry,
    rng: random.Random,
    ack: Callable[[JobOutcome[Any], JobStatus | None], None],
    summary: Compensation,
) -> None:
    """Undo ``done`` (given oldest first) newest first; checkpoint each step.

    Args:
        done: the succeeded jobs in completion order.
        undo: the user's ``compensate(item, result)``.
        run_id: the run being rolled back.
        store: where progress is committed (None: in memory only).
        durability: the run's durability level for those commits.
        retry: attempts and backoff for each compensation.
        rng: jitter source.
        ack: called with the new outcome and the status it replaces.
        summary: filled in as compensations succeed or fail.
    """
    for job in reversed(done):
        started = time.perf_counter()
        error: Exception | None = None
        previous = 0.0
        for attempt in range(1, retry.attempts + 1):
            try:
                await undo(job.item, job.result)
            except Exception as exc:
                error = exc
                if attempt < retry.attempts:
                    previous = retry.backoff.delay(attempt, previous, rng)
                    await anyio.sleep(previous)
                continue
            error = None
            break
        record = JobRecord(
            run_id=run_id,
            key=job.key,
            index=job.index,
            status=JobStatus.COMPENSATED if error is None else JobStatus.SUCCEEDED,
            result=job.result,
            has_result=True,
            compensation_error=None if error is None else f"{type(error).__name__}: {error}",
        )
        if store is not None:
            await store.commit([record], durability=durability)
        if error is not None:
            summary.failed[job.key] = f"{type(error).__name__}: {error}"
            continue
        summary.compensated += 1
        ack(
            JobOutcome(
                key=job.key,
                status=JobStatus.COMPENSATED,
                result=job.result,
                duration=time.perf_counter() - started,
                index=job.index,
            ),
            job.status,
        )
