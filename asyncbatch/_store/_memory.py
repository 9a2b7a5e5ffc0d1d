"""`MemoryStore`: a real store that lives in the process (the default).

It keeps exactly the semantics of the SQLite store (one test suite runs
against both) but nothing survives the process. Values are kept as JSON text
and decoded on every read, so callers never share state with the store.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from asyncbatch._errors import RunOwned, StoreError, UnknownRun
from asyncbatch._result import DeadLetter, JobOutcome, JobStatus

from ._common import (
    FINISHED,
    Clock,
    DeadLetterFilter,
    DeadLetterQueueBase,
    JobRow,
    as_records,
    check_durability,
    check_lease,
    dead_letter,
    decode,
    encode,
    encode_history,
    encode_payload,
    finished_job,
    is_compensation,
    job_row,
    merge_history,
    storable_record,
    wall_clock,
    zero_counts,
)
from ._protocol import (
    DEFAULT_LEASE,
    DeadLetterQueue,
    FinishedJob,
    JobRecord,
    RunInfo,
    RunStatus,
)

__all__ = ["MemoryStore"]

_FINISHED_VALUES = frozenset(s.value for s in FINISHED)

# Indices into a `JobRow` (see `_common.JOB_COLUMNS`).
_KEY, _IDX, _STAT, _ATT, _RES, _HAS, _PAY, _SEQ, _CERR, _NOW = 1, 2, 3, 4, 6, 7, 8, 10, 14, 15


@dataclass(slots=True, kw_only=True)
class _Run:
    run_id: str
    job: str
    status: RunStatus
    config: str
    counts: str
    report: str | None
    created_at: float
    updated_at: float
    jobs: dict[str, JobRow]
    seq: int = 0
    owner: str | None = None
    owned_since: float | None = None
    heartbeat_at: float | None = None

    def count_jobs(self) -> dict[str, int]:
        counts = zero_counts()
        for row in self.jobs.values():
            counts[row[_STAT]] += 1
        return counts

    def info(self) -> RunInfo:
        # A run that is still going (or crashed) counts what it committed.
        counts = self.count_jobs() if self.status == "running" else decode(self.counts)
        return RunInfo(
            run_id=self.run_id,
            job=self.job,
            status=self.status,
            config=decode(self.config),
            counts=counts,
            created_at=self.created_at,
            updated_at=self.updated_at,
            report=decode(self.report),
        )


@dataclass(slots=True, kw_only=True)
class _Dead:
    id: int
    run_id: str
    key: str
    payload: str | None
    payload_is_repr: bool
    kind: str | None
    error_type: str | None
    message: str | None
    traceback: str | None
    attempts: str
    redrive_count: int = 0
    status: str = "dead"
    created_at: float
    updated_at: float

    def value(self) -> DeadLetter:
        return dead_letter(
            id=self.id,
            run_id=self.run_id,
            key=self.key,
            payload=self.payload,
            payload_is_repr=self.payload_is_repr,
            kind=self.kind,
            error_type=self.error_type,
            message=self.message,
            traceback=self.traceback,
            attempts=self.attempts,
            redrive_count=self.redrive_count,
            status=self.status,
            created_at=self.created_at,
        )


def _finished(row: JobRow, *, payload: bool = True) -> FinishedJob:
    return finished_job(
        key=row[_KEY],
        status=row[_STAT],
        result=row[_RES],
        has_result=row[_HAS],
        attempts=row[_ATT],
        seq=row[_SEQ],
        payload=row[_PAY] if payload else None,
        index=row[_IDX],
    )


class MemoryDeadLetterQueue(DeadLetterQueueBase):
    """``MemoryStore.dlq``."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def _matching(self, f: DeadLetterFilter) -> list[_Dead]:
        found = [d for d in self._store._dlq.values() if f.matches(d.value())]
        return found if f.limit is None else found[: f.limit]

    async def _select(self, f: DeadLetterFilter) -> list[DeadLetter]:
        return [d.value() for d in self._matching(f)]

    async def _page(self, f: DeadLetterFilter, after: int | None, size: int) -> list[DeadLetter]:
        dlq = self._store._dlq
        ids = list(dlq)  # ascending: ids are handed out in order and never reused
        start = 0 if after is None else bisect.bisect_right(ids, after)
        page: list[DeadLetter] = []
        for id_ in ids[start:]:
            value = dlq[id_].value()
            if f.matches(value):
                page.append(value)
                if len(page) == size:
                    break
        return page

    async def _delete(self, f: DeadLetterFilter) -> int:
        store = self._store
        doomed = self._matching(f)
        for d in doomed:
            del store._dlq[d.id]
            if store._open.get((d.run_id, d.key)) == d.id:
                del store._open[d.run_id, d.key]
        return len(doomed)

    async def get(self, id: int) -> DeadLetter:
        """One entry; raises `KeyError` for an unknown id."""
        try:
            return self._store._dlq[id].value()
        except KeyError:
            raise KeyError(f"no dead letter with id {id} in {self._store.url}") from None

    async def mark_redriven(self, ids: Sequence[int]) -> None:
        """Set status ``"redriven"`` and bump ``redrive_count`` (unknown ids are ignored)."""
        now = self._store._clock()
        for id_ in ids:
            d = self._store._dlq.get(id_)
            if d is not None:
                d.status = "redriven"
                d.redrive_count += 1
                d.updated_at = now


