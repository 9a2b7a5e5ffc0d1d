"""The error budget: when it fires, what it says, and what it refuses."""

from __future__ import annotations

import json
import math
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import asyncbatch as ab
from asyncbatch._policy._budget import BudgetTracker

K = ab.ErrorKind
S = ab.JobStatus


def ok(key: str = "k") -> ab.JobOutcome[Any]:
    return ab.JobOutcome(key=key, status=S.SUCCEEDED, attempts=1)


def dead(kind: ab.ErrorKind = K.PERMANENT) -> ab.JobOutcome[Any]:
    return ab.JobOutcome(key="k", status=S.DEAD_LETTERED, kind=kind, attempts=1)


def failed(kind: ab.ErrorKind = K.FATAL) -> ab.JobOutcome[Any]:
    return ab.JobOutcome(key="k", status=S.FAILED, kind=kind, attempts=1)


def feed(tracker: BudgetTracker, outcomes: list[ab.JobOutcome[Any]]) -> list[tuple[int, Any]]:
    """Feed outcomes; return (1-based job number, verdict) for every verdict given."""
    return [(n, v) for n, o in enumerate(outcomes, 1) if (v := tracker.record_job(o)) is not None]


# ----------------------------------------------------------- failure rate


def test_rate_budget_fires_on_the_first_job_that_pushes_the_rate_over_the_limit() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_failure_rate=0.05, min_jobs=100))
    # 100 successes, then only failures: 5/105 = 4.8% is within budget, 6/106 = 5.7% is not.
    verdicts = feed(tracker, [ok()] * 100 + [dead()] * 50)
    assert len(verdicts) == 1
    n, verdict = verdicts[0]
    assert n == 106
    assert (verdict.reason, verdict.failures, verdict.jobs) == ("max_failure_rate", 6, 106)
    assert verdict.limit == 0.05
    assert verdict.observed == pytest.approx(6 / 106)
    assert tracker.exhausted


def test_a_rate_exactly_at_the_limit_is_within_budget() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_failure_rate=0.05, min_jobs=100))
    assert feed(tracker, [ok()] * 95 + [dead()] * 5) == []
    assert not tracker.exhausted


def test_rate_is_not_judged_before_min_jobs_even_if_everything_fails() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_failure_rate=0.05, min_jobs=100))
    verdicts = feed(tracker, [dead()] * 150)
    assert [n for n, _ in verdicts] == [100]
    assert verdicts[0][1].observed == 1.0


def test_a_success_that_reaches_min_jobs_delivers_the_verdict() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_failure_rate=0.05, min_jobs=100))
    verdicts = feed(tracker, [dead()] * 10 + [ok()] * 90)
    assert [(n, v.failures, v.jobs) for n, v in verdicts] == [(100, 10, 100)]


def test_the_verdict_is_given_once() -> None:
    tracker = BudgetTracker(
        ab.ErrorBudget(max_failure_rate=0.01, max_failures=3, min_jobs=10, max_retry_ratio=0.1)
    )
    verdicts = feed(tracker, [dead()] * 50 + [ok()] * 50)
    for _ in range(20):
        assert tracker.record_attempt(K.TRANSIENT, True) is None
    assert len(verdicts) == 1
    assert tracker.verdict is verdicts[0][1]


def test_skipped_cancelled_and_compensated_jobs_are_not_counted() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_failure_rate=0.5, min_jobs=2))
    for status in (S.SKIPPED, S.CANCELLED, S.COMPENSATED):
        assert tracker.record_job(ab.JobOutcome(key="k", status=status, kind=K.PERMANENT)) is None
    assert (tracker.jobs, tracker.failures) == (0, 0)


def test_fatal_failures_count_as_failures() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_failures=1))
    assert tracker.record_job(failed()) is None
    verdict = tracker.record_job(failed())
    assert verdict is not None
    assert verdict.failures == 2


# ------------------------------------------------------------ max_failures


def test_max_failures_is_judged_from_the_first_job_regardless_of_min_jobs() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_failures=2, min_jobs=1000))
    verdicts = feed(tracker, [ok(), dead(), ok(), dead(), dead(), dead()])
    assert [n for n, _ in verdicts] == [5]
    verdict = verdicts[0][1]
    assert (verdict.reason, verdict.limit, verdict.observed) == ("max_failures", 2, 3)
    assert str(verdict) == "3 failed jobs exceed max_failures=2 (after 5 jobs)"


def test_max_failures_zero_means_the_first_failure_exhausts_the_budget() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_failures=0))
    assert [n for n, _ in feed(tracker, [ok(), ok(), dead()])] == [3]


# --------------------------------------------------------------- per kind


