"""The exception tree of asyncbatch.

::

    Exception
     ├── AsyncBatchError                 everything asyncbatch itself raises
     │    ├── BatchAborted               a FATAL error or an exhausted budget stopped the run
     │    ├── HandlerError               a ``classify=`` or ``on_error=`` callable raised
     │    ├── CircuitOpen                a dependency's breaker rejected the call
     │    ├── ChunkResultError (TypeError)  a chunked job's results do not match its items
     │    ├── DeadlineExceeded (TimeoutError)  a job ran out of its ``deadline=``
     │    ├── StoreError                 the store cannot be opened, read or written
     │    │    ├── UnknownRun            no run with that id in the store
     │    │    └── RunOwned              another process owns (is running) that run
     │    └── ConfigError (ValueError)   bad options: the message says how to fix them
     │         └── DuplicateKey          two items of one run have the same job key
     │
     │   Markers a job raises (or subclasses) to classify its failure explicitly:
     ├── TransientError                  retry soon
     ├── RecoverableError                retry with backoff
     ├── PermanentError                  never retry, dead-letter the job
     └── FatalError                      abort the whole batch

A chunked job (``batch_size=``) puts ``ItemError(exc)`` (a value, not an
exception) in its results to fail one item.

``asyncio.CancelledError``, ``KeyboardInterrupt`` and ``SystemExit`` are never
classified, retried or wrapped: they propagate.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._result import BatchResult

__all__ = [
    "AsyncBatchError",
    "BatchAborted",
    "ChunkResultError",
    "CircuitOpen",
    "ConfigError",
    "DeadlineExceeded",
    "DuplicateKey",
    "ErrorKind",
    "FatalError",
    "HandlerError",
    "ItemError",
    "PermanentError",
    "RecoverableError",
    "RunOwned",
    "StoreError",
    "TransientError",
    "UnknownRun",
    "qualname",
    "tame_message",
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

    __hash__ = str.__hash__  # C, and agrees with ``==`` (see `JobStatus`)

    def __str__(self) -> str:
        return self.value


def qualname(exc_type: type[BaseException]) -> str:
    """``module.QualName`` of an exception type (builtins without module)."""
    mod = exc_type.__module__
    return exc_type.__qualname__ if mod == "builtins" else f"{mod}.{exc_type.__qualname__}"


def tame_message(exc: BaseException) -> None:
    """Make ``str(exc)`` safe to call: an argument nested too deeply to print is replaced.

    A job may raise with an argument nested deeper than the recursion limit
    (``ValueError(item)`` for a deeply nested item); every ``str(exc)`` on
    the way to the report, the DLQ and the trace would then raise
    `RecursionError` and crash the run. Such an exception's arguments become
    one short line naming what they were; any other exception is untouched.
    """
    try:
        str(exc)
    except RecursionError:
        kinds = ", ".join(type(a).__name__ for a in exc.args)
        exc.args = (f"<{type(exc).__name__}({kinds}) nested too deeply to show>",)


class AsyncBatchError(Exception):
    """Base class of the errors asyncbatch raises itself."""


class ConfigError(AsyncBatchError, ValueError):
    """An option has a value asyncbatch cannot use; the message says how to fix it."""


class DuplicateKey(ConfigError):
    """Two items of one run have the same job key; the second is refused, not merged.

    Jobs are stored, skipped on resume and dead-lettered by key, so two items
    with one key would share one stored outcome (and on resume one would get
    the other's result). The run stops admitting at the second item, lets
    the jobs already started finish, and raises this.

    Attributes:
        key: the job key.
        first: the input position of the item that has it (None if unknown).
        second: the input position of the duplicate.
    """

    def __init__(self, key: str, first: int | None, second: int | None) -> None:
        self.key = key
        self.first = first
        self.second = second
        where = "an earlier item" if first is None else f"input position {first}"
        super().__init__(
            f"duplicate job key {key!r}: input position {second} has the key of {where}; "
            "keys must be unique within a run (check key=, or the --key field)"
        )


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


class RunOwned(StoreError):
    """Another process owns this run: a run is run by one process at a time.

    The owner holds a lease on the run that it renews while it runs; a lease
    that is not renewed (or whose process is gone) is taken over at once.

    Attributes:
        run_id: the run.
        owner: who holds it, ``host:pid:token``.
        since: epoch seconds since which it has held it (None when unknown).
    """

    def __init__(self, run_id: str, owner: str, since: float | None = None) -> None:
        self.run_id = run_id
        self.owner = owner
        self.since = since
        when = ""
        if since is not None:
            when = time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
        super().__init__(
            f"run {run_id!r} is owned by another process, {owner}{when}: wait for it to "
            "finish or stop it (a stopped owner is taken over at once), or use another run id"
        )

    def __reduce__(self) -> tuple[type[RunOwned], tuple[str, str, float | None]]:
        return (RunOwned, (self.run_id, self.owner, self.since))  # survives pickling


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


class ChunkResultError(AsyncBatchError, TypeError):
    """A chunked job (``batch_size=``) returned results that cannot be paired with its items.

    A bug in the job, not in the items: the run is aborted (FATAL) rather
    than guessing which result belongs to which item.
    """

    def __init__(self, problem: str, size: int) -> None:
        self.problem = problem
        self.size = size
        super().__init__(
            f"a chunked job got {size} item(s) and {problem}; HINT: return one result "
            "per item in the same order (a list), or a mapping {key: result} with every "
            "key of the chunk; put ab.ItemError(exc) in place of an item that failed"
        )


class ItemError:
    """One item's failure inside a chunked job's results (``batch_size=``).

    ``return [result0, ab.ItemError(ValueError("bad row")), result2]`` fails
    the second item alone: its error is classified like an exception the job
    raised for it (retried alone or in a later chunk, or dead-lettered),
    while the other items succeed.

    Args:
        error: the item's exception.

    Raises:
        TypeError: ``error`` is not an exception.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        if not isinstance(error, Exception):
            raise TypeError(f"ab.ItemError takes an exception, got {error!r}")
        self.error = error

    def __repr__(self) -> str:
        return f"ItemError({self.error!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemError) and other.error is self.error

    def __hash__(self) -> int:
        return id(self.error)
