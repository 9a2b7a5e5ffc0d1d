"""The `Store` protocol: what the executor needs from a checkpoint store.

Stores are written to by one writer (the run's checkpoint writer task), which
hands them every pending state change at once: `Store.commit` must apply a
whole sequence in ONE transaction (group commit), and only return once it is
durable to the run's ``durability`` level. Nothing here is SQLite-specific so
a PostgreSQL store can implement the same protocol.

Ownership: a run is run by one process at a time. The engine passes an
``owner`` (``host:pid:token``) to `Store.begin_run`, which takes the run's
lease in the same transaction that marks it running (or raises `RunOwned`);
it renews the lease with `Store.heartbeat` every ``lease / 3`` seconds and
releases it with `Store.end_run`. A store keeps three values per run for
this: the owner, since when it has owned the run, and its last heartbeat
(the SQLite and PostgreSQL stores: columns ``owner``, ``owned_since``,
``heartbeat_at`` of ``runs``); `_common.check_lease` is the rule for taking
a run over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from asyncbatch._errors import ErrorKind
from asyncbatch._result import AttemptRecord, DeadLetter, DeadLetterStatus, JobStatus

__all__ = ["DEFAULT_LEASE", "DeadLetterQueue", "FinishedJob", "JobRecord", "RunInfo", "Store"]

DEFAULT_LEASE = 15.0
"""Seconds a run's owner may go without a heartbeat before another process may take it over."""