def test_per_kind_limits_are_judged_independently() -> None:
    budget = ab.ErrorBudget(per_kind={K.PERMANENT: 0.02, K.TRANSIENT: 0.5}, min_jobs=100)
    tracker = BudgetTracker(budget)
    # 40% transient failures: within their 50%; 2% permanent: within their 2%.
    stream = [dead(K.TRANSIENT)] * 40 + [dead(K.PERMANENT)] * 2 + [ok()] * 58
    assert feed(tracker, stream) == []
    verdict = tracker.record_job(dead(K.PERMANENT))  # 3 of 101: over 2%
    assert verdict is not None
    assert (verdict.reason, verdict.kind, verdict.limit) == ("per_kind", K.PERMANENT, 0.02)
    assert verdict.observed == pytest.approx(3 / 101)
    assert str(verdict).startswith("permanent failure rate 3.0% (3 of 101 jobs)")


def test_failures_of_a_kind_without_a_limit_do_not_spend_another_kinds_budget() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(per_kind={K.PERMANENT: 0.01}, min_jobs=10))
    assert feed(tracker, [dead(K.RECOVERABLE)] * 30) == []


def test_per_kind_accepts_kind_names() -> None:
    budget = ab.ErrorBudget(per_kind={"permanent": 0.1})
    assert budget.per_kind == {K.PERMANENT: 0.1}


# ------------------------------------------------------------ retry ratio


def test_retry_ratio_is_not_judged_before_min_jobs() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_retry_ratio=0.5, min_jobs=20))
    assert feed(tracker, [ok()] * 19) == []
    for _ in range(50):  # 50 retries over 19 jobs, but 19 < min_jobs
        assert tracker.record_attempt(K.TRANSIENT, True) is None
    verdict = tracker.record_job(ok())
    assert verdict is not None
    assert (verdict.reason, verdict.retries, verdict.jobs) == ("max_retry_ratio", 50, 20)


def test_retry_ratio_fires_on_the_retry_that_pushes_it_over_the_limit() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_retry_ratio=0.5, min_jobs=20))
    assert feed(tracker, [ok()] * 20) == []
    verdicts = [tracker.record_attempt(K.TRANSIENT, True) for _ in range(11)]
    assert verdicts[:10] == [None] * 10  # 10 retries / 20 jobs = 0.5: within budget
    verdict = verdicts[10]
    assert verdict is not None
    assert (verdict.reason, verdict.retries, verdict.jobs) == ("max_retry_ratio", 11, 20)
    assert verdict.observed == pytest.approx(0.55)
    assert str(verdict) == "retry ratio 0.55 (11 retries over 20 jobs) exceeds max_retry_ratio=0.5"


def test_retry_ratio_can_fire_when_min_jobs_is_reached() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_retry_ratio=0.5, min_jobs=10))
    verdicts = []
    for n in range(1, 11):
        assert tracker.record_attempt(K.RECOVERABLE, True) is None
        if (v := tracker.record_job(ok())) is not None:
            verdicts.append((n, v.reason))
    assert verdicts == [(10, "max_retry_ratio")]


def test_failed_attempts_that_are_not_retried_are_not_retries() -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_retry_ratio=0.1, min_jobs=1))
    tracker.record_job(ok())
    for _ in range(10):
        assert tracker.record_attempt(K.PERMANENT, False) is None
    assert (tracker.retries, tracker.attempts) == (0, 10)


# ---------------------------------------------------------------- verdict


@pytest.mark.parametrize("action", ["abort", "alert"])
def test_the_verdict_reports_the_action_and_is_otherwise_the_same(action: str) -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_failures=0, action=action))  # type: ignore[arg-type]
    verdict = tracker.record_job(dead())
    assert verdict is not None
    assert verdict.action == action
    assert str(verdict) == "1 failed jobs exceed max_failures=0 (after 1 jobs)"


def test_verdict_is_an_asyncbatch_error_that_pickles_with_its_fields() -> None:
    verdict = ab.BudgetExceeded(
        reason="per_kind", limit=0.1, observed=0.2, failures=3, jobs=10, kind=K.PERMANENT
    )
    assert isinstance(verdict, ab.AsyncBatchError)
    copy = pickle.loads(pickle.dumps(verdict))
    assert copy.to_dict() == verdict.to_dict()
    assert (
        str(copy)
        == str(verdict)
        == ("permanent failure rate 20.0% (2 of 10 jobs) exceeds per_kind[permanent]=0.1")
    )


