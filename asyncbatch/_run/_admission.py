"""Admission: an input item becomes a job of the run, or is skipped as already finished.

Every item gets its key (input position, ``key=``, or the DLQ entry it is
redriven from). On resume, a key that an earlier invocation finished is not
run again: it is acknowledged SKIPPED with its stored result (dead-lettered
ones run again with ``retry_dead=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asyncbatch._result import JobOutcome, JobStatus
from asyncbatch._store import FinishedJob, storable_key

from ._entry import Entry
from ._options import Options

__all__ = ["Admission"]


class Admission:
    """Keys items and decides which of them run.

    Attributes:
        finished: jobs an earlier invocation of the run finished, by key.
        redrive: for `ab.redrive`: input position → (DLQ entry id, job key).
        skipped_at: input positions of skipped jobs (kept for a rollback).
    """

    def __init__(self, opts: Options, run_id: str, ack: Callable[[JobOutcome[Any]], None]) -> None:
        self._opts = opts
        self._run_id = run_id
        self._ack = ack
        self.finished: dict[str, FinishedJob] = {}
        self.redrive: dict[int, tuple[int, str]] | None = None
        self.skipped_at: dict[str, int | None] = {}

    def __call__(self, index: int | None, item: Any) -> Entry | None:
        """Make an entry for a new item, or acknowledge it as SKIPPED."""
        opts = self._opts
        keyfn = opts.key
        redrive = self.redrive
        if redrive is not None and index is not None:
            dlq_id, key = redrive[index]
        elif keyfn is None:
            key = str(index)
        else:
            k = keyfn(item)
            # Stored and looked up in the same form (lone surrogates escaped).
            key = storable_key(k if isinstance(k, str) else str(k))
        if self.finished:
            done = self.finished.get(key)
            if done is not None and not (
                opts.retry_dead and done.status is JobStatus.DEAD_LETTERED
            ):
                if opts.compensate is not None:
                    self.skipped_at[key] = index
                self._ack(
                    JobOutcome(
                        key=key,
                        status=JobStatus.SKIPPED,
                        result=done.result,
                        attempts=done.attempts,
                        index=index,
                    )
                )
                return None
        entry = Entry(self._run_id, index, key, item)
        if redrive is not None and index is not None:
            entry.redrive_of = dlq_id
        return entry
