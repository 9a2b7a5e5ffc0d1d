"""The error report: what failed in a run, grouped so a million failures read as a few lines.

Failed attempts are grouped by (kind, exception type, message fingerprint); a
`ReportBuilder` is fed by the executor as the run goes and keeps O(groups)
memory however many jobs stream through; ``build()`` freezes it into an
`ErrorReport` that serialises to JSON. The builder lives in `_report_builder`,
message fingerprints in `_fingerprint`; how a report looks (rich tables,
plain text) in `_report_render`, imported only when one is shown.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asyncbatch._errors import ErrorKind

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["ErrorReport", "FailureGroup", "jsonable", "merge_reports"]


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
        traffic: what the traffic controls did, or None: ``retry_budget``
            (calls, retries let through, retries held), ``concurrency``
            (an adaptive limit's last, lowest and highest value).
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
    traffic: dict[str, Any] | None = None

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
            "breakers": jsonable(self.breakers),
            "budget": jsonable(self.budget),
            "compensation": jsonable(self.compensation),
            "durations": dict(self.durations),
            "aborted": self.aborted,
            "traffic": jsonable(self.traffic),
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
            traffic=d.get("traffic"),
        )

    def render(self) -> RenderableType:
        """The report as a rich renderable (a `rich.console.Group` of lines and tables)."""
        from ._report_render import render

        return render(self)

    def __rich__(self) -> RenderableType:
        return self.render()

    def __str__(self) -> str:
        from ._report_render import to_text

        return to_text(self)


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: enums by value, tuples as lists, keys as str."""
    if value is None or isinstance(value, bool | int | float | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {
            (k.value if isinstance(k, enum.Enum) else str(k)): jsonable(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    return str(value)


def merge_reports(earlier: ErrorReport, later: ErrorReport) -> ErrorReport:
    """One report for a run resumed or redriven: ``earlier`` invocations, then ``later``.

    Groups with the same (kind, type, fingerprint) add their counts, jobs and
    final failures, keep the earlier example and sample keys first (up to 5)
    and span both first/last seen; retries add up. Counts, the DLQ count,
    breakers, budget, compensation and ``aborted`` are the later invocation's
    (the caller passes whole-run counts). Durations: counts add, ``max`` is
    the larger, ``mean`` is weighted; percentiles are the later
    invocation's when it measured any (a merged sample is not kept).
    """
    by_key: dict[tuple[str, str, str], FailureGroup] = {}
    for g in [*earlier.groups, *later.groups]:
        k = (g.kind.value, g.error_type, g.fingerprint)
        old = by_key.get(k)
        if old is None:
            by_key[k] = g
            continue
        by_key[k] = FailureGroup(
            kind=old.kind,
            error_type=old.error_type,
            fingerprint=old.fingerprint,
            example=old.example,
            count=old.count + g.count,
            jobs=old.jobs + g.jobs,
            final=old.final + g.final,
            sample_keys=tuple(dict.fromkeys([*old.sample_keys, *g.sample_keys]))[:5],
            first_seen=min(old.first_seen, g.first_seen) if old.first_seen else g.first_seen,
            last_seen=max(old.last_seen, g.last_seen),
        )
    groups = sorted(by_key.values(), key=lambda g: -g.count)
    a, b = earlier.durations, later.durations
    n_a, n_b = int(a.get("count", 0)), int(b.get("count", 0))
    durations: dict[str, float] = dict(b if n_b else a)
    if n_a and n_b:
        durations["count"] = n_a + n_b
        durations["mean"] = (a.get("mean", 0.0) * n_a + b.get("mean", 0.0) * n_b) / (n_a + n_b)
        durations["max"] = max(a.get("max", 0.0), b.get("max", 0.0))
    started = earlier.started_at or later.started_at
    return ErrorReport(
        run_id=later.run_id,
        started_at=started,
        finished_at=later.finished_at,
        duration=later.finished_at - started if later.finished_at else later.duration,
        counts=dict(later.counts),
        groups=groups,
        retries=earlier.retries + later.retries,
        dead_lettered=later.dead_lettered,
        breakers=later.breakers or earlier.breakers,
        budget=later.budget if later.budget is not None else earlier.budget,
        compensation=later.compensation if later.compensation is not None else earlier.compensation,
        durations=durations,
        aborted=later.aborted,
        traffic=later.traffic if later.traffic is not None else earlier.traffic,
    )
