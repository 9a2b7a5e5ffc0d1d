"""`ReportBuilder`: the error report built as the run goes, in O(groups) memory."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Mapping
from itertools import chain, compress
from typing import Any

from asyncbatch._errors import ErrorKind, qualname
from asyncbatch._policy._http import method_of
from asyncbatch._result import JobOutcome, JobStatus

from ._report import ErrorReport, FailureGroup, jsonable

__all__ = ["OTHER_TYPE", "ReportBuilder"]

_MAX_EXAMPLE = 500

class _Group:
    """A failure group while the run goes (mutable; frozen by ``build``)."""

    __slots__ = (
        "count",
        "error_type",
        "example",
        "final",
        "fingerprint",
        "first_seen",
        "jobs",
        "kind",
        "last_seen",
        "sample_keys",
    )

    def __init__(self, kind: ErrorKind, error_type: str, fp: str, example: str, at: float) -> None:
        self.kind = kind
        self.error_type = error_type
        self.fingerprint = fp
        self.example = example
        self.count = 0
        self.jobs = 0
        self.final = 0
        self.sample_keys: list[str] = []
        self.first_seen = at
        self.last_seen = at

    def freeze(self) -> FailureGroup:
        return FailureGroup(
            kind=self.kind,
            error_type=self.error_type,
            fingerprint=self.fingerprint,
            example=self.example,
            count=self.count,
            jobs=self.jobs,
            final=self.final,
            sample_keys=tuple(self.sample_keys),
            first_seen=self.first_seen,
            last_seen=self.last_seen,
        )


OTHER_TYPE = "<other>"
"""``error_type`` of the overflow group (one per kind) once the group cap is reached."""

_SUCCEEDED = JobStatus.SUCCEEDED
_DEAD = JobStatus.DEAD_LETTERED
_FAILED = JobStatus.FAILED
_COMPENSATED = JobStatus.COMPENSATED
_PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
_SAMPLE = 4096
"""The duration sample holds about this many to twice as many (every one below)."""
DURATION_CHUNK = _CHUNK = 1024
_BITS = tuple(tuple(bool(byte >> i & 1) for i in range(8)) for byte in range(256))
"""Each byte's bits, lowest first."""


