"""OpenTelemetry names and the attribute sets shared by spans and metrics.

Attribute sets are built once and shared: the SDK takes any mapping, and the
per-attempt path then allocates nothing for them.
"""

from __future__ import annotations

from collections.abc import Mapping

from asyncbatch._errors import ErrorKind
from asyncbatch._result import JobStatus

SCOPE = "asyncbatch"
RUN_SPAN = "asyncbatch.run"
ATTEMPT_SPAN = "asyncbatch.attempt"

RUN_ID = "asyncbatch.run.id"
JOB_KEY = "asyncbatch.job.key"
JOB_STATUS = "asyncbatch.job.status"
ATTEMPT_NUMBER = "asyncbatch.attempt.number"
ATTEMPT_OUTCOME = "asyncbatch.attempt.outcome"
ERROR_KIND = "asyncbatch.error.kind"
ERROR_TYPE = "error.type"
RETRY_DELAY = "asyncbatch.retry.delay"
DEPENDENCY = "asyncbatch.dependency"
HEDGE_EXTRA = "asyncbatch.hedge.extra"
"""Extra (hedged) calls an attempt started."""
HEDGE_WON = "asyncbatch.hedge.won"
"""Whether the attempt's result came from a hedged call."""
BREAKER_STATE = "asyncbatch.breaker.state"
CHUNK_SIZE = "asyncbatch.chunk.size"
"""Items in a chunked call (``batch_size=``): the attempt span covers them all."""
CHUNK_FAILED = "asyncbatch.chunk.failed"
"""Items of a chunked call that failed (their ``asyncbatch.item`` events say how)."""
ITEM_EVENT = "asyncbatch.item"

SUCCESS, FAILURE, REJECTED, CANCELLED = "success", "failure", "rejected", "cancelled"

# Seconds, from 5 ms to a minute: the semantic conventions' boundaries for
# durations in seconds, stretched for slow jobs (the SDK default assumes ms).
DURATION_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75),
    *(1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0),
)

# Attempt outcomes are indices into ATTEMPT_ATTRS (and into the per-meter attempt counts).
_ATTEMPT_ATTRS: tuple[Mapping[str, str], ...] = (
    {ATTEMPT_OUTCOME: SUCCESS},
    {ATTEMPT_OUTCOME: REJECTED},
    {ATTEMPT_OUTCOME: CANCELLED},
    {ATTEMPT_OUTCOME: FAILURE},  # an error escaped unclassified
    *({ATTEMPT_OUTCOME: FAILURE, ERROR_KIND: k.value} for k in ErrorKind),
)
_SUCCESS, _REJECTED, _CANCELLED, _UNCLASSIFIED = range(4)
_FAILED: dict[ErrorKind, int] = {k: 4 + i for i, k in enumerate(ErrorKind)}
_STATUS_ATTRS: tuple[Mapping[str, str], ...] = tuple({JOB_STATUS: s.value} for s in JobStatus)
_STATUS: dict[JobStatus, int] = {s: i for i, s in enumerate(JobStatus)}