class MemoryStore:
    """A checkpoint store in process memory: runs, jobs and a DLQ that end with it.

    Args:
        clock: epoch-seconds clock for timestamps (tests inject one).

    Example::

        async with ab.MemoryStore() as store:
            await ab.run_batch(job, items, store=store, run_id="nightly")
            print(await store.dlq.list())
    """

    url = "memory://"

    def __init__(self, *, clock: Clock = wall_clock) -> None:
        self._clock = clock
        self._runs: dict[str, _Run] = {}
        self._dlq: dict[int, _Dead] = {}
        self._open: dict[tuple[str, str], int] = {}
        """(run id, key) → id of its DLQ entry that is not resolved."""
        self._next_id = 1
        self._closed = False
        self.dlq: DeadLetterQueue = MemoryDeadLetterQueue(self)

    def __repr__(self) -> str:
        return f"MemoryStore(runs={len(self._runs)}, dead_letters={len(self._dlq)})"

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _run(self, run_id: str) -> _Run:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            return self._runs[run_id]
        except KeyError:
            raise UnknownRun(run_id) from None

    async def begin_run(
        self, run: RunInfo, *, owner: str | None = None, lease: float = DEFAULT_LEASE
    ) -> RunInfo | None:
        """Create the run, or mark an existing one running again; returns the previous state.

        With ``owner``, takes the run's lease or raises `RunOwned` (see
        `Store.begin_run`): a second engine on a run of this store while the
        first still runs it is refused.
        """
        if self._closed:
            raise StoreError("the store is closed")
        now = self._clock()
        old = self._runs.get(run.run_id)
        if old is None:
            new = self._runs[run.run_id] = _Run(
                run_id=run.run_id,
                job=run.job,
                status="running",
                config=encode(run.config) or "{}",
                counts=encode(run.counts) or "{}",
                report=None,
                created_at=run.created_at or now,
                updated_at=now,
                jobs={},
            )
            if owner is not None:
                new.owner, new.owned_since, new.heartbeat_at = owner, now, now
            return None
        if owner is not None:
            check_lease(
                run.run_id,
                holder=old.owner,
                since=old.owned_since,
                heartbeat_at=old.heartbeat_at,
                owner=owner,
                lease=lease,
                now=now,
            )
            for d in self._dlq.values():  # only a redrive that died leaves these
                if d.run_id == run.run_id and d.status == "redriven":
                    d.status, d.updated_at = "dead", now
            if old.owner != owner:
                old.owner, old.owned_since = owner, now
            old.heartbeat_at = now
        before = old.info()
        old.status = "running"
        old.job = run.job or old.job
        if run.config:
            old.config = encode(run.config) or old.config
        old.updated_at = now
        return before

    async def heartbeat(self, run_id: str, owner: str) -> None:
        """Renew ``owner``'s lease on the run; raises `RunOwned` when it was lost."""
        run = self._run(run_id)
        if run.owner != owner:
            raise RunOwned(run_id, run.owner or "nobody (the lease was released)", run.owned_since)
        run.heartbeat_at = self._clock()

    takes_outcomes: ClassVar[bool] = True
    """`commit` takes plain successes as their `JobOutcome` (with ``run_id``)."""

    async def commit(
        self,
        records: Sequence[JobRecord | JobOutcome[Any]],
        *,
        durability: Literal["normal", "full"] = "normal",
        run_id: str | None = None,
    ) -> None:
        """Apply every record at once (all or nothing); ``durability`` is validated only.

        ``run_id``: as `Store.commit`'s (plain successes given as their outcomes).
        """
        check_durability(durability)
        if not records:
            return
        records = as_records(records, run_id)
        runs = {r.run_id: self._run(r.run_id) for r in records}  # all-or-nothing: check first
        now = self._clock()
        for r in records:
            r = storable_record(r)
            run = runs[r.run_id]
            old = run.jobs.get(r.key)
            if old is not None and is_compensation(r):
                run.jobs[r.key] = (*old[:_STAT], r.status.value, *old[_STAT + 1 : _CERR],
                                   r.compensation_error, now)  # fmt: skip
                continue
            run.seq += 1
            row = job_row(r, run.seq, now)
            if old is not None and row[_IDX] is None:  # a redriven job keeps its input position
                row = (*row[:_IDX], old[_IDX], *row[_IDX + 1 :])
            run.jobs[r.key] = row
            if r.status is JobStatus.DEAD_LETTERED:
                self._dead_lettered(r, now)
            elif r.status is JobStatus.SUCCEEDED and not is_compensation(r):
                self._resolve(r, now)
        for run in runs.values():
            run.updated_at = now

    def _target(self, r: JobRecord) -> _Dead | None:
        """The DLQ entry a finished job updates: its redrive source, or its open entry."""
        id_ = r.redrive_of if r.redrive_of is not None else self._open.get((r.run_id, r.key))
        return None if id_ is None else self._dlq.get(id_)

    def _dead_lettered(self, r: JobRecord, now: float) -> None:
        d = self._target(r)
        if d is None:
            payload, is_repr = encode_payload(r.payload, r.payload_is_repr)
            d = _Dead(
                id=self._next_id,
                run_id=r.run_id,
                key=r.key,
                payload=payload,
                payload_is_repr=is_repr,
                kind=None if r.kind is None else r.kind.value,
                error_type=r.error_type,
                message=r.message,
                traceback=r.traceback,
                attempts=encode_history(r.history),
                created_at=now,
                updated_at=now,
            )
            self._next_id += 1
            self._dlq[d.id] = d
        else:
            if d.status == "dead":  # re-run by retry_dead= rather than by redrive()
                d.redrive_count += 1
            d.status = "dead"
            d.attempts = merge_history(d.attempts, r.history)
            d.kind = None if r.kind is None else r.kind.value
            d.error_type, d.message, d.traceback = r.error_type, r.message, r.traceback
            if d.payload is None:
                d.payload, d.payload_is_repr = encode_payload(r.payload, r.payload_is_repr)
            d.updated_at = now
        self._open[d.run_id, d.key] = d.id

    def _resolve(self, r: JobRecord, now: float) -> None:
        d = self._target(r)
        if d is None:
            return
        if d.status == "dead":
            d.redrive_count += 1
        d.status = "resolved"
        d.updated_at = now
        if self._open.get((d.run_id, d.key)) == d.id:
            del self._open[d.run_id, d.key]

    async def finished_jobs(self, run_id: str) -> dict[str, FinishedJob]:
        """Jobs of the run that reached SUCCEEDED, DEAD_LETTERED or COMPENSATED."""
        finished = {s.value for s in FINISHED}
        return {
            key: _finished(row)
            for key, row in self._run(run_id).jobs.items()
            if row[_STAT] in finished
        }

    async def lookup(self, run_id: str, keys: Sequence[str]) -> dict[str, FinishedJob]:
        """The finished jobs among ``keys``, by key (payloads not loaded)."""
        jobs = self._run(run_id).jobs
        finished = _FINISHED_VALUES
        found = {}
        for key in keys:
            row = jobs.get(key)
            if row is not None and row[_STAT] in finished:
                found[key] = _finished(row, payload=False)
        return found

    async def last_seq(self, run_id: str) -> int:
        """The highest completion order the run has stored (0 for none)."""
        return self._run(run_id).seq

    async def count_jobs(self, run_id: str) -> dict[str, int]:
        """Finished jobs of the run per status value (every status present)."""
        return self._run(run_id).count_jobs()

    async def jobs(self, run_id: str) -> list[FinishedJob]:
        """Every job of the run, in completion order."""
        rows = sorted(self._run(run_id).jobs.values(), key=lambda row: row[_SEQ])
        return [_finished(row) for row in rows]

    async def end_run(
        self,
        run_id: str,
        status: RunStatus,
        counts: dict[str, int],
        report: dict[str, Any] | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        """Record how the run ended (and its report), releasing its lease; see `Store.end_run`."""
        run = self._run(run_id)
        if owner is not None and run.owner is not None and run.owner != owner:
            raise RunOwned(run_id, run.owner, run.owned_since)
        if status != "compensating":  # a rollback goes on: it keeps the lease
            run.owner = run.owned_since = run.heartbeat_at = None
        run.status = status
        run.counts = encode(counts) or "{}"
        run.report = encode(report) if report is not None else None
        run.updated_at = self._clock()

    async def get_run(self, run_id: str) -> RunInfo:
        """The run; raises `UnknownRun`."""
        return self._run(run_id).info()

    async def list_runs(self) -> list[RunInfo]:
        """Every run, newest first."""
        if self._closed:
            raise StoreError("the store is closed")
        # Reversed first so that, the sort being stable, ties list the later run first.
        runs = list(self._runs.values())
        runs.reverse()
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return [r.info() for r in runs]

    async def aclose(self) -> None:
        """Close the store (its data is gone); closing twice is fine."""
        self._closed = True
