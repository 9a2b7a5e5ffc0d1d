"""The error report: fingerprints, grouping, durations, JSON, rendering, and a run's report."""

from __future__ import annotations

import io
import json
import random
import re
import tracemalloc
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

import asyncbatch as ab
from asyncbatch._observe._fingerprint import fingerprint
from asyncbatch._observe._report import FailureGroup
from asyncbatch._observe._report_builder import _SAMPLE, OTHER_TYPE, ReportBuilder, _Sample

K = ab.ErrorKind
S = ab.JobStatus
T0 = 1_700_000_000.0


class LookupFailed(Exception):
    """A user-defined error type (qualified with its module in the report)."""


# ------------------------------------------------------------ fingerprints


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("user 123 not found", "user 456 not found", "user <n> not found"),
        (
            "request 550e8400-e29b-41d4-a716-446655440000 failed",
            "request 6BA7B810-9DAD-11D1-80B4-00C04FD430C8 failed",
            "request <uuid> failed",
        ),
        ("job_17 failed", "job_2 failed", "job_<n> failed"),
        ("took 3.5 s", "took 12 s", "took <n> s"),
        ("offset -5 is out of range", "offset 12 is out of range", "offset <n> is out of range"),
        ("<Conn object at 0x7f3a2b1c>", "<Conn object at 0x10ff>", "<Conn object at <hex>>"),
        ("commit deadbeef0123 missing", "commit 0a1b2c3d4e5f6789 missing", "commit <hex> missing"),
        (
            "token AbCdEf0123456789xyz rejected",
            "token Zz9Yy8Xx7Ww6Vv5Uu4 rejected",
            "token <id> rejected",
        ),
        (
            "connect to 10.0.0.1:5432 refused",
            "connect to 192.168.13.77:6543 refused",
            "connect to <ip>:<n> refused",
        ),
        (
            "connect to [::1]:8080 refused",
            "connect to [fe80::1ff:fe23:4567:890a]:80 refused",
            "connect to [<ip>]:<n> refused",
        ),
        ("at 2024-01-02T03:04:05.123Z", "at 2023-12-31T23:59:59+02:00", "at <ts>"),
        (
            "no mailbox bob@example.com",
            "no mailbox alice.smith+x@mail.example.org",
            "no mailbox <email>",
        ),
        (
            "HTTP 503 Service Unavailable from http://127.0.0.1:54321/items/17",
            "HTTP 503 Service Unavailable from http://127.0.0.1:1234/items/4242",
            # HTTP statuses are kept (issue 13): the report must show which status it was.
            "HTTP 503 Service Unavailable from http://<ip>:<n>/items/<n>",
        ),
        ("'user_42'", "'user_7'", "'user_<n>'"),
        ("row 1\n  column 7", "row 22  column 3", "row <n> column <n>"),
        (
            "req_550e8400-e29b-41d4-a716-446655440000 timed out",
            "req_00000000-0000-0000-0000-000000000000 timed out",
            "req_<uuid> timed out",
        ),
    ],
)
def test_messages_that_differ_only_in_ids_share_a_fingerprint(
    a: str, b: str, expected: str
) -> None:
    assert fingerprint(a) == fingerprint(b) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("user 1 not found", "user 1 is locked"),
        ("HTTP 503 Service Unavailable", "HTTP 429 Too Many Requests"),
        ("HTTP 503", "HTTP 502"),
        ("404 Not Found", "410 Gone"),
        ("missing field 'email'", "missing field 'name'"),
        ("connection refused", "connection reset"),
        ("Foo::bar failed", "Foo::baz failed"),
        ("", "x"),
    ],
)
def test_different_messages_keep_different_fingerprints(a: str, b: str) -> None:
    assert fingerprint(a) != fingerprint(b)


def test_fingerprint_keeps_text_without_ids_and_cuts_long_messages() -> None:
    assert fingerprint("connection refused") == "connection refused"
    assert fingerprint("Foo::bar is not callable") == "Foo::bar is not callable"
    assert len(fingerprint("x " * 5000)) <= 512


