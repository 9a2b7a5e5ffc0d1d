"""`current_job()`: what a running job can learn about itself."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ["JobContext", "current_job"]


class JobContext:
    """The job that is running in this task.

    Attributes:
        run_id: the batch run's id.
        key: the job key.
        attempt: the 1-based attempt number.
        item: the input item.
        dependency: the guarded dependency the last failure came from, if any.
    """

    __slots__ = ("attempt", "dependency", "item", "key", "run_id")

    def __init__(self, run_id: str, key: str, attempt: int, item: Any) -> None:
        self.run_id = run_id
        self.key = key
        self.attempt = attempt
        self.item = item
        self.dependency: str | None = None

    def __repr__(self) -> str:
        return f"JobContext(run_id={self.run_id!r}, key={self.key!r}, attempt={self.attempt})"


_current: ContextVar[JobContext] = ContextVar("asyncbatch_job")


def current_job() -> JobContext:
    """The `JobContext` of the job running in this task.

    Raises:
        RuntimeError: when called outside a job.
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "ab.current_job() was called outside a job; call it inside the job coroutine"
        ) from None
