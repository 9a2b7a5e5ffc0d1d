"""asyncbatch: asyncio-native batch pipelines that finish fast and lose nothing.

Fan out ``async def`` jobs with bounded concurrency, classify every failure and
handle it by kind (retry with jittered backoff, dead-letter, abort), checkpoint
so a crashed run resumes, cut failing dependencies off with circuit breakers,
and see what happened: reports, OpenTelemetry spans and metrics, events.
"""

import typing as _typing

from ._batch import Batch, redrive, rollback, run_batch
from ._breaker import Breaker
from ._budget import BudgetExceeded, ErrorBudget
from ._classify import Classifier, ErrorKind, RejectedResult, Rule
from ._context import JobContext, current_job
from ._errors import (
    AsyncBatchError,
    BatchAborted,
    CircuitOpen,
    ConfigError,
    DeadlineExceeded,
    FatalError,
    PermanentError,
    RecoverableError,
    StoreError,
    TransientError,
    UnknownRun,
)
from ._events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    BudgetExhausted,
    Event,
    Hook,
    JobDeadLettered,
    LoggingHook,
    RetryScheduled,
    RunAborted,
    RunFinished,
    RunStarted,
)
from ._guard import Rate, guard
from ._report import ErrorReport, FailureGroup
from ._result import AttemptRecord, BatchResult, DeadLetter, JobOutcome, JobStatus
from ._retry import Backoff, Decision, Retry, RetryPolicy
from ._store import MemoryStore, SQLiteStore, Store, open_store

if _typing.TYPE_CHECKING:
    from . import http as http

__version__ = "0.1.0"

__all__ = [
    "AsyncBatchError",
    "AttemptRecord",
    "Backoff",
    "Batch",
    "BatchAborted",
    "BatchResult",
    "Breaker",
    "BreakerClosed",
    "BreakerHalfOpen",
    "BreakerOpened",
    "BudgetExceeded",
    "BudgetExhausted",
    "CircuitOpen",
    "Classifier",
    "ConfigError",
    "DeadLetter",
    "DeadlineExceeded",
    "Decision",
    "ErrorBudget",
    "ErrorKind",
    "ErrorReport",
    "Event",
    "FailureGroup",
    "FatalError",
    "Hook",
    "JobContext",
    "JobDeadLettered",
    "JobOutcome",
    "JobStatus",
    "LoggingHook",
    "MemoryStore",
    "PermanentError",
    "Rate",
    "RecoverableError",
    "RejectedResult",
    "Retry",
    "RetryPolicy",
    "RetryScheduled",
    "Rule",
    "RunAborted",
    "RunFinished",
    "RunStarted",
    "SQLiteStore",
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


def __getattr__(name: str) -> object:
    # `ab.http` on first use: the module is small, but `import asyncbatch` stays minimal.
    if name == "http":
        import importlib

        return importlib.import_module(f"{__name__}.http")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