@given(st.text(max_size=700))
def test_fingerprint_is_idempotent_and_holds_no_digits_but_http_statuses(message: str) -> None:
    fp = fingerprint(message)
    assert fingerprint(fp) == fp
    # Issue 13: HTTP statuses stay; every other digit is still normalised away.
    assert all(re.fullmatch("[1-5][0-9]{2}", d) for d in re.findall(r"\d+", fp)), fp
    assert len(fp) <= 512


_http_messages = st.builds(
    "{}{}{}{}{}".format,
    st.text(max_size=30),
    st.sampled_from(["HTTP ", "HTTP/1.1 ", "status=", "status: ", "'", "", "x", "-", "1."]),
    st.integers(0, 9999).map(str),
    st.sampled_from([" Not Found", ", message='Gone'", " Service Unavailable'", " ms", "", "1"]),
    st.text(max_size=30),
)


@given(_http_messages)
def test_http_statuses_in_context_stay_and_the_fingerprint_is_idempotent(message: str) -> None:
    fp = fingerprint(message)
    assert fingerprint(fp) == fp
    assert all(re.fullmatch("[1-5][0-9]{2}", d) for d in re.findall(r"\d+", fp)), fp


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("HTTP/1.1 404 Not Found", "HTTP/<n> 404 Not Found"),
        (
            "Client error '429 Too Many Requests' for url 'http://10.0.0.1:80/v1/x/17'",
            "Client error '429 Too Many Requests' for url 'http://<ip>:<n>/v<n>/x/<n>'",
        ),
        (
            "503, message='Service Unavailable', url='http://10.0.0.1:80/items/3'",
            "503, message='Service Unavailable', url='http://<ip>:<n>/items/<n>'",
        ),
        ("upstream status=502 after 3 tries", "upstream status=502 after <n> tries"),
        ("took 503 ms", "took <n> ms"),
        ("user 404 not found", "user <n> not found"),
    ],
)
def test_fingerprint_keeps_http_statuses_only_where_the_text_says_so(
    message: str, expected: str
) -> None:
    assert fingerprint(message) == expected


_id_messages = st.builds(
    "{} {} {} at {}".format,
    st.sampled_from(["user", "order", "GET /items/"]),
    st.integers(-(10**12), 10**12),
    st.sampled_from(["not found", "failed", "timed out"]),
    st.ip_addresses(v=4).map(str),
)


@given(_id_messages, st.integers(0, 10**9), st.ip_addresses(v=4).map(str))
def test_replacing_the_numbers_in_a_message_keeps_its_fingerprint(
    message: str, n: int, ip: str
) -> None:
    changed = re.sub(r"\b\d+\b", str(n), message.rsplit(" at ", 1)[0]) + f" at {ip}"
    assert fingerprint(changed) == fingerprint(message)


# ---------------------------------------------------------------- builder


def outcome(key: str, status: ab.JobStatus, **kw: Any) -> ab.JobOutcome[Any]:
    return ab.JobOutcome(key=key, status=status, **kw)


def test_failed_attempts_group_by_kind_type_and_fingerprint() -> None:
    b = ReportBuilder("r")
    for i in range(6):
        b.attempt_failed(str(i), K.PERMANENT, KeyError(f"user_{i}"), T0 + i, False)
        b.job_finished(outcome(str(i), S.DEAD_LETTERED, kind=K.PERMANENT))
    b.attempt_failed("6", K.TRANSIENT, KeyError("user_6"), T0 + 6, True)  # other kind
    b.attempt_failed("7", K.PERMANENT, LookupFailed("user_7"), T0 + 7, False)  # other type
    report = b.build(started_at=T0, finished_at=T0 + 10)

    assert [(g.kind, g.error_type, g.fingerprint, g.count) for g in report.groups] == [
        (K.PERMANENT, "KeyError", "'user_<n>'", 6),
        (K.TRANSIENT, "KeyError", "'user_<n>'", 1),
        (K.PERMANENT, f"{__name__}.LookupFailed", "user_<n>", 1),
    ]
    top = report.groups[0]
    assert top.example == "'user_0'"
    assert top.sample_keys == ("0", "1", "2", "3", "4")
    assert (top.first_seen, top.last_seen) == (T0, T0 + 5)
    assert (top.jobs, top.final) == (6, 6)
    assert (report.retries, report.dead_lettered) == (1, 6)
    assert report.counts["dead_lettered"] == 6


