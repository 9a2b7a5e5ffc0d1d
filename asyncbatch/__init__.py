"""asyncbatch: asyncio-native batch pipelines that finish fast and lose nothing.

Fan out ``async def`` jobs with bounded concurrency, classify every failure and
handle it by kind (retry with jittered backoff, dead-letter, abort), checkpoint
so a crashed run resumes, cut failing dependencies off with circuit breakers,
and see what happened: reports, OpenTelemetry spans and metrics, events.
"""

from ._context import JobContext, current_job
from ._deps import Breaker, Rate, guard
from ._errors import (
    AsyncBatchError,
    BatchAborted,
    CircuitOpen,
    ConfigError,
    DeadlineExceeded,
    ErrorKind,
    FatalError,
    HandlerError,
    PermanentError,
    RecoverableError,
    StoreError,
    TransientError,
    UnknownRun,
)
from ._observe._events import (
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
from ._observe._report import ErrorReport, FailureGroup
from ._policy._budget import BudgetExceeded, ErrorBudget
from ._policy._classify import Classifier, RejectedResult, Rule
from ._policy._retry import (
    Backoff,
    Decision,
    Retry,
    RetryPolicy,
)
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
from ._run._options import BatchOptions
from ._store import (
    MemoryStore,
    SQLiteStore,
    Store,
    open_store,
)
from ._version import __version__

__all__ = [
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
    "HandlerError",
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
