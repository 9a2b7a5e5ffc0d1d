"""The error report: what failed in a run, grouped so a million failures read as a few lines.

Failed attempts are grouped by (kind, exception type, message fingerprint); a
`ReportBuilder` is fed by the executor as the run goes and keeps O(groups)
memory however many jobs stream through; ``build()`` freezes it into an
`ErrorReport` that serialises to JSON. How a report looks (rich tables, plain
text) lives in `asyncbatch._report_render`, imported only when one is shown.
"""

from __future__ import annotations

import enum
import math
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from ._classify import ErrorKind
from ._errors import qualname
from ._http import method_of
from ._result import JobOutcome, JobStatus

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["ErrorReport", "FailureGroup", "ReportBuilder", "fingerprint"]

# ------------------------------------------------------------ fingerprints

_MAX_FINGERPRINT = 512
_MAX_EXAMPLE = 500
_H = "[0-9a-fA-F]"
_L, _R = "(?<![0-9A-Za-z])", "(?![0-9A-Za-z])"  # an id's edges: "_" and "-" separate
_C = r"[\w.:@+\-]"  # characters of a "word" that may hold ids: host:port, a.b@c.d, x-1
# Only words with a digit or an "@" are looked at (one pass over the text in C); the
# rules below run on those words alone, each only when the word can hold its shape.
_ANY = re.compile(r"[\d@]")
_WORD = re.compile(rf"(?<!{_C})(?={_C}*?[\d@]){_C}+")
_UUID = re.compile(rf"{_L}{_H}{{8}}-{_H}{{4}}-{_H}{{4}}-{_H}{{4}}-{_H}{{12}}{_R}")
_TS = re.compile(
    r"(?<![0-9])[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?(?![0-9])"
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_IPV4 = re.compile(r"(?<![0-9.])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9.])")
_IPV6 = re.compile(  # eight groups or a "::" form, holding a digit ("Foo::bar" is C++)
    rf"(?<![\w:])(?=[0-9a-fA-F:]*[0-9])(?:(?:{_H}{{1,4}}:){{7}}{_H}{{1,4}}"
    rf"|(?:{_H}{{1,4}}(?::{_H}{{1,4}})*)?::(?:{_H}{{1,4}}(?::{_H}{{1,4}})*)?)(?![\w:])"
)
_HEX = re.compile(
    rf"{_L}(?:0[xX]{_H}+|(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F]){_H}{{8,}}){_R}"
)
_ID = re.compile(rf"{_L}(?=[A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{{16,}}{_R}")
_NUM = re.compile(r"(?:(?<![\w)\]>])-)?\d+(?:\.\d+)*")
# HTTP statuses are kept: "HTTP 503", "'404 Not Found'" (httpx), "429, message=" (aiohttp),
# "status=429". Only in such a context, so other three-digit numbers still vary.
_PHRASES = "|".join(
    sorted({re.escape(s.phrase) for s in HTTPStatus if 100 <= s < 600}, key=len, reverse=True)
)
_CODE = re.compile(r"(?<![\w.])[1-5][0-9]{2}(?![\w.])")  # a candidate; its context decides
_CODE_BEFORE = re.compile(
    r"(?:(?<![\w/])HTTP(?:/[0-9.]+|/<n>)?[ :]+|\bstatus(?:[ _]?code)?['\"]?(?: ?[=:] ?| ))\Z"
)
_CODE_AFTER = re.compile(rf", message=| (?:{_PHRASES})(?![A-Za-z])")


def _status_spans(text: str) -> list[tuple[int, int]]:
    """Where ``text`` holds HTTP status codes to keep (usually nowhere: one cheap scan)."""
    spans = []
    for m in _CODE.finditer(text):
        start, end = m.span()
        if _CODE_AFTER.match(text, end) or _CODE_BEFORE.search(text, max(0, start - 24), start):
            spans.append((start, end))
    return spans


def _normalise_word(match: re.Match[str]) -> str:
    w = match.group()
    if w.isdecimal():
        return "<n>"
    if "-" in w:
        if len(w) >= 36:
            w = _UUID.sub("<uuid>", w)
        w = _TS.sub("<ts>", w)
    if "@" in w:
        w = _EMAIL.sub("<email>", w)
    if "." in w:
        w = _IPV4.sub("<ip>", w)
    if ":" in w:
        w = _IPV6.sub("<ip>", w)
    if len(w) >= 8 or "0x" in w or "0X" in w:
        w = _HEX.sub("<hex>", w)
        if len(w) >= 16:
            w = _ID.sub("<id>", w)
    # Last, every digit left: so a fingerprint holds no digit and is its own fingerprint.
    return _NUM.sub("<n>", w)


def fingerprint(message: str) -> str:
    """The message with its ids normalised, so one failure's variants group together.

    ``"user 123 not found"`` and ``"user 456 not found"`` both become
    ``"user <n> not found"``. Runs of whitespace become one space; then, in each
    word holding a digit or an ``@``: UUIDs (``<uuid>``), ISO dates and
    timestamps (``<ts>``), e-mail addresses (``<email>``), IPv4 and IPv6
    addresses (``<ip>``; a port stays ``:<n>``), ``0x`` numbers and hex strings
    of 8+ characters with a digit (``<hex>``), letter-and-digit tokens of 16+
    characters (``<id>``), and last every remaining number, signed or decimal,
    also inside words (``<n>``: ``job_17`` → ``job_<n>``, ``v1.2`` → ``v<n>``).
    Quoted text is kept: it is often what tells failures apart (a missing
    field's name, an HTTP reason phrase); ids inside quotes are normalised like
    anywhere else. HTTP status codes are kept where the text says they are one
    (``"HTTP 503"``, ``"'404 Not Found'"``, ``"429, message="``,
    ``"status=429"``): the status is what tells those failures apart. Only
    the first 512 characters count.

    The result holds no digits but those status codes, and
    ``fingerprint(fingerprint(m)) == fingerprint(m)``. Costs ~1 µs for a short
    message without ids, ~6 µs with a URL and a few numbers (looking for
    status codes adds one scan for three-digit numbers, about 1 µs).
    """
    text = " ".join(message[:_MAX_FINGERPRINT].split())
    if _ANY.search(text) is not None:
        kept = _status_spans(text)
        if not kept:
            text = _WORD.sub(_normalise_word, text)
        else:
            # The text between kept codes is normalised piece by piece.
            parts, last = [], 0
            for start, end in kept:
                parts.append(_WORD.sub(_normalise_word, text[last:start]))
                parts.append(text[start:end])
                last = end
            parts.append(_WORD.sub(_normalise_word, text[last:]))
            text = "".join(parts)
    return text[:_MAX_FINGERPRINT].rstrip()


# ----------------------------------------------------------------- values


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureGroup:
    """Failed attempts that share a kind, an exception type and a message fingerprint.

    Attributes:
        kind: the `ErrorKind` they were classified as.
        error_type: qualified exception type (``module.QualName``; builtins bare).
        fingerprint: the normalised message (see `fingerprint`).
        example: one real message of the group (the first one seen).
        count: failed attempts in the group.
        jobs: distinct finished jobs with at least one attempt in the group.
        final: how many of those ended DEAD_LETTERED or FAILED by this group's error.
        sample_keys: up to 5 keys of jobs in the group, first seen first.
        first_seen: wall-clock time of the first attempt (epoch seconds).
        last_seen: wall-clock time of the last attempt (epoch seconds).
    """

    kind: ErrorKind
    error_type: str
    fingerprint: str
    example: str = ""
    count: int = 0
    jobs: int = 0
    final: int = 0
    sample_keys: tuple[str, ...] = ()
    first_seen: float = 0.0
    last_seen: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "kind": self.kind.value,
            "error_type": self.error_type,
            "fingerprint": self.fingerprint,
            "example": self.example,
            "count": self.count,
            "jobs": self.jobs,
            "final": self.final,
            "sample_keys": list(self.sample_keys),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FailureGroup:
        """Inverse of `to_dict`."""
        return cls(
            kind=ErrorKind(d["kind"]),
            error_type=str(d["error_type"]),
            fingerprint=str(d["fingerprint"]),
            example=str(d.get("example", "")),
            count=int(d.get("count", 0)),
            jobs=int(d.get("jobs", 0)),
            final=int(d.get("final", 0)),
            sample_keys=tuple(str(k) for k in d.get("sample_keys", ())),
            first_seen=float(d.get("first_seen", 0.0)),
            last_seen=float(d.get("last_seen", 0.0)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReport:
    """What failed in a run, and how the run went.

    ``print(report)`` gives a plain-text rendering; rich consoles render it as
    tables (``console.print(report)``); ``to_dict()`` is JSON and
    ``ErrorReport.from_dict`` reads it back.

    Attributes:
        run_id: the run's id.
        started_at: wall-clock start (epoch seconds).
        finished_at: wall-clock end (epoch seconds).
        duration: ``finished_at - started_at``.
        counts: jobs per status value (``"succeeded"``, ``"dead_lettered"``, ...).
        groups: `FailureGroup` s, most failed attempts first.
        retries: retries scheduled.
        dead_lettered: jobs sent to the dead-letter queue.
        breakers: per dependency, its guard's statistics (state, calls,
            failures, rejections, trips, time open, ...).
        budget: the error budget's state (limits, observed values, verdict), or None.
        compensation: what a rollback did, or None.
        durations: succeeded jobs' durations in seconds: ``count``, ``mean``,
            ``p50``, ``p95``, ``p99``, ``max`` (only ``count`` when none
            succeeded). ``count``, ``mean`` and ``max`` are
            exact. Percentiles are nearest-rank over a uniform random sample
            of 4,096 durations (seeded, so reproducible): exact up to 4,096
            succeeded jobs; beyond, the value returned for quantile p has a
            true rank within p ± 2·sqrt(p(1-p)/4,096) with ~95% probability
            (±1.6 points at p50, ±0.7 at p95, ±0.3 at p99).
        aborted: why the run aborted (``"Type: message"``), or None.
    """

    run_id: str
    started_at: float = 0.0
    finished_at: float = 0.0
    duration: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    groups: list[FailureGroup] = field(default_factory=list)
    retries: int = 0
    dead_lettered: int = 0
    breakers: dict[str, dict[str, Any]] = field(default_factory=dict)
    budget: dict[str, Any] | None = None
    compensation: dict[str, Any] | None = None
    durations: dict[str, float] = field(default_factory=dict)
    aborted: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: ``json.dumps(report.to_dict())`` works; enums by value."""
        return {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": self.duration,
            "counts": dict(self.counts),
            "groups": [g.to_dict() for g in self.groups],
            "retries": self.retries,
            "dead_lettered": self.dead_lettered,
            "breakers": _jsonable(self.breakers),
            "budget": _jsonable(self.budget),
            "compensation": _jsonable(self.compensation),
            "durations": dict(self.durations),
            "aborted": self.aborted,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ErrorReport:
        """Read back `to_dict`'s output (missing sections take their defaults)."""
        aborted = d.get("aborted")
        return cls(
            run_id=str(d.get("run_id", "")),
            started_at=float(d.get("started_at", 0.0)),
            finished_at=float(d.get("finished_at", 0.0)),
            duration=float(d.get("duration", 0.0)),
            counts={str(k): int(v) for k, v in (d.get("counts") or {}).items()},
            groups=[FailureGroup.from_dict(g) for g in d.get("groups") or ()],
            retries=int(d.get("retries", 0)),
            dead_lettered=int(d.get("dead_lettered", 0)),
            breakers=dict(d.get("breakers") or {}),
            budget=d.get("budget"),
            compensation=d.get("compensation"),
            durations=dict(d.get("durations") or {}),
            aborted=None if aborted is None else str(aborted),
        )

    def render(self) -> RenderableType:
        """The report as a rich renderable (a `rich.console.Group` of lines and tables)."""
        from ._report_render import render  # rich only when a report is shown

        return render(self)

    def __rich__(self) -> RenderableType:
        return self.render()

    def __str__(self) -> str:
        from ._report_render import to_text

        return to_text(self)


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy: enums by value, tuples as lists, keys as str."""
    if value is None or isinstance(value, bool | int | float | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, Mapping):
        return {
            (k.value if isinstance(k, enum.Enum) else str(k)): _jsonable(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _jsonable(to_dict())
    return str(value)


# ---------------------------------------------------------------- builder


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
_RESERVOIR = 4096  # a larger sample costs more replacements on the hot path
_CHUNK = 1024


class _Sample:
    """Succeeded jobs' durations: exact count, sum and max; a reservoir for percentiles.

    Durations arrive in chunks (the hot path only appends to a list). The
    reservoir is a uniform random sample of fixed size (Li's Algorithm L, with
    a seeded `random.Random`, so a run's report is reproducible), updated at a
    cost that shrinks as the run grows.
    """

    __slots__ = ("count", "high", "next", "rng", "sample", "size", "total", "w")

    def __init__(self, size: int = _RESERVOIR, seed: int = 0) -> None:
        self.size = size
        self.rng = random.Random(seed)
        self.sample: list[float] = []
        self.count = 0
        self.total = 0.0
        self.high = -math.inf
        self.w = 1.0
        self.next = 0

    def fold(self, chunk: list[float]) -> None:
        """Take a chunk of durations in (and clear it)."""
        if not chunk:
            return
        self.total += sum(chunk)
        self.high = max(self.high, max(chunk))
        sample, size, seen = self.sample, self.size, self.count
        end = seen + len(chunk)
        rand, log, log1p, inv = self.rng.random, math.log, math.log1p, 1.0 / size
        w, nxt = self.w, self.next
        if len(sample) < size:
            take = min(size - len(sample), len(chunk))
            sample.extend(chunk[:take])
            if len(sample) < size:
                self.count = end
                chunk.clear()
                return
            nxt = seen + take  # full now: draw the first skip below
            w = (1.0 - rand()) ** inv
            nxt += int(log(1.0 - rand()) / log1p(-w)) + 1
        try:
            # Algorithm L: skip ahead to the next duration that replaces a random one.
            # (1.0 - rand() is in (0, 1], so log() never sees zero; both logs are <= 0,
            # so int() is floor.)
            while nxt <= end:
                sample[int(rand() * size)] = chunk[nxt - seen - 1]
                w *= (1.0 - rand()) ** inv
                nxt += int(log(1.0 - rand()) / log1p(-w)) + 1
        except (ZeroDivisionError, OverflowError):  # w underflowed: nothing enters any more
            nxt = 1 << 62
        self.w, self.next, self.count = w, nxt, end
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
            breakers=_jsonable(breakers) if breakers else {},
            budget=_jsonable(budget),
            compensation=_jsonable(compensation),
            durations=self.durations(),
            aborted=aborted,
        )