def test_a_job_counts_once_per_group_and_its_last_error_is_the_final_one() -> None:
    b = ReportBuilder("r")
    b.attempt_failed("a", K.TRANSIENT, TimeoutError("slow 1"), T0, True)
    b.attempt_failed("a", K.TRANSIENT, TimeoutError("slow 2"), T0 + 1, True)
    b.attempt_failed("a", K.PERMANENT, ValueError("bad 3"), T0 + 2, False)
    b.attempt_failed("b", K.TRANSIENT, TimeoutError("slow 4"), T0 + 3, True)
    b.job_finished(outcome("a", S.DEAD_LETTERED, kind=K.PERMANENT))
    b.job_finished(outcome("b", S.SUCCEEDED, duration=0.5))
    groups = {g.error_type: g for g in b.build(started_at=T0, finished_at=T0 + 4).groups}
    assert (groups["TimeoutError"].count, groups["TimeoutError"].jobs) == (3, 2)
    assert groups["TimeoutError"].final == 0, "both jobs ended with another error or succeeded"
    assert (groups["ValueError"].count, groups["ValueError"].jobs, groups["ValueError"].final) == (
        1,
        1,
        1,
    )


def test_jobs_still_running_are_not_yet_counted_in_jobs() -> None:
    b = ReportBuilder("r")
    b.attempt_failed("a", K.TRANSIENT, TimeoutError(), T0, True)
    (group,) = b.build(started_at=T0, finished_at=T0).groups
    assert (group.count, group.jobs) == (1, 0)
    b.job_finished(outcome("a", S.CANCELLED))
    (group,) = b.build(started_at=T0, finished_at=T0).groups
    assert (group.jobs, group.final) == (1, 0)


def test_a_failed_outcome_without_reported_attempts_still_lands_in_a_group() -> None:
    b = ReportBuilder("r")
    b.job_finished(outcome("x", S.FAILED, kind=K.FATAL, error=MemoryError("out of memory")))
    (group,) = b.build(started_at=T0, finished_at=T0).groups
    assert (group.kind, group.error_type, group.count, group.jobs, group.final) == (
        K.FATAL,
        "MemoryError",
        1,
        1,
        1,
    )


def test_an_exception_whose_str_raises_is_still_reported() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    b = ReportBuilder("r")
    b.attempt_failed("a", K.PERMANENT, Broken(), T0, False)
    (group,) = b.build(started_at=T0, finished_at=T0).groups
    assert group.example == "<unprintable Broken>"


def test_the_group_cap_holds_and_overflow_is_counted_per_kind() -> None:
    b = ReportBuilder("r", max_groups=10)
    words = [f"{a}{b}" for a in "abcdefgh" for b in "xyz"]  # 24 messages without ids
    for n, word in enumerate(words * 3):
        kind = K.PERMANENT if n % 2 else K.TRANSIENT
        b.attempt_failed(f"k{n}", kind, ValueError(f"bad {word}"), T0 + n, False)
    report = b.build(started_at=T0, finished_at=T0)
    assert len(report.groups) <= 10 + len(K)
    others = [g for g in report.groups if g.error_type == OTHER_TYPE]
    assert {g.kind for g in others} == {K.PERMANENT, K.TRANSIENT}
    assert sum(g.count for g in report.groups) == 72, "no failed attempt is lost"
    assert others[0].example.startswith("ValueError: bad ")