def test_state_is_a_json_safe_snapshot_of_limits_observations_and_verdict() -> None:
    tracker = BudgetTracker(
        ab.ErrorBudget(max_failure_rate=0.1, per_kind={K.PERMANENT: 0.5}, min_jobs=4)
    )
    tracker.record_attempt(K.TRANSIENT, True)
    feed(tracker, [ok(), ok(), dead(K.PERMANENT)])
    state = json.loads(json.dumps(tracker.state()))
    assert state["exhausted"] is False
    assert state["reason"] is None
    assert state["limits"]["per_kind"] == {"permanent": 0.5}
    assert (state["jobs"], state["failures"], state["retries"]) == (3, 1, 1)
    assert state["failures_by_kind"]["permanent"] == 1
    tracker.record_job(ok())  # 4th job: judged, 25% > 10%
    state = json.loads(json.dumps(tracker.state()))
    assert state["exhausted"] is True
    assert state["reason"] == "max_failure_rate"
    assert state["message"] == str(tracker.verdict)
    assert state["failure_rate"] == 0.25


# ----------------------------------------------------------------- config


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_failure_rate": 0},
        {"max_failure_rate": 1.5},
        {"max_failure_rate": -0.1},
        {"max_failure_rate": "5%"},
        {"max_failure_rate": True},
        {"max_failures": -1},
        {"max_failures": 1.5},
        {"max_failures": 3, "min_jobs": -1},
        {"max_failures": 3, "min_jobs": 2.5},
        {"per_kind": {"nope": 0.1}},
        {"per_kind": {K.PERMANENT: 2}},
        {"per_kind": [(K.PERMANENT, 0.1)]},
        {"per_kind": {}},
        {"max_retry_ratio": 0},
        {"max_retry_ratio": math.inf},
        {"max_failures": 3, "action": "warn"},
    ],
)
def test_bad_options_are_a_one_line_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ab.ConfigError) as info:
        ab.ErrorBudget(**options)
    assert "\n" not in str(info.value)
    assert "ErrorBudget" in str(info.value)


def test_a_budget_with_no_limit_shows_how_to_set_one() -> None:
    with pytest.raises(ab.ConfigError, match=r"HINT: ErrorBudget\(max_failure_rate=0.05\)"):
        ab.ErrorBudget()


def test_budget_options_are_keyword_only_and_the_repr_reads_back() -> None:
    with pytest.raises(TypeError):
        ab.ErrorBudget(0.05)  # type: ignore[call-arg]
    budget = ab.ErrorBudget(max_failure_rate=0.05, action="alert")
    assert "max_failure_rate=0.05" in repr(budget)
    assert "action='alert'" in repr(budget)


# -------------------------------------------------------------- properties

_outcomes = st.lists(
    st.sampled_from(
        [
            *(ok(), ok(), ok(), dead(K.PERMANENT), dead(K.TRANSIENT), failed(K.FATAL)),
            *(ab.JobOutcome(key="k", status=s) for s in (S.SKIPPED, S.CANCELLED)),
        ]
    ),
    max_size=300,
)


@given(
    outcomes=_outcomes,
    min_jobs=st.integers(0, 120),
    rate=st.floats(0.01, 1.0),
    per_kind=st.floats(0.01, 1.0),
)
def test_rates_fire_exactly_when_a_reference_model_says_and_never_before_min_jobs(
    outcomes: list[ab.JobOutcome[Any]], min_jobs: int, rate: float, per_kind: float
) -> None:
    budget = ab.ErrorBudget(
        max_failure_rate=rate, per_kind={K.PERMANENT: per_kind}, min_jobs=min_jobs
    )
    tracker = BudgetTracker(budget)
    given_at = [n for n, o in enumerate(outcomes) if tracker.record_job(o) is not None]

    # The reference: after each outcome, is any rate over its limit with enough jobs?
    jobs = failures = permanent = 0
    expected = None
    for n, o in enumerate(outcomes):
        if o.status in (S.SUCCEEDED, S.DEAD_LETTERED, S.FAILED):
            jobs += 1
            if o.status is not S.SUCCEEDED:
                failures += 1
                permanent += o.kind is K.PERMANENT
            if jobs >= max(min_jobs, 1) and (failures / jobs > rate or permanent / jobs > per_kind):
                expected = n
                break
    assert given_at == ([] if expected is None else [expected])
    if given_at:
        assert tracker.verdict is not None
        assert tracker.verdict.jobs >= min_jobs


@given(outcomes=_outcomes, limit=st.integers(0, 20))
def test_max_failures_fires_on_the_failure_after_the_limit(
    outcomes: list[ab.JobOutcome[Any]], limit: int
) -> None:
    tracker = BudgetTracker(ab.ErrorBudget(max_failures=limit, min_jobs=10**6))
    given_at = [n for n, o in enumerate(outcomes) if tracker.record_job(o) is not None]
    failing = [n for n, o in enumerate(outcomes) if o.status in (S.DEAD_LETTERED, S.FAILED)]
    assert given_at == failing[limit : limit + 1]