def _coin_flips(rng: random.Random, items: list[float], rounds: int) -> Iterator[float]:
    """The items that come up heads ``rounds`` times in a row: each with a
    chance of ``2 ** -rounds``, independently of the others and of its place.

    One random bit per item and round, drawn as one integer and applied in C
    (no Python step per item)."""
    n = len(items)
    mask = rng.getrandbits(n)
    for _ in range(rounds - 1):
        mask &= rng.getrandbits(n)
    bits = chain.from_iterable(map(_BITS.__getitem__, mask.to_bytes((n + 7) // 8, "little")))
    return compress(items, bits)


class _Sample:
    """Succeeded jobs' durations: exact count, sum and max; a sample for percentiles.

    Durations arrive in chunks (the hot path only appends to a list). Every
    one is kept until the sample holds ``2 * size``. From then on each
    duration enters it with a chance of ``2 ** -rounds``, and each time the
    sample reaches ``2 * size`` again every duration in it stays with a chance
    of 1/2 and ``rounds`` grows by one. Every duration is in the sample with
    the same chance whatever its place in the run, independently of the
    others (so a pattern in the input, one slow job in every 64, is sampled
    as it is), and the sample holds about ``size`` to ``2 * size``. The coin
    flips are drawn as random integers and applied in C: a reservoir updated
    one replacement at a time (Algorithm L) cost 2k instructions a job at
    20,000 jobs (callgrind). The generator is seeded, so a run's report is
    reproducible.
    """

    __slots__ = ("count", "high", "rng", "rounds", "sample", "size", "total")

    def __init__(self, size: int = _SAMPLE, seed: int = 0) -> None:
        self.size = size
        self.rng = random.Random(seed)
        self.sample: list[float] = []
        self.count = 0
        self.total = 0.0
        self.high = -math.inf
        self.rounds = 0

    def fold(self, chunk: list[float]) -> None:
        """Take a chunk of durations in (and clear it)."""
        if not chunk:
            return
        self.total += sum(chunk)
        self.high = max(self.high, max(chunk))
        self.count += len(chunk)
        sample = self.sample
        if self.rounds == 0:
            sample.extend(chunk)
        else:
            sample.extend(_coin_flips(self.rng, chunk, self.rounds))
        while len(sample) >= 2 * self.size:
            self.sample = sample = list(_coin_flips(self.rng, sample, 1))
            self.rounds += 1
        chunk.clear()

    def stats(self) -> dict[str, float]:
        if not self.count:
            return {"count": 0}
        ordered = sorted(self.sample)
        m = len(ordered)
        stats: dict[str, float] = {"count": self.count, "mean": self.total / self.count}
        for name, q in _PERCENTILES:
            # Nearest rank; the epsilon keeps 0.95 * 20 from rounding up to rank 20.
            stats[name] = ordered[max(1, math.ceil(q * m - 1e-9)) - 1]
        stats["max"] = self.high
        return stats


def _message(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not break the report
        return f"<unprintable {type(exc).__name__}>"
    # httpx and aiohttp leave the method out of their messages; the report shows it.
    method = method_of(exc)
    if method and not text.startswith(method):
        text = f"{method} {text}"
    return text


class ReportBuilder:
    """Builds a run's `ErrorReport` from the executor's calls, in O(groups) memory.

    Args:
        run_id: the run's id.
        max_groups: at most this many failure groups; failures beyond them
            are counted in one ``<other>`` group per kind.
        max_example: example messages are cut to this many characters.
    """

    __slots__ = (
        "_counts",
        "_groups",
        "_other",
        "_pending",
        "_sample",
        "_touched",
        "_undone",
        "dead_lettered",
        "max_example",
        "max_groups",
        "retries",
        "run_id",
    )

    def __init__(self, run_id: str, *, max_groups: int = 1000, max_example: int = _MAX_EXAMPLE):
        self.run_id = run_id
        self.max_groups = max_groups
        self.max_example = max_example
        self.retries = 0
        self.dead_lettered = 0
        self._counts = dict.fromkeys(JobStatus, 0)
        self._groups: dict[tuple[ErrorKind, str, str], _Group] = {}
        self._other: dict[ErrorKind, _Group] = {}
        # Per job with failed attempts and no outcome yet: [last group, *distinct groups].
        # Bounded by the jobs in flight or parked for a retry, not by the run's size.
        self._touched: dict[str, list[_Group]] = {}
        # Succeeded durations: appended here on the hot path, folded in chunks.
        self._pending: list[float] = []
        self._sample = _Sample()
        self._undone = 0  # succeeded jobs later compensated

    def _group(self, kind: ErrorKind, error_type: str, message: str, at: float) -> _Group:
        from ._fingerprint import fingerprint  # its patterns compile on the first failure

        fp = fingerprint(message)
        gkey = (kind, error_type, fp)
        group = self._groups.get(gkey)
        if group is None:
            if len(self._groups) < self.max_groups:
                group = self._groups[gkey] = _Group(
                    kind, error_type, fp, message[: self.max_example], at
                )
            else:
                group = self._other.get(kind)
                if group is None:
                    example = f"{error_type}: {message}"[: self.max_example]
                    group = self._other[kind] = _Group(
                        kind, OTHER_TYPE, f"<beyond {self.max_groups} groups>", example, at
                    )
        return group

    def attempt_failed(
        self, key: str, kind: ErrorKind, exc: BaseException, at: float, will_retry: bool
    ) -> None:
        """Record one failed attempt of job ``key`` at wall-clock time ``at``."""
        if will_retry:
            self.retries += 1
        group = self._group(kind, qualname(type(exc)), _message(exc), at)
        group.count += 1
        if at < group.first_seen:
            group.first_seen = at
        if at > group.last_seen:
            group.last_seen = at
        if len(group.sample_keys) < 5 and key not in group.sample_keys:
            group.sample_keys.append(key)
        touched = self._touched.get(key)
        if touched is None:
            self._touched[key] = [group, group]
        else:
            if group not in touched[1:]:
                touched.append(group)
            touched[0] = group

    @property
    def durations_pending(self) -> list[float]:
        """Where a first-attempt success's duration may be appended directly.

        What `job_finished` does for a succeeded job that had no failed
        attempt, without its call: the caller appends, and calls
        `fold_durations` once the list holds `DURATION_CHUNK`.
        """
        return self._pending

    def fold_durations(self) -> None:
        """Fold the appended durations into the sample."""
        self._sample.fold(self._pending)

    def job_finished(self, outcome: JobOutcome[Any]) -> None:
        """Record a finished job: its status, its duration, the groups it touched."""
        status = outcome.status
        if status is _SUCCEEDED:
            # The hot path (every succeeded job): an append, and a check for retried jobs.
            pending = self._pending
            pending.append(outcome.duration)
            if len(pending) >= _CHUNK:
                self._sample.fold(pending)
            if self._touched:
                self._settle(outcome, final=False)
            return
        self._counts[status] += 1
        if status is _DEAD:
            self.dead_lettered += 1
        elif status is _COMPENSATED:
            # Undone after it was counted as succeeded (or skipped, from an earlier run).
            if self._succeeded() > 0:
                self._undone += 1
            elif self._counts[JobStatus.SKIPPED]:
                self._counts[JobStatus.SKIPPED] -= 1
            return
        self._settle(outcome, final=status is _DEAD or status is _FAILED)

    def _settle(self, outcome: JobOutcome[Any], *, final: bool) -> None:
        """A job with failed attempts finished: count it once in each group it touched."""
        touched = self._touched.pop(outcome.key, None)
        if touched is not None:
            for group in touched[1:]:
                group.jobs += 1
            if final:
                touched[0].final += 1
        elif final and outcome.error is not None:
            # A failure the executor did not report attempt by attempt: count it here.
            kind = outcome.kind or ErrorKind.PERMANENT
            self.attempt_failed(outcome.key, kind, outcome.error, time.time(), False)
            self._settle(outcome, final=True)

    def _succeeded(self) -> int:
        return self._sample.count + len(self._pending) - self._undone

    def durations(self) -> dict[str, float]:
        """Succeeded jobs' duration statistics (see `ErrorReport.durations`)."""
        self._sample.fold(self._pending)
        return self._sample.stats()

    def build(
        self,
        *,
        started_at: float,
        finished_at: float,
        breakers: dict[str, Any] | None = None,
        budget: dict[str, Any] | None = None,
        compensation: dict[str, Any] | None = None,
        aborted: str | None = None,
        counts: Mapping[Any, int] | None = None,
        traffic: dict[str, Any] | None = None,
    ) -> ErrorReport:
        """Freeze what was recorded into an `ErrorReport`.

        Args:
            started_at: wall-clock start of the run (epoch seconds).
            finished_at: wall-clock end of the run.
            breakers: per dependency, its statistics as a dict.
            budget: the budget tracker's ``state()``.
            compensation: the rollback summary.
            aborted: why the run aborted, or None.
            counts: the run's own counts by status; when given they win over
                the builder's tally (which can only guess which status a
                compensated job replaced).
            traffic: the traffic controls' state (retry budget, ...), or None.
        """
        if counts is not None:
            tally = {JobStatus(s).value: n for s, n in counts.items()}
            tally = {s.value: tally.get(s.value, 0) for s in JobStatus}
        else:
            tally = {s.value: n for s, n in self._counts.items()}
            tally[_SUCCEEDED.value] = self._succeeded()
        groups = [g.freeze() for g in (*self._groups.values(), *self._other.values())]
        groups.sort(key=lambda g: (-g.count, -g.jobs, g.first_seen, g.kind, g.error_type))
        return ErrorReport(
            run_id=self.run_id,
            started_at=started_at,
            finished_at=finished_at,
            duration=finished_at - started_at,
            counts=tally,
            groups=groups,
            retries=self.retries,
            dead_lettered=self.dead_lettered,
            breakers=jsonable(breakers) if breakers else {},
            budget=jsonable(budget),
            compensation=jsonable(compensation),
            durations=self.durations(),
            aborted=aborted,
            traffic=jsonable(traffic),
        )