def test_memory_stays_bounded_over_a_long_stream_of_distinct_ids() -> None:
    b = ReportBuilder("r")
    error = ValueError("x")

    def chunk(start: int) -> None:
        for i in range(start, start + 20_000):
            key = str(i)
            if i % 2:
                error.args = (f"order {i} rejected by 10.0.{i % 256}.1",)
                b.attempt_failed(key, K.PERMANENT, error, T0 + i, False)
                b.job_finished(outcome(key, S.DEAD_LETTERED, kind=K.PERMANENT))
            else:
                b.job_finished(outcome(key, S.SUCCEEDED, duration=i * 1e-6))

    chunk(0)  # warm up: reservoir and pending chunk filled
    tracemalloc.start()
    try:
        chunk(20_000)
        chunk(40_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak} bytes for 40,000 more jobs"
    report = b.build(started_at=T0, finished_at=T0)
    assert [(g.fingerprint, g.count, g.jobs) for g in report.groups] == [
        ("order <n> rejected by <ip>", 30_000, 30_000)
    ]


def test_counts_include_every_status_and_compensation_replaces_a_success() -> None:
    b = ReportBuilder("r")
    for status in (S.SUCCEEDED, S.SUCCEEDED, S.SKIPPED, S.CANCELLED):
        b.job_finished(outcome("k", status))
    b.job_finished(outcome("k", S.COMPENSATED))
    report = b.build(started_at=T0, finished_at=T0)
    assert report.counts == {
        "succeeded": 1,
        "dead_lettered": 0,
        "failed": 0,
        "skipped": 1,
        "compensated": 1,
        "cancelled": 1,
    }
    given = b.build(started_at=T0, finished_at=T0, counts={S.SUCCEEDED: 7})
    assert given.counts["succeeded"] == 7
    assert given.counts["failed"] == 0


# -------------------------------------------------------------- durations


def test_durations_are_exact_nearest_rank_up_to_the_reservoir_size() -> None:
    b = ReportBuilder("r")
    ms = list(range(1, 1001))
    random.Random(3).shuffle(ms)
    for m in ms:
        b.job_finished(outcome("k", S.SUCCEEDED, duration=m / 1000))
    d = b.build(started_at=T0, finished_at=T0).durations
    assert d == {
        "count": 1000,
        "mean": pytest.approx(0.5005),
        "p50": 0.5,
        "p95": 0.95,
        "p99": 0.99,
        "max": 1.0,
    }


def test_durations_of_a_long_run_are_within_the_stated_accuracy() -> None:
    rng = random.Random(7)
    b = ReportBuilder("r")
    n = 200_000
    for _ in range(n):
        b.job_finished(outcome("k", S.SUCCEEDED, duration=rng.random()))
    d = b.durations()
    assert d["count"] == n
    assert d["max"] <= 1.0
    # Uniform on [0, 1): the p-quantile is p; the stated bound is 2 * sqrt(p(1-p)/4,096).
    for name, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        assert abs(d[name] - p) <= 2 * (p * (1 - p) / 4096) ** 0.5, name
    assert d["mean"] == pytest.approx(0.5, abs=0.005)


def test_the_duration_sample_is_not_biased_to_early_or_late_jobs() -> None:
    b = ReportBuilder("r")
    n = 100_000
    for i in range(n):  # durations grow over the run: a biased sample shifts the median
        b.job_finished(outcome("k", S.SUCCEEDED, duration=float(i)))
    d = b.durations()
    assert abs(d["p50"] / n - 0.5) <= 2 * (0.5 * 0.5 / 4096) ** 0.5
    assert abs(d["p95"] / n - 0.95) <= 2 * (0.95 * 0.05 / 4096) ** 0.5
    assert (d["max"], d["mean"]) == (n - 1.0, (n - 1) / 2)


