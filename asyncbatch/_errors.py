"""The exception tree of asyncbatch.

::

    Exception
     ├── AsyncBatchError                 everything asyncbatch itself raises
     │    ├── BatchAborted               a FATAL error or an exhausted budget stopped the run
     │    ├── HandlerError               a ``classify=`` or ``on_error=`` callable raised
     │    ├── CircuitOpen                a dependency's breaker rejected the call
     │    ├── DeadlineExceeded (TimeoutError)  a job ran out of its ``deadline=``
     │    ├── StoreError                 the store cannot be opened, read or written
     │    │    └── UnknownRun            no run with that id in the store
     │    └── ConfigError (ValueError)   bad options: the message says how to fix them
     │
     │   Markers a job raises (or subclasses) to classify its failure explicitly:
     ├── TransientError                  retry soon
     ├── RecoverableError                retry with backoff
     ├── PermanentError                  never retry, dead-letter the job
     └── FatalError                      abort the whole batch

``asyncio.CancelledError``, ``KeyboardInterrupt`` and ``SystemExit`` are never
classified, retried or wrapped: they propagate.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._result import BatchResult

__all__ = [
    "AsyncBatchError",
    "BatchAborted",
    "CircuitOpen",
    "ConfigError",
    "DeadlineExceeded",
    "ErrorKind",
    "FatalError",
    "HandlerError",
    "PermanentError",
    "RecoverableError",
    "StoreError",
    "TransientError",
    "UnknownRun",
    "qualname",
]


class ErrorKind(enum.StrEnum):
    """What a failure means for the job, and so how it is handled."""

    TRANSIENT = "transient"
    """Retry soon: a blip (timeout, dropped connection, 503)."""
    RECOVERABLE = "recoverable"
    """Retry with backoff: the dependency needs time (429, overload)."""
    PERMANENT = "permanent"
    """Never retry: the item itself is bad. The job is dead-lettered."""
    FATAL = "fatal"
    """Abort the batch: nothing else will succeed (bad credentials, disk full)."""

    def __str__(self) -> str:
        return self.value


def qualname(exc_type: type[BaseException]) -> str:
    """``module.QualName`` of an exception type (builtins without module)."""
    mod = exc_type.__module__
    return exc_type.__qualname__ if mod == "builtins" else f"{mod}.{exc_type.__qualname__}"


class AsyncBatchError(Exception):
    """Base class of the errors asyncbatch raises itself."""


class ConfigError(AsyncBatchError, ValueError):
    """An option has a value asyncbatch cannot use; the message says how to fix it."""


class StoreError(AsyncBatchError):
    """The store could not be opened, read or written."""


class UnknownRun(StoreError, LookupError):
    """The store holds no run with this id.

    Attributes:
        run_id: the id that was asked for.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run {run_id!r} in this store (list runs with `asyncbatch runs`)")


class BatchAborted(AsyncBatchError):
    """A FATAL error or an exhausted error budget aborted the batch.

    Attributes:
        result: the partial `BatchResult` (finished jobs, the rest CANCELLED).
        cause: the fatal exception or the budget verdict; also ``__cause__``.
    """

    def __init__(self, result: BatchResult[Any], cause: BaseException) -> None:
        self.result = result
        self.cause = cause
        super().__init__(f"batch {result.run_id!r} aborted: {type(cause).__name__}: {cause}")


class HandlerError(AsyncBatchError):
    """A ``classify=`` or ``on_error=`` callable raised (or returned nonsense).

    The run stops at once: in-flight attempts are cancelled, finished jobs
    stay committed, the run is stored with status ``"failed"`` and this
    error's message in its report, and no compensation runs (the batch did
    not decide to roll back; a handler has a bug). Fix the handler and run
    again with the same ``run_id`` to resume. The handler's own exception is
    ``__cause__``.

    Attributes:
        handler: which option raised: ``"classify"`` or ``"on_error"``.
        name: the callable's qualified name.
        key: the job whose failure was being handled.
        error: what the handler raised (also ``__cause__``).
    """

    def __init__(self, handler: str, name: str, key: str, error: BaseException) -> None:
        self.handler = handler
        self.name = name
        self.key = key
        self.error = error
        super().__init__(
            f"{handler}= handler {name} failed on job {key!r}: {type(error).__name__}: {error}; "
            "the run stopped (status 'failed'): fix the handler and run again to resume"
        )
        self.__cause__ = error


class CircuitOpen(AsyncBatchError):
    """The circuit breaker of `dependency` is open and rejected the call.

    Attributes:
        dependency: the guarded dependency's name.
        retry_in: seconds until the breaker lets a probe through (0 when unknown).
    """

    def __init__(self, dependency: str, retry_in: float = 0.0) -> None:
        self.dependency = dependency
        self.retry_in = retry_in
        super().__init__(f"circuit for {dependency!r} is open (probe in {retry_in:.3g}s)")


class DeadlineExceeded(AsyncBatchError, TimeoutError):
    """A job used up its ``deadline=`` (all attempts and backoff together).

    Attributes:
        key: the job key.
        deadline: the deadline in seconds.
    """

    def __init__(self, key: str, deadline: float) -> None:
        self.key = key
        self.deadline = deadline
        super().__init__(f"job {key!r} exceeded its deadline of {deadline:g}s")


class TransientError(Exception):
    """Raise (or subclass) to mark a failure TRANSIENT: retried soon."""


class RecoverableError(Exception):
    """Raise (or subclass) to mark a failure RECOVERABLE: retried with backoff."""


class PermanentError(Exception):
    """Raise (or subclass) to mark a failure PERMANENT: no retry, dead-lettered."""


class FatalError(Exception):
    """Raise (or subclass) to mark a failure FATAL: the whole batch aborts."""