RunStatus = Literal["running", "finished", "aborted", "failed", "compensating", "interrupted"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    """One run as the store knows it.

    Attributes:
        run_id: the run's id.
        job: the job reference ``module:function`` (empty when not importable).
        status: ``running``, ``finished``, ``aborted``, ``failed`` (a handler raised),
            ``compensating``, ``interrupted``.
        config: JSON-safe summary of the batch options.
        counts: jobs per status value (as of the last `Store.end_run`, or live).
        created_at: epoch seconds of the first start.
        updated_at: epoch seconds of the last change.
        report: the run's `ErrorReport.to_dict()` as of its last end, if any.
    """

    run_id: str
    job: str = ""
    status: RunStatus = "running"
    config: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    report: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """One state change of one job, to be committed.

    ``status`` is the job's new status. For DEAD_LETTERED the store also
    writes (or, when ``redrive_of`` is set, updates) a DLQ entry from
    ``payload``/``traceback``/``history``. For SUCCEEDED with ``redrive_of``
    set, that DLQ entry becomes ``"resolved"``. COMPENSATED marks a succeeded
    job as undone; a compensation that failed for good is recorded by
    ``status=SUCCEEDED`` plus ``compensation_error``.

    Attributes:
        run_id: the run.
        key: the job key.
        index: input position (None for redriven jobs).
        status: the job's new status.
        attempts: attempts spent.
        duration: seconds from first start to end.
        result: the return value, JSON-safe, or None (see ``has_result``).
        has_result: True when ``result`` was JSON-serialisable and is stored.
        payload: the item, JSON-safe (or its repr; see ``payload_is_repr``),
            kept for DEAD_LETTERED jobs and, when the batch compensates,
            for SUCCEEDED ones.
        kind, error_type, message, traceback: the last failure, if any.
        history: every failed attempt.
        redrive_of: the DLQ entry id this job was redriven from.
        compensation_error: why the compensation failed for good, if it did.
    """

    run_id: str
    key: str
    status: JobStatus
    index: int | None = None
    attempts: int = 0
    duration: float = 0.0
    result: Any = None
    has_result: bool = False
    payload: Any = None
    payload_is_repr: bool = False
    kind: ErrorKind | None = None
    error_type: str | None = None
    message: str | None = None
    traceback: str | None = None
    history: tuple[AttemptRecord, ...] = ()
    redrive_of: int | None = None
    compensation_error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FinishedJob:
    """A job that an earlier run of the same run id already finished.

    Attributes:
        key: the job key.
        status: its stored status (SUCCEEDED, DEAD_LETTERED, COMPENSATED).
        result: the stored result (when ``has_result``).
        has_result: whether a result was stored.
        attempts: attempts it spent.
        seq: completion order (increasing with commit order).
        payload: the stored payload, when one was kept.
        index: the job's input position when it last ran (None if redriven only).
    """

    key: str
    status: JobStatus
    result: Any = None
    has_result: bool = False
    attempts: int = 0
    seq: int = 0
    payload: Any = None
    index: int | None = None


@runtime_checkable
class DeadLetterQueue(Protocol):
    """``store.dlq``: the dead-letter queue of a store."""

    async def list(
        self,
        *,
        run_id: str | None = None,
        kind: ErrorKind | str | None = None,
        error_type: str | None = None,
        status: DeadLetterStatus | None = "dead",
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Entries matching every given filter, oldest first."""
        ...

    async def get(self, id: int) -> DeadLetter:
        """One entry; raises `KeyError` for an unknown id."""
        ...

    async def export(self, path: str, **filters: Any) -> int:
        """Write matching entries as JSONL to ``path``; returns how many.

        Atomic and bounded: written to a temporary file beside ``path``,
        fsynced and renamed into place, reading entries a page at a time.
        `_common.DeadLetterQueueBase` does this over a store's ``_page``
        query (keyset pagination by id).
        """
        ...

    async def purge(self, *, run_id: str | None = None, **filters: Any) -> int:
        """Delete matching entries; returns how many."""
        ...

    async def mark_redriven(self, ids: Sequence[int]) -> None:
        """Set status ``"redriven"`` and bump ``redrive_count``.

        `ab.redrive` does not call it: its entries stay ``"dead"`` until the
        redriven job's outcome commits (``"resolved"``, or ``"dead"`` again
        with ``redrive_count`` raised), so a redrive that dies strands none.
        Entries left ``"redriven"`` go back to ``"dead"`` when a process
        next takes the run (`Store.begin_run`).
        """
        ...


DEFAULT_GROUP = 1024
"""Records a group commit takes when the store names no ``group_size`` of its own."""


@runtime_checkable
class Store(Protocol):
    """A checkpoint store: runs, jobs, and the dead-letter queue.

    A store may also have a ``group_size`` attribute: the number of records
    it commits best in one group (the engine lets that many finished jobs
    wait for a commit; `DEFAULT_GROUP` without it).
    """

    url: str
    dlq: DeadLetterQueue

    async def begin_run(
        self, run: RunInfo, *, owner: str | None = None, lease: float = DEFAULT_LEASE
    ) -> RunInfo | None:
        """Create the run, or mark an existing one running again.

        With ``owner``, also take the run's lease in the SAME transaction:
        record ``owner``, since-when (now, unless it already owned the run)
        and a heartbeat (now). The run is refused with `RunOwned` (and
        nothing changes) while another owner holds a fresh lease: its last
        heartbeat newer than ``now - lease``, and not a process of this host
        that is gone (see `_common.check_lease`). Taking a run also puts its
        DLQ entries left ``"redriven"`` (by a redrive that died) back to
        ``"dead"``, so they can be redriven again. ``owner=None`` takes no
        lease and checks none (tools that inspect or repair a store).

        Returns the stored `RunInfo` as it was before (None for a new run).

        Raises:
            RunOwned: another live owner holds the run.
        """
        ...

    async def heartbeat(self, run_id: str, owner: str) -> None:
        """Renew ``owner``'s lease on the run (its heartbeat becomes now).

        Raises:
            RunOwned: the run is now owned by someone else (the lease was
                lost: it went stale and another process took the run over).
            UnknownRun: no such run.
        """
        ...

    async def finished_jobs(self, run_id: str) -> dict[str, FinishedJob]:
        """Jobs of the run that reached SUCCEEDED, DEAD_LETTERED or COMPENSATED."""
        ...

    async def lookup(self, run_id: str, keys: Sequence[str]) -> dict[str, FinishedJob]:
        """The finished jobs among ``keys`` (at most a few hundred per call), by key.

        What a resume asks for each batch of admitted keys, so that its memory
        stays bounded however many jobs the run finished before. Payloads are
        not loaded (``payload`` is None).
        """
        ...

    async def last_seq(self, run_id: str) -> int:
        """The highest completion order (``seq``) the run has stored (0 for none)."""
        ...

    async def commit(
        self, records: Sequence[JobRecord], *, durability: Literal["normal", "full"] = "normal"
    ) -> None:
        """Apply every record in ONE transaction; durable when it returns.

        ``"normal"`` survives a process crash; ``"full"`` also survives power
        loss (fsync at commit).

        A store whose class sets ``takes_outcomes = True`` (the built-in ones)
        also takes ``run_id=``: then ``records`` may hold `JobOutcome` values,
        plain successes of that run (SUCCEEDED, not redriven, the result
        stored as is), each standing for the `JobRecord` it would make. A run
        then builds no record for its commonest outcome.
        """
        ...

    async def end_run(
        self,
        run_id: str,
        status: RunStatus,
        counts: dict[str, int],
        report: dict[str, Any] | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        """Record how the run ended (and its report, JSON-safe), releasing its lease.

        The lease is released (owner cleared) in the same transaction,
        except with status ``"compensating"``: the run is rolling back, not
        over, and its owner keeps it (and heartbeats) until it ends. With
        ``owner``, only that owner may end the run: if another owner holds
        it, nothing changes and `RunOwned` is raised.

        Raises:
            RunOwned: ``owner`` was given and another owner holds the run.
            UnknownRun: no such run.
        """
        ...

    async def get_run(self, run_id: str) -> RunInfo:
        """The run; raises `UnknownRun`."""
        ...

    async def list_runs(self) -> list[RunInfo]:
        """Every run, newest first."""
        ...

    async def count_jobs(self, run_id: str) -> dict[str, int]:
        """Finished jobs of the run per status value (every status present)."""
        ...

    async def jobs(self, run_id: str) -> list[FinishedJob]:
        """Every finished job of the run, in completion order."""
        ...

    async def aclose(self) -> None:
        """Flush and close."""
        ...