def test_a_pattern_in_the_input_is_sampled_as_it_is() -> None:
    # One job in 64 is slow, one in 4 a little slow: a sample taking every
    # k-th job would see all of the slow ones or none.
    durations = [1.0 if i % 64 == 0 else 0.2 if i % 4 == 3 else 0.1 for i in range(200_000)]
    b = ReportBuilder("r")
    for duration in durations:
        b.job_finished(outcome("k", S.SUCCEEDED, duration=duration))
    d = b.durations()
    assert (d["p50"], d["p95"], d["p99"], d["max"]) == (0.1, 0.2, 1.0, 1.0)
    assert d["mean"] == pytest.approx(sum(durations) / len(durations))


@pytest.mark.parametrize("period", [2, 64])
@pytest.mark.parametrize("n", [10_000, 200_000])
def test_every_duration_is_sampled_with_the_same_chance_whatever_its_place(
    n: int, period: int
) -> None:
    sample = _Sample()
    chunk: list[float] = []
    for i in range(n):
        chunk.append(1.0 if i % period == 0 else 0.1)
        if len(chunk) == 1024:
            sample.fold(chunk)
    sample.fold(chunk)
    kept = sample.sample
    assert _SAMPLE * 0.9 <= len(kept) < 2 * _SAMPLE
    p = 1 / period
    assert abs(kept.count(1.0) / len(kept) - p) <= 4 * (p * (1 - p) / len(kept)) ** 0.5


def test_durations_without_successes_only_count_zero() -> None:
    b = ReportBuilder("r")
    b.job_finished(outcome("k", S.DEAD_LETTERED, error=ValueError("x"), kind=K.PERMANENT))
    assert b.build(started_at=T0, finished_at=T0).durations == {"count": 0}


# ----------------------------------------------------------- JSON, render


def sample_report(groups: int = 2) -> ab.ErrorReport:
    b = ReportBuilder("run-7")
    for i in range(groups):
        b.attempt_failed(
            f"k{i}", K.RECOVERABLE, LookupFailed(f"shard {i} says no{'!' * i}"), T0, True
        )
        b.job_finished(outcome(f"k{i}", S.SUCCEEDED, duration=0.25))
    b.attempt_failed("bad", K.PERMANENT, ValueError("malformed item 42"), T0 + 1, False)
    b.job_finished(outcome("bad", S.DEAD_LETTERED, kind=K.PERMANENT))
    return b.build(
        started_at=T0,
        finished_at=T0 + 3.5,
        breakers={
            "api": {
                "name": "api",
                "state": "open",
                "calls": 9,
                "failures": 5,
                "trips": 1,
                "rejections": 2,
                "time_open": 1.5,
                "rate": {"n": 10, "per": 1.0},
                "kinds": (K.TRANSIENT,),
            },
        },
        budget={
            "action": "alert",
            "exhausted": True,
            "message": "failure rate 33.3% (1 of 3 jobs) exceeds max_failure_rate=0.1",
            "limits": {"max_failure_rate": 0.1},
        },
        compensation={
            "compensated": 2,
            "failed": 1,
            "failures": {"k0": "OSError: x"},
            "resumed": False,
        },
        aborted="BudgetExceeded: failure rate 33.3% (1 of 3 jobs) exceeds max_failure_rate=0.1",
    )


def test_report_round_trips_through_json() -> None:
    report = sample_report()
    text = json.dumps(report.to_dict())
    again = ab.ErrorReport.from_dict(json.loads(text))
    assert again == report
    assert again.groups[0].kind is K.RECOVERABLE or again.groups[0].kind is K.PERMANENT
    assert report.breakers["api"]["kinds"] == ["transient"], "enums are stored by value"


def test_from_dict_reads_a_partial_report() -> None:
    report = ab.ErrorReport.from_dict({"aborted": "FatalError: disk full"})
    assert (report.run_id, report.aborted, report.groups) == ("", "FatalError: disk full", [])
    assert "FatalError: disk full" in str(report)


