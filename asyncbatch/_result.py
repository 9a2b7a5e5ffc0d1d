"""The values a batch produces: job outcomes, attempt records, dead letters, the result."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from ._errors import ErrorKind

if TYPE_CHECKING:
    from ._observe._report import ErrorReport

__all__ = [
    "AttemptRecord",
    "BatchResult",
    "DeadLetter",
    "JobOutcome",
    "JobStatus",
    "all_ok",
    "count_statuses",
    "fast_outcome",
]

R = TypeVar("R")


class JobStatus(enum.StrEnum):
    """How a job ended."""

    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    """Failed for good (PERMANENT, or retries exhausted); parked in the DLQ."""
    FAILED = "failed"
    """Failed with the error that aborted the batch."""
    SKIPPED = "skipped"
    """Already finished in an earlier run with the same run_id."""
    COMPENSATED = "compensated"
    """Succeeded, then undone by ``compensate=`` when the batch aborted."""
    CANCELLED = "cancelled"
    """Never finished: the batch was aborted or cancelled first."""

    # `Enum.__hash__` is a Python function (``hash(self._name_)``): every dict
    # keyed by a status (counts, report groups) paid a Python call per lookup.
    # The value's own hash is C, and agrees with ``==`` ("succeeded" == SUCCEEDED).
    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    """One failed attempt of a job.

    Attributes:
        number: 1-based attempt number.
        started_at: wall-clock start, seconds since the epoch.
        duration: seconds the attempt ran.
        kind: how the failure was classified.
        error_type: qualified name of the exception type.
        message: the exception's message.
    """

    number: int
    started_at: float
    duration: float
    kind: ErrorKind
    error_type: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "number": self.number,
            "started_at": self.started_at,
            "duration": self.duration,
            "kind": self.kind.value,
            "error_type": self.error_type,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttemptRecord:
        """Inverse of `to_dict`."""
        return cls(
            number=int(d["number"]),
            started_at=float(d["started_at"]),
            duration=float(d["duration"]),
            kind=ErrorKind(d["kind"]),
            error_type=str(d["error_type"]),
            message=str(d["message"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOutcome(Generic[R]):
    """How one job ended.

    Attributes:
        key: the job key (input position by default).
        status: the `JobStatus`.
        result: the job's return value (SUCCEEDED, or SKIPPED when stored).
        error: the last exception (DEAD_LETTERED, FAILED), else None.
        attempts: attempts spent (0 when skipped or never started).
        duration: seconds from the first attempt's start to the end.
        index: position of the item in the input (None for redriven jobs).
        kind: the last failure's `ErrorKind`, if any.
        history: one `AttemptRecord` per failed attempt.
        fell_back: True when the result came from a breaker's fallback.
    """

    key: str
    status: JobStatus
    result: R | None = None
    error: BaseException | None = None
    attempts: int = 0
    duration: float = 0.0
    index: int | None = None
    kind: ErrorKind | None = None
    history: tuple[AttemptRecord, ...] = ()
    fell_back: bool = False

    @property
    def ok(self) -> bool:
        """True for SUCCEEDED and SKIPPED."""
        return self.status in (JobStatus.SUCCEEDED, JobStatus.SKIPPED)


class _Building(JobOutcome[Any]):
    """`JobOutcome` with writable attributes: the success path's outcomes are built as one.

    A frozen dataclass assigns each field through ``object.__setattr__`` (and
    writing the slots through their descriptors still costs a call each); on
    the hot path, where a no-op job costs ~2 µs in all, that was a third of it.
    `fast_outcome` writes the fields of a `_Building` with plain attribute
    writes and then turns it into a `JobOutcome` (``__class__`` assignment:
    a subclass adding no slots has the same layout, which Python checks
    without comparing slot names). The result is an ordinary, immutable
    `JobOutcome`: same type, equality, hash and repr as one built by its own
    constructor.
    """

    __slots__ = ()
    # Both, so that attribute writes are the plain slot writes (the frozen
    # class's __delattr__ alone would route every write through Python).
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


_new = object.__new__


def fast_outcome(
    key: str, status: JobStatus, result: Any, attempts: int, duration: float, index: int | None
) -> JobOutcome[Any]:
    """A success-path `JobOutcome` (a function, not a class call: ~0.7k instructions
    less a job, measured with callgrind)."""
    o: Any = _new(_Building)
    o.key = key
    o.status = status
    o.result = result
    o.error = None
    o.attempts = attempts
    o.duration = duration
    o.index = index
    o.kind = None
    o.history = ()
    o.fell_back = False
    o.__class__ = JobOutcome
    return o  # type: ignore[no-any-return]


DeadLetterStatus = Literal["dead", "redriven", "resolved"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A job parked in the dead-letter queue.

    Attributes:
        id: the entry's id in its store.
        run_id: the run the job belonged to.
        key: the job key.
        payload: the item (JSON), or its ``repr`` when it was not serialisable.
        kind: the last failure's kind.
        error_type: qualified exception type name.
        message: the exception's message.
        traceback: the formatted traceback of the last failure.
        attempts: every failed attempt, oldest first.
        redrive_count: how many times it has been redriven.
        status: ``"dead"``, ``"redriven"`` or ``"resolved"``.
        created_at: when it was dead-lettered (epoch seconds).
        payload_is_repr: True when ``payload`` is only the item's repr.
    """

    id: int
    run_id: str
    key: str
    payload: Any
    kind: ErrorKind
    error_type: str
    message: str
    traceback: str
    attempts: tuple[AttemptRecord, ...]
    redrive_count: int = 0
    status: DeadLetterStatus = "dead"
    created_at: float = 0.0
    payload_is_repr: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (used by ``dlq export``)."""
        return {
            "id": self.id,
            "run_id": self.run_id,
            "key": self.key,
            "payload": self.payload,
            "payload_is_repr": self.payload_is_repr,
            "kind": self.kind.value,
            "error_type": self.error_type,
            "message": self.message,
            "traceback": self.traceback,
            "attempts": [a.to_dict() for a in self.attempts],
            "redrive_count": self.redrive_count,
            "status": self.status,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchResult(Generic[R]):
    """What a batch run produced.

    Attributes:
        run_id: the run's id.
        outcomes: one `JobOutcome` per item, in input order.
        counts: jobs per `JobStatus` (every status present, zeros included).
        report: the `ErrorReport` of the run.
        duration: wall seconds the run took.
    """

    run_id: str
    outcomes: list[JobOutcome[R]]
    counts: dict[JobStatus, int]
    report: ErrorReport
    duration: float = 0.0
    _by_key: dict[str, JobOutcome[R]] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        # A summary, not a dump: a result may hold a million outcomes, and
        # asyncio formats the main task's result into reprs (e.g. on exit of
        # asyncio.run), which cost seconds with the generated repr.
        counts = {s.value: n for s, n in self.counts.items() if n}
        return (
            f"BatchResult(run_id={self.run_id!r}, outcomes=<{len(self.outcomes)}>, "
            f"counts={counts}, ok={self.ok}, duration={self.duration:.3f})"
        )

    @property
    def ok(self) -> bool:
        """True when every job succeeded or was skipped."""
        return all_ok(self.counts)

    @property
    def results(self) -> list[R | None]:
        """The results in input order (None where a job did not succeed)."""
        return [o.result for o in self.outcomes]

    @property
    def dead_letters(self) -> list[JobOutcome[R]]:
        """The outcomes that were dead-lettered."""
        return [o for o in self.outcomes if o.status is JobStatus.DEAD_LETTERED]

    def __getitem__(self, key: str) -> JobOutcome[R]:
        """The outcome of the job with this key."""
        by_key = self._by_key
        if by_key is None:
            by_key = {o.key: o for o in self.outcomes}
            object.__setattr__(self, "_by_key", by_key)
        return by_key[key]


def all_ok(counts: Mapping[JobStatus, int]) -> bool:
    """True when no job ended other than SUCCEEDED or SKIPPED."""
    return all(
        n == 0 for s, n in counts.items() if s not in (JobStatus.SUCCEEDED, JobStatus.SKIPPED)
    )


def count_statuses(outcomes: Mapping[JobStatus, int] | None = None) -> dict[JobStatus, int]:
    """A counts dict with every status present."""
    counts = dict.fromkeys(JobStatus, 0)
    if outcomes:
        counts.update(outcomes)
    return counts
