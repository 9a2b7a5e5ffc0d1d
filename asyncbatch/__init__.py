"""asyncbatch: asyncio-native batch pipelines that finish fast and lose nothing.

Fan out ``async def`` jobs with bounded concurrency, classify every failure and
handle it by kind (retry with jittered backoff, dead-letter, abort), checkpoint
so a crashed run resumes, cut failing dependencies off with circuit breakers,
and see what happened: reports, OpenTelemetry spans and metrics, events.
"""

import typing as _typing

from ._context import JobContext, current_job
from ._deps import Adaptive, Breaker, Rate, guard
from ._errors import (
    AsyncBatchError,
    BatchAborted,
    ChunkResultError,
    CircuitOpen,
    ConfigError,
    DeadlineExceeded,
    DuplicateKey,
    ErrorKind,
    FatalError,
    HandlerError,
    ItemError,
    PermanentError,
    RecoverableError,
    RunOwned,
    StoreError,
    TransientError,
    UnknownRun,
)
from ._observe._events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    BudgetExhausted,
    ConcurrencyChanged,
    Event,
    Hook,
    JobDeadLettered,
    JobsWaiting,
    LoggingHook,
    RetryScheduled,
    RunAborted,
    RunFinished,
    RunStarted,
)
from ._observe._report import ErrorReport, FailureGroup
from ._policy._budget import BudgetExceeded, ErrorBudget
from ._policy._classify import Classifier, RejectedResult, Rule
from ._policy._retry import (
    Backoff,
    Decision,
    Retry,
    RetryPolicy,
)
from ._policy._retry_budget import RetryBudget
from ._result import (
    AttemptRecord,
    BatchResult,
    DeadLetter,
    JobOutcome,
    JobStatus,
)
from ._run._batch import (
    Batch,
    redrive,
    rollback,
    run_batch,
)
from ._run._control import Progress
from ._run._hedge import Hedge
from ._run._options import BatchOptions
from ._run._shared_run import SharedRun
from ._store import (
    MemoryStore,
    Store,
    open_store,
)
from ._store._codec import ResultCodec
from ._version import __version__

if _typing.TYPE_CHECKING:
    from . import http as http
    from ._store._postgres import PostgresStore as PostgresStore
    from ._store._sqlite import SQLiteStore as SQLiteStore

__all__ = [
    "Adaptive",
    "AsyncBatchError",
    "AttemptRecord",
    "Backoff",
    "Batch",
    "BatchAborted",
    "BatchOptions",
    "BatchResult",
    "Breaker",
    "BreakerClosed",
    "BreakerHalfOpen",
    "BreakerOpened",
    "BudgetExceeded",
    "BudgetExhausted",
    "ChunkResultError",
    "CircuitOpen",
    "Classifier",
    "ConcurrencyChanged",
    "ConfigError",
    "DeadLetter",
    "DeadlineExceeded",
    "Decision",
    "DuplicateKey",
    "ErrorBudget",
    "ErrorKind",
    "ErrorReport",
    "Event",
    "FailureGroup",
    "FatalError",
    "HandlerError",
    "Hedge",
    "Hook",
    "ItemError",
    "JobContext",
    "JobDeadLettered",
    "JobOutcome",
    "JobStatus",
    "JobsWaiting",
    "LoggingHook",
    "MemoryStore",
    "PermanentError",
    "PostgresStore",
    "Progress",
    "Rate",
    "RecoverableError",
    "RejectedResult",
    "ResultCodec",
    "Retry",
    "RetryBudget",
    "RetryPolicy",
    "RetryScheduled",
    "Rule",
    "RunAborted",
    "RunFinished",
    "RunOwned",
    "RunStarted",
    "SQLiteStore",
    "SharedRun",
    "Store",
    "StoreError",
    "TransientError",
    "UnknownRun",
    "__version__",
    "current_job",
    "guard",
    "open_store",
    "redrive",
    "rollback",
    "run_batch",
]


_LAZY = ("PostgresStore", "SQLiteStore")
"""Public names imported on first use: `import asyncbatch` imports neither asyncpg nor aiosqlite."""


def __getattr__(name: str) -> object:
    # `ab.http` on first use: the module is small, but `import asyncbatch` stays minimal.
    if name == "http":
        import importlib

        return importlib.import_module(f"{__name__}.http")
    if name == "SQLiteStore":
        from ._store._sqlite import SQLiteStore

        globals()[name] = SQLiteStore
        return SQLiteStore
    if name == "PostgresStore":
        try:
            from ._store._postgres import PostgresStore
        except ModuleNotFoundError as exc:
            if exc.name != "asyncpg":
                raise
            raise ImportError(
                "ab.PostgresStore needs asyncpg: pip install 'asyncbatch[postgres]'",
                name="asyncpg",
            ) from None
        globals()[name] = PostgresStore  # later look-ups skip this function
        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