_groups = st.builds(
    FailureGroup,
    kind=st.sampled_from(K),
    error_type=st.text(max_size=20),
    fingerprint=st.text(max_size=40),
    example=st.text(max_size=40),
    count=st.integers(0, 10**9),
    jobs=st.integers(0, 10**9),
    final=st.integers(0, 10**9),
    sample_keys=st.lists(st.text(max_size=8), max_size=5).map(tuple),
    first_seen=st.floats(0, 2e9),
    last_seen=st.floats(0, 2e9),
)


@given(
    groups=st.lists(_groups, max_size=5),
    counts=st.dictionaries(st.sampled_from([s.value for s in S]), st.integers(0, 10**6)),
    durations=st.dictionaries(st.sampled_from(["p50", "max", "mean"]), st.floats(0, 1e6)),
    aborted=st.none() | st.text(max_size=30),
)
def test_any_report_round_trips_through_json(
    groups: list[FailureGroup],
    counts: dict[str, int],
    durations: dict[str, float],
    aborted: str | None,
) -> None:
    report = ab.ErrorReport(
        run_id="r", groups=groups, counts=counts, durations=durations, aborted=aborted, retries=3
    )
    assert ab.ErrorReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_str_is_plain_text_with_every_section() -> None:
    text = str(sample_report())
    assert "\x1b[" not in text, "no colour codes"
    assert max(len(line) for line in text.splitlines()) <= 100
    for part in (
        "run run-7",
        "2 succeeded, 1 dead-lettered",
        "2 retries",
        "ABORTED: BudgetExceeded",
        "LookupFailed",
        "shard <n> says no",
        "ValueError",
        "malformed item <n>",
        "Budget exhausted (alert)",
        "Compensation: 2 undone, 1 failed",
        "p50 250 ms",
    ):
        assert part in text, part
    assert re.search(r"api\s.*open\s.*9\s.*5\s.*2\s.*1\s.*1\.5 s", text), text


def test_groups_are_listed_by_attempts_most_first() -> None:
    b = ReportBuilder("r")
    for n, word in enumerate(["rare"] + ["common"] * 3 + ["middle"] * 2):
        b.attempt_failed(str(n), K.TRANSIENT, OSError(word), T0, True)
    report = b.build(started_at=T0, finished_at=T0)
    text = str(report)
    assert text.index("common") < text.index("middle") < text.index("rare")


def test_render_fits_a_narrow_console_and_shows_every_group_row() -> None:
    report = sample_report(groups=3)
    out = io.StringIO()
    Console(file=out, width=60, color_system=None).print(report)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 60
    assert text.count("recoverable") == 3
    assert text.count("permanent") == 1
    assert "ValueError" in text


def test_render_lists_the_top_groups_and_sums_up_the_rest() -> None:
    text = str(sample_report(groups=30))
    assert "... and 11 more groups (11 attempts)" in text


def test_an_empty_report_renders() -> None:
    text = str(ReportBuilder("quiet").build(started_at=T0, finished_at=T0 + 1))
    assert "No failed attempts." in text
    assert "no succeeded jobs" in text


# ------------------------------------------------------- through run_batch


async def malformed_from_100(i: int) -> int:
    if i >= 100:
        raise ab.PermanentError(f"item {i} is malformed")
    return i


async def test_an_exhausted_budget_aborts_the_run_with_the_verdict_as_cause() -> None:
    budget = ab.ErrorBudget(max_failure_rate=0.05, min_jobs=100)
    with pytest.raises(ab.BatchAborted) as info:
        await ab.run_batch(malformed_from_100, range(300), concurrency=1, budget=budget)
    verdict = info.value.cause
    assert isinstance(verdict, ab.BudgetExceeded)
    assert info.value.__cause__ is verdict
    # 5 failures in 105 jobs are within 5%; the 106th job (6 failures) spends the budget.
    assert (verdict.reason, verdict.jobs, verdict.failures, verdict.action) == (
        "max_failure_rate",
        106,
        6,
        "abort",
    )
    assert "BudgetExceeded: failure rate 5.7% (6 of 106 jobs)" in str(info.value)
    partial = info.value.result
    assert (partial.counts[S.SUCCEEDED], partial.counts[S.DEAD_LETTERED]) == (100, 6)
    report = partial.report
    assert report.aborted is not None
    assert report.aborted.startswith("BudgetExceeded: failure rate 5.7%")
    assert report.budget is not None
    assert (report.budget["exhausted"], report.budget["reason"]) == (True, "max_failure_rate")
    assert [
        (g.kind, g.error_type, g.fingerprint, g.count, g.jobs, g.final) for g in report.groups
    ] == [(K.PERMANENT, "asyncbatch._errors.PermanentError", "item <n> is malformed", 6, 6, 6)]


