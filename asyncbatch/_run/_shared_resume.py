"""A shared run begun or resumed as a single-process one would be, and its result.

The coordinator keeps the identity a run was made with (its key spec and
job) when a resume is refused, refuses to drop an interrupted rollback, and
reports what this invocation did: the items of its input whose jobs an
earlier invocation finished are SKIPPED (with their stored results), as a
resumed single-process run says; the run's other jobs are not this
invocation's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from asyncbatch._errors import ConfigError, UnknownRun
from asyncbatch._observe._report import ErrorReport
from asyncbatch._result import BatchResult, JobOutcome, JobStatus
from asyncbatch._store import FinishedJob, RunInfo
from asyncbatch._store._codec import stored_result

from ._identity import check_identity
from ._options import Options
from ._shared_enqueue import Skipped

if TYPE_CHECKING:
    from asyncbatch._store._postgres import PostgresStore

    from ._lease import Lease

__all__ = ["Skips", "begin", "invocation_counts", "invocation_result"]

_UNSTORED = (JobStatus.FAILED, JobStatus.CANCELLED)
"""Statuses no store writes a row for (the job stays to be run again)."""


async def begin(
    store: PostgresStore, lease: Lease, info: RunInfo, opts: Options
) -> tuple[RunInfo | None, int]:
    """Take the run (new or resumed); returns it as it was and its last seq then.

    Raises:
        ConfigError: the stored run was made with other keys or another job
            (unless ``force_resume``), or it was rolling back and no
            ``compensate=`` is given; the run is left as it was.
        RunOwned: another coordinator runs it.
    """
    fresh = info
    try:
        stored: RunInfo | None = await store.get_run(info.run_id)
    except UnknownRun:
        stored = None
    if stored is not None and not opts.force_resume:
        # The run keeps the identity it was made with (checked below).
        kept: dict[str, Any] = {
            f: stored.config[f] for f in ("key", "job", "batch_size") if f in stored.config
        }
        info = replace(info, config={**info.config, **kept})
    prev = await lease.begin(info)
    if prev is None:
        return None, 0
    try:
        if not opts.force_resume:
            check_identity(info.run_id, prev.config, fresh.config)
        if prev.status == "compensating" and opts.compensate is None:
            raise ConfigError(
                f"run {info.run_id!r} was rolling back when it stopped; pass the same "
                "compensate= to finish the rollback (or call ab.rollback(undo, ...))"
            )
    except ConfigError:
        await lease.end(prev.status, prev.counts, prev.report)
        raise
    return prev, await store.last_seq(info.run_id)


class Skips:
    """This invocation's SKIPPED outcomes: the input's keys an earlier invocation finished.

    Found while the input is enqueued (`enqueue`'s ``on_skip``), counted, and
    kept (``keep``, for a `BatchResult`) or passed on (``forward``, a stream).
    """

    def __init__(self, *, keep: bool, forward: Skipped | None = None) -> None:
        self.n = 0
        self.kept: list[JobOutcome[Any]] = []
        self._keep = keep
        self._forward = forward

    async def __call__(self, outcome: JobOutcome[Any]) -> None:
        self.n += 1
        if self._keep:
            self.kept.append(outcome)
        if self._forward is not None:
            await self._forward(outcome)


def invocation_result(
    run_id: str,
    jobs: list[FinishedJob] | None,
    run: RunInfo,
    duration: float,
    opts: Options,
    *,
    seq0: int,
    skips: Skips,
    counts: dict[JobStatus, int] | None = None,
    mine: list[JobOutcome[Any]] | None = None,
    rolled: list[JobOutcome[Any]] | None = None,
) -> BatchResult[Any]:
    """This invocation's `BatchResult`, from the run's stored jobs (in input order).

    The jobs it finished (``seq`` past ``seq0``) and the ones it skipped
    (``skips``); ``counts`` (from `invocation_counts`) when ``jobs`` was not
    loaded; ``mine``: outcomes this process holds, used for the jobs whose
    stored status they match (the same execution: its very result, error,
    history); those of ``mine`` no store keeps (FAILED, CANCELLED) are
    reported as they are. ``jobs=None``: ``mine`` are exactly the
    invocation's jobs. ``rolled``: an abort's rollback outcomes, which
    replace the earlier outcome of each job it undid, as in one process.
    Without ``counts``, the counts are the outcomes'.
    """
    own = {o.key: o for o in mine or ()} if jobs is not None else {}
    codec = opts.result_codec
    outcomes: list[JobOutcome[Any]] = list(mine or ()) if jobs is None else []
    for j in jobs or ():
        if j.seq <= seq0:
            continue  # an earlier invocation's: SKIPPED if this input has it (skips)
        status = j.status
        here = own.get(j.key)
        if here is not None and here.status is status:
            outcomes.append(here if here.index == j.index else replace(here, index=j.index))
            continue
        outcomes.append(
            JobOutcome(key=j.key, status=status, result=stored_result(j, codec),
                       attempts=j.attempts, index=j.index)
        )  # fmt: skip
    outcomes += skips.kept
    if jobs is not None:  # outcomes never stored: only this process knows them
        outcomes += [o for o in mine or () if o.status in _UNSTORED]
    if rolled:
        where = {o.key: o.index for o in outcomes}  # a rollback's outcome keeps the position
        undone = {o.key for o in rolled}
        outcomes = [o for o in outcomes if o.key not in undone] + [
            o if o.index is not None else replace(o, index=where.get(o.key)) for o in rolled
        ]
    outcomes.sort(key=lambda o: (o.index is None, o.index or 0))
    if counts is None:  # the outcomes are the whole invocation: they are its counts
        counts = dict.fromkeys(JobStatus, 0)
        for o in outcomes:
            counts[o.status] += 1
    report = ErrorReport.from_dict(run.report or {})
    return BatchResult(
        run_id=run_id, outcomes=outcomes, counts=counts,
        report=report, duration=duration,
    )  # fmt: skip


async def invocation_counts(
    store: PostgresStore, run_id: str, *, seq0: int, skips: Skips
) -> dict[JobStatus, int]:
    """This invocation's jobs per status, by SQL (without loading the jobs)."""
    from asyncbatch._store._postgres_stream import RunTail

    tally = dict.fromkeys(JobStatus, 0)
    tally[JobStatus.SKIPPED] = skips.n
    for status, earlier, n in await RunTail(store, run_id).counts(seq0):
        if not earlier:
            tally[JobStatus(status)] += n
    return tally