async def test_an_alerting_budget_emits_one_event_and_lets_the_run_finish() -> None:
    events: list[ab.Event] = []
    result = await ab.run_batch(
        malformed_from_100,
        range(300),
        concurrency=1,
        budget=ab.ErrorBudget(max_failure_rate=0.05, min_jobs=100, action="alert"),
        on_event=events.append,
    )
    alerts = [e for e in events if isinstance(e, ab.BudgetExhausted)]
    assert [(e.action, e.jobs, e.failures) for e in alerts] == [("alert", 106, 6)]
    assert alerts[0].reason == "failure rate 5.7% (6 of 106 jobs) exceeds max_failure_rate=0.05"
    assert (result.counts[S.SUCCEEDED], result.counts[S.DEAD_LETTERED]) == (100, 200)
    report = result.report
    assert report.aborted is None
    assert report.budget is not None
    assert report.budget["exhausted"] is True
    assert report.budget["verdict"]["jobs"] == 106
    assert (report.budget["jobs"], report.budget["failures"]) == (300, 200)
    (group,) = report.groups
    assert (group.count, group.jobs, group.final) == (200, 200, 200)
    assert group.sample_keys == ("100", "101", "102", "103", "104")
    assert report.counts == {s.value: n for s, n in result.counts.items()}
    assert report.durations["count"] == 100


async def test_retries_that_save_a_job_show_as_a_group_without_final_failures() -> None:
    seen: set[int] = set()

    async def blip(i: int) -> int:
        if i % 4 == 0 and i not in seen:
            seen.add(i)
            raise ab.TransientError(f"blip on shard {i}")
        return i

    retry = ab.RetryPolicy({K.TRANSIENT: ab.Retry(attempts=3, backoff=ab.Backoff.constant(0))})
    result = await ab.run_batch(blip, range(40), retry=retry)
    report = result.report
    assert result.ok
    assert report.retries == 10
    (group,) = report.groups
    assert (group.kind, group.fingerprint, group.count, group.jobs, group.final) == (
        K.TRANSIENT,
        "blip on shard <n>",
        10,
        10,
        0,
    )
    assert report.durations["count"] == 40


async def test_a_retry_ratio_budget_aborts_a_run_that_only_survives_by_retrying() -> None:
    seen: set[int] = set()

    async def flaky(i: int) -> int:
        if i not in seen:
            seen.add(i)
            raise ab.TransientError("upstream hiccup")
        return i

    retry = ab.RetryPolicy({K.TRANSIENT: ab.Retry(attempts=3, backoff=ab.Backoff.constant(0))})
    with pytest.raises(ab.BatchAborted) as info:
        await ab.run_batch(
            flaky,
            range(100),
            concurrency=2,
            retry=retry,
            budget=ab.ErrorBudget(max_retry_ratio=0.5, min_jobs=10),
        )
    verdict = info.value.cause
    assert isinstance(verdict, ab.BudgetExceeded)
    assert (verdict.reason, verdict.jobs) == ("max_retry_ratio", 10)
    assert verdict.retries >= 10


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_stored_report_reads_back_equal(
    tmp_path: Any, backend: str, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'runs.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    result = await ab.run_batch(malformed_from_100, range(110), run_id="stored", store=url)
    async with ab.open_store(url) as store:
        info = await store.get_run("stored")
    assert info.report is not None
    assert ab.ErrorReport.from_dict(info.report) == result.report
