"""OpenTelemetry: run and attempt spans, their parentage and errors; the run's metrics.

Providers are passed explicitly (the SDK's in-memory exporter and reader):
the global ones can be set only once per process, and the tests rely on the
globals being unset, i.e. no SDK configured.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import asyncbatch as ab
from asyncbatch._observe._otel import Instrumentation

ATTEMPT = "asyncbatch.attempt"
RUN = "asyncbatch.run"


class Boom(Exception):
    pass


BOOM_TYPE = f"{Boom.__module__}.{Boom.__qualname__}"


class Tracing:
    """A tracer provider whose finished spans can be read back."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(shutdown_on_exit=False)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.spans(name)
        return span


class Metrics:
    """A meter provider whose data points can be read back."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)

    def metrics(self) -> dict[str, Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            m.name: m
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            if sm.scope.name == "asyncbatch"
            for m in sm.metrics
        }

    def points(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """Data points of one instrument, keyed by their attributes."""
        metric = self.metrics().get(name)
        if metric is None:
            return {}
        return {frozenset((p.attributes or {}).items()): p for p in metric.data.data_points}

    def value(self, name: str, **attrs: Any) -> Any:
        """The value of the point with exactly these attributes (dots as ``__``)."""
        key = frozenset((k.replace("__", "."), v) for k, v in attrs.items())
        point = self.points(name).get(key)
        return 0 if point is None else point.value


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    t = Tracing()
    yield t
    t.provider.shutdown()


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    yield m
    m.provider.shutdown()


@pytest.fixture
def inst(tracing: Tracing, metrics: Metrics) -> Instrumentation:
    made = Instrumentation.create(tracing.provider, metrics.provider, "run-1")
    assert made is not None
    return made


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.span_id


# ------------------------------------------------------------ create()


def test_no_sdk_configured_means_no_instrumentation() -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert Instrumentation.create(None, None, "r") is None


def test_explicit_noop_providers_mean_no_instrumentation() -> None:
    assert Instrumentation.create(trace.NoOpTracerProvider(), NoOpMeterProvider(), "r") is None


def test_no_sdk_run_never_imports_opentelemetry() -> None:
    code = (
        "import sys, asyncbatch as ab\n"
        "from asyncbatch._observe._otel import Instrumentation\n"
        "assert Instrumentation.create(None, None, 'r') is None\n"
        "async def job(x): return x\n"
        "import asyncio; assert asyncio.run(ab.run_batch(job, range(3))).ok\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "[]"


def test_tracing_alone_records_spans_but_no_metrics(tracing: Tracing) -> None:
    made = Instrumentation.create(tracing.provider, None, "r")
    assert made is not None
    assert made.traced
    assert not made.metered
    with made.run_span({}), made.attempt("k", 1):
        made.in_flight(1)
        made.job_finished(ab.JobStatus.SUCCEEDED)
    assert [s.name for s in tracing.spans()] == [ATTEMPT, RUN]


def test_metrics_alone_record_metrics_but_no_spans(metrics: Metrics) -> None:
    made = Instrumentation.create(None, metrics.provider, "r")
    assert made is not None
    assert not made.traced
    assert made.metered
    with made.run_span({}), made.attempt("k", 1):
        pass
    assert metrics.value("asyncbatch.attempts", asyncbatch__attempt__outcome="success") == 1


def test_creating_twice_on_one_meter_provider_logs_no_conflict(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert Instrumentation.create(None, metrics.provider, "r") is not None
    assert caplog.records == []


# ------------------------------------------------------------ spans


def test_run_span_is_a_child_of_the_callers_span(inst: Instrumentation, tracing: Tracing) -> None:
    with tracing.tracer.start_as_current_span("caller"), inst.run_span({"x.concurrency": 4}):
        pass
    run, caller = tracing.one(RUN), tracing.one("caller")
    assert parent_id(run) == span_id(caller)
    assert dict(run.attributes or {}) == {"asyncbatch.run.id": "run-1", "x.concurrency": 4}


def test_attempt_span_has_run_key_and_number(inst: Instrumentation, tracing: Tracing) -> None:
    with inst.run_span({}), inst.attempt("job-7", 3):
        pass
    attempt = tracing.one(ATTEMPT)
    assert dict(attempt.attributes or {}) == {
        "asyncbatch.run.id": "run-1",
        "asyncbatch.job.key": "job-7",
        "asyncbatch.attempt.number": 3,
    }
    assert parent_id(attempt) == span_id(tracing.one(RUN))
    assert attempt.status.status_code is StatusCode.UNSET
    assert attempt.events == ()


async def test_attempt_is_a_child_of_the_run_span_even_from_a_foreign_context(
    inst: Instrumentation, tracing: Tracing
) -> None:
    async def worker() -> None:
        assert not trace.get_current_span().is_recording()  # nothing inherited
        with inst.attempt("k", 1):
            pass

    with inst.run_span({}):
        with tracing.tracer.start_as_current_span("unrelated"), inst.attempt("k", 1):
            pass
        await asyncio.create_task(worker(), context=contextvars.Context())
    run = tracing.one(RUN)
    assert [parent_id(s) for s in tracing.spans(ATTEMPT)] == [span_id(run)] * 2


def test_spans_made_by_the_job_nest_under_its_attempt(
    inst: Instrumentation, tracing: Tracing
) -> None:
    with inst.run_span({}):
        with inst.attempt("k", 1), tracing.tracer.start_as_current_span("job.work"):
            pass
        # The attempt's context is gone again: the run span is current.
        current = trace.get_current_span()
    assert parent_id(tracing.one("job.work")) == span_id(tracing.one(ATTEMPT))
    assert current.get_span_context().span_id == span_id(tracing.one(RUN))


def test_failed_attempt_is_an_error_with_kind_type_and_exception(
    inst: Instrumentation, tracing: Tracing
) -> None:
    with inst.run_span({}), inst.attempt("k", 1) as scope:
        scope.failed(ab.ErrorKind.PERMANENT, Boom("bad item 7"), retry_in=None)
    span = tracing.one(ATTEMPT)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == f"{BOOM_TYPE}: bad item 7"
    attrs = span.attributes or {}
    assert attrs["asyncbatch.error.kind"] == "permanent"
    assert attrs["error.type"] == BOOM_TYPE
    assert attrs["asyncbatch.attempt.outcome"] == "failure"
    assert "asyncbatch.retry.delay" not in attrs
    (event,) = span.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.type"] == BOOM_TYPE
    assert (event.attributes or {})["exception.message"] == "bad item 7"


def test_failed_attempt_with_a_retry_says_when(inst: Instrumentation, tracing: Tracing) -> None:
    with inst.run_span({}), inst.attempt("k", 1) as scope:
        scope.failed(ab.ErrorKind.TRANSIENT, TimeoutError(), retry_in=0.25)
    span = tracing.one(ATTEMPT)
    assert (span.attributes or {})["asyncbatch.retry.delay"] == 0.25
    assert (span.attributes or {})["error.type"] == "TimeoutError"
    assert [e.name for e in span.events] == ["exception", "asyncbatch.retry_scheduled"]
    assert (span.events[1].attributes or {})["asyncbatch.retry.delay"] == 0.25


def test_rejected_attempt_names_the_open_dependency(
    inst: Instrumentation, tracing: Tracing, metrics: Metrics
) -> None:
    with inst.run_span({}), inst.attempt("k", 1) as scope:
        scope.rejected("payments")
    span = tracing.one(ATTEMPT)
    assert (span.attributes or {})["asyncbatch.dependency"] == "payments"
    assert (span.attributes or {})["asyncbatch.attempt.outcome"] == "rejected"
    (event,) = span.events
    assert event.name == "asyncbatch.circuit_open"
    assert (event.attributes or {})["asyncbatch.dependency"] == "payments"
    assert metrics.value("asyncbatch.attempts", asyncbatch__attempt__outcome="rejected") == 1


def test_an_escaping_error_is_recorded_even_if_not_reported(
    inst: Instrumentation, tracing: Tracing, metrics: Metrics
) -> None:
    with pytest.raises(Boom), inst.run_span({}), inst.attempt("k", 1):
        raise Boom("unexpected")
    attempt = tracing.one(ATTEMPT)
    assert attempt.status.status_code is StatusCode.ERROR
    assert [e.name for e in attempt.events] == ["exception"]
    assert tracing.one(RUN).status.status_code is StatusCode.ERROR
    assert metrics.value("asyncbatch.attempts", asyncbatch__attempt__outcome="failure") == 1


def test_a_cancelled_attempt_is_not_an_error(
    inst: Instrumentation, tracing: Tracing, metrics: Metrics
) -> None:
    with pytest.raises(asyncio.CancelledError), inst.run_span({}), inst.attempt("k", 1):
        raise asyncio.CancelledError
    attempt = tracing.one(ATTEMPT)
    assert attempt.status.status_code is StatusCode.UNSET
    assert (attempt.attributes or {})["asyncbatch.attempt.outcome"] == "cancelled"
    assert metrics.value("asyncbatch.attempts", asyncbatch__attempt__outcome="cancelled") == 1


def test_abort_marks_the_run_span_as_failed(inst: Instrumentation, tracing: Tracing) -> None:
    with inst.run_span({}):
        inst.on_event(ab.RunAborted(run_id="run-1", error_type="MemoryError", message="oom"))
    run = tracing.one(RUN)
    assert run.status.status_code is StatusCode.ERROR
    assert [e.name for e in run.events] == ["asyncbatch.run_aborted"]


def test_breaker_changes_are_events_on_the_run_span(
    inst: Instrumentation, tracing: Tracing
) -> None:
    with inst.run_span({}):
        inst.on_event(ab.BreakerOpened(run_id="run-1", dependency="db"))
        inst.on_event(ab.BreakerClosed(run_id="run-1", dependency="db"))
    # After the run span ended, events are dropped quietly.
    inst.on_event(ab.BreakerHalfOpen(run_id="run-1", dependency="db"))
    run = tracing.one(RUN)
    assert [(e.attributes or {})["asyncbatch.breaker.state"] for e in run.events] == [
        "open",
        "closed",
    ]


# ------------------------------------------------------------ metrics


def test_attempts_are_counted_and_timed_by_outcome_and_kind(
    inst: Instrumentation, metrics: Metrics
) -> None:
    with inst.run_span({}):
        for _ in range(3):
            with inst.attempt("a", 1):
                pass
        for kind in (ab.ErrorKind.TRANSIENT, ab.ErrorKind.TRANSIENT, ab.ErrorKind.PERMANENT):
            with inst.attempt("b", 1) as scope:
                scope.failed(kind, Boom(), retry_in=None)
    outcome = "asyncbatch.attempt.outcome"
    assert metrics.value("asyncbatch.attempts", asyncbatch__attempt__outcome="success") == 3
    failed = {
        dict(k)["asyncbatch.error.kind"]: p.value
        for k, p in metrics.points("asyncbatch.attempts").items()
        if dict(k)[outcome] == "failure"
    }
    assert failed == {"transient": 2, "permanent": 1}
    durations = metrics.points("asyncbatch.attempt.duration")
    assert sum(p.count for p in durations.values()) == 6
    assert all(0 <= p.sum < 1 for p in durations.values())
    m = metrics.metrics()["asyncbatch.attempt.duration"]
    assert m.unit == "s"
    assert m.description
    # Buckets fit seconds, not the SDK's millisecond defaults.
    assert next(iter(durations.values())).explicit_bounds[0] == 0.005


def test_duration_exemplars_point_at_the_attempt_span(
    inst: Instrumentation, tracing: Tracing, metrics: Metrics
) -> None:
    with inst.run_span({}), inst.attempt("k", 1):
        pass
    (point,) = metrics.points("asyncbatch.attempt.duration").values()
    assert [e.span_id for e in point.exemplars] == [span_id(tracing.one(ATTEMPT))]


def test_jobs_are_counted_by_final_status(inst: Instrumentation, metrics: Metrics) -> None:
    for status in (ab.JobStatus.SUCCEEDED, ab.JobStatus.SUCCEEDED, ab.JobStatus.DEAD_LETTERED):
        inst.job_finished(status)
    assert metrics.value("asyncbatch.jobs", asyncbatch__job__status="succeeded") == 2
    assert metrics.value("asyncbatch.jobs", asyncbatch__job__status="dead_lettered") == 1
    assert metrics.metrics()["asyncbatch.jobs"].unit == "{job}"


def test_in_flight_goes_up_and_down(inst: Instrumentation, metrics: Metrics) -> None:
    inst.in_flight(1)
    inst.in_flight(1)
    assert metrics.value("asyncbatch.jobs.in_flight") == 2
    inst.in_flight(-1)
    inst.in_flight(-1)
    assert metrics.value("asyncbatch.jobs.in_flight") == 0


def test_dead_letters_and_breaker_changes_are_counted(
    inst: Instrumentation, metrics: Metrics
) -> None:
    dead = ab.JobDeadLettered(
        run_id="r", key="k", attempts=3, kind="transient", error_type="E", message="m"
    )
    inst.on_event(dead)
    inst.on_event(dead)
    inst.on_event(ab.BreakerOpened(run_id="r", dependency="db"))
    inst.on_event(ab.BreakerHalfOpen(run_id="r", dependency="db"))
    inst.on_event(ab.BreakerOpened(run_id="r", dependency="db"))
    inst.on_event(
        ab.RetryScheduled(  # not a metric of its own: attempts count it
            run_id="r", key="k", attempt=1, delay=0.1, kind="transient", error_type="E", message="m"
        )
    )
    assert metrics.value("asyncbatch.dlq.entries", asyncbatch__error__kind="transient") == 2
    changes = "asyncbatch.breaker.state_changes"
    assert (
        metrics.value(changes, asyncbatch__dependency="db", asyncbatch__breaker__state="open") == 2
    )
    assert (
        metrics.value(changes, asyncbatch__dependency="db", asyncbatch__breaker__state="half_open")
        == 1
    )
    # Nothing else counted anything (in flight is always observed, here 0).
    assert set(metrics.metrics()) == {
        "asyncbatch.dlq.entries",
        changes,
        "asyncbatch.jobs.in_flight",
    }


def test_runs_sharing_a_meter_provider_add_up(metrics: Metrics) -> None:
    for run in ("a", "b"):
        made = Instrumentation.create(None, metrics.provider, run)
        assert made is not None
        with made.attempt("k", 1):
            made.job_finished(ab.JobStatus.SUCCEEDED)
    assert metrics.value("asyncbatch.attempts", asyncbatch__attempt__outcome="success") == 2
    assert metrics.value("asyncbatch.jobs", asyncbatch__job__status="succeeded") == 2
    found = metrics.metrics()
    # Exported as counters (monotonic sums) and an up-down counter.
    assert found["asyncbatch.attempts"].data.is_monotonic
    assert found["asyncbatch.jobs"].data.is_monotonic
    assert not found["asyncbatch.jobs.in_flight"].data.is_monotonic


# ------------------------------------------------------------ through run_batch


def flaky_job(tracer: trace.Tracer) -> Any:
    """Item % 3 == 0 fails once (transient); 4 is bad (permanent); 5 always times out."""
    seen: dict[int, int] = {}

    async def job(x: int) -> int:
        seen[x] = seen.get(x, 0) + 1
        with tracer.start_as_current_span("job.work"):
            await asyncio.sleep(0)
            if x == 4:
                raise ab.PermanentError(f"bad item {x}")
            if x == 5:
                raise TimeoutError("upstream slow")
            if x % 3 == 0 and seen[x] == 1:
                raise ab.TransientError("blip")
            return x

    return job


POLICY = ab.RetryPolicy(
    {ab.ErrorKind.TRANSIENT: ab.Retry(attempts=3, backoff=ab.Backoff.constant(0.001))}
)


async def test_run_batch_traces_every_attempt(tracing: Tracing, metrics: Metrics) -> None:
    with tracing.tracer.start_as_current_span("caller"):
        result = await ab.run_batch(
            flaky_job(tracing.tracer),
            range(10),
            concurrency=3,
            retry=POLICY,
            run_id="traced",
            tracer_provider=tracing.provider,
            meter_provider=metrics.provider,
        )
    assert result.counts[ab.JobStatus.SUCCEEDED] == 8
    assert result.counts[ab.JobStatus.DEAD_LETTERED] == 2

    run = tracing.one(RUN)
    assert parent_id(run) == span_id(tracing.one("caller"))
    assert (run.attributes or {})["asyncbatch.run.id"] == "traced"
    attempts = tracing.spans(ATTEMPT)
    # 0, 3, 6, 9 fail once: 2 attempts; 4: 1 (permanent); 5: 3 (retries spent); others 1.
    per_key: dict[str, list[int]] = {}
    for s in attempts:
        attrs = s.attributes or {}
        per_key.setdefault(str(attrs["asyncbatch.job.key"]), []).append(
            int(attrs["asyncbatch.attempt.number"])  # type: ignore[arg-type]
        )
    assert {k: sorted(v) for k, v in per_key.items()} == {
        str(i): list(range(1, {0: 3, 3: 3, 6: 3, 9: 3, 5: 4}.get(i, 2))) for i in range(10)
    }
    assert {k: sum(1 for _ in v) for k, v in per_key.items()} == {
        o.key: o.attempts for o in result.outcomes
    }
    assert all(parent_id(s) == span_id(run) for s in attempts)
    assert all((s.attributes or {})["asyncbatch.run.id"] == "traced" for s in attempts)

    # Each job's own span sits under the attempt that ran it.
    attempt_ids = {span_id(s) for s in attempts}
    work = tracing.spans("job.work")
    assert len(work) == len(attempts)
    assert {parent_id(s) for s in work} == attempt_ids

    errors = [s for s in attempts if s.status.status_code is StatusCode.ERROR]
    assert len(errors) == 4 + 1 + 3
    kinds = sorted(str((s.attributes or {})["asyncbatch.error.kind"]) for s in errors)
    assert kinds == ["permanent"] + ["transient"] * 7
    retried = [s for s in errors if "asyncbatch.retry.delay" in (s.attributes or {})]
    assert len(retried) == 4 + 2  # the last attempt of item 5 is not retried

    # Metrics agree with the result.
    for status, n in result.counts.items():
        assert metrics.value("asyncbatch.jobs", asyncbatch__job__status=status.value) == n
    assert metrics.value("asyncbatch.dlq.entries", asyncbatch__error__kind="permanent") == 1
    assert metrics.value("asyncbatch.dlq.entries", asyncbatch__error__kind="transient") == 1
    assert metrics.value("asyncbatch.attempts", asyncbatch__attempt__outcome="success") == 8
    assert (
        metrics.value(
            "asyncbatch.attempts",
            asyncbatch__attempt__outcome="failure",
            asyncbatch__error__kind="transient",
        )
        == 7
    )
    durations = metrics.points("asyncbatch.attempt.duration").values()
    assert sum(p.count for p in durations) == len(attempts)
    assert metrics.value("asyncbatch.jobs.in_flight") == 0


async def test_fatal_error_marks_the_run_span_failed(tracing: Tracing) -> None:
    async def job(x: int) -> int:
        if x == 2:
            raise ab.FatalError("credentials revoked")
        return x

    with pytest.raises(ab.BatchAborted):
        await ab.run_batch(job, range(5), concurrency=1, tracer_provider=tracing.provider)
    run = tracing.one(RUN)
    assert run.status.status_code is StatusCode.ERROR
    assert "asyncbatch.run_aborted" in [e.name for e in run.events]
    fatal = [
        s
        for s in tracing.spans(ATTEMPT)
        if (s.attributes or {}).get("asyncbatch.error.kind") == "fatal"
    ]
    assert len(fatal) == 1


@pytest.mark.looptime
async def test_open_circuit_shows_as_rejected_attempts_and_state_changes(
    tracing: Tracing, metrics: Metrics
) -> None:
    async def job(x: int) -> int:
        async with ab.guard("api"):
            raise ConnectionError("api down")

    result = await ab.run_batch(
        job,
        range(6),
        concurrency=1,
        breakers={"api": ab.Breaker(fail_max=2, reset_timeout=1000, on_open="fail")},
        retry=ab.Retry(attempts=1),
        tracer_provider=tracing.provider,
        meter_provider=metrics.provider,
    )
    assert result.counts[ab.JobStatus.DEAD_LETTERED] == 6
    rejected = [
        s
        for s in tracing.spans(ATTEMPT)
        if (s.attributes or {}).get("asyncbatch.attempt.outcome") == "rejected"
    ]
    assert len(rejected) == 4
    assert {(s.attributes or {}).get("asyncbatch.dependency") for s in rejected} == {"api"}
    assert metrics.value("asyncbatch.attempts", asyncbatch__attempt__outcome="rejected") == 4
    assert (
        metrics.value(
            "asyncbatch.breaker.state_changes",
            asyncbatch__dependency="api",
            asyncbatch__breaker__state="open",
        )
        == 1
    )
    assert [e.name for e in tracing.one(RUN).events] == ["asyncbatch.breaker_state_change"]


async def test_no_sdk_run_records_nothing_and_succeeds(tracing: Tracing) -> None:
    result = await ab.run_batch(flaky_job(tracing.tracer), range(10), retry=POLICY)
    # The job's own spans still go to its provider; asyncbatch made none.
    assert result.counts[ab.JobStatus.SUCCEEDED] == 8
    assert {s.name for s in tracing.spans()} == {"job.work"}
    assert all(s.parent is None for s in tracing.spans())


async def test_a_worker_reusing_its_scope_gives_each_attempt_its_own_span(
    tracing: Tracing,
) -> None:
    # Tracing without metrics, one worker: every attempt begins the same scope again.
    started = asyncio.Event()

    async def job(x: int) -> int:
        if x == 1:
            raise ab.PermanentError("bad 1")
        if x == 3:
            started.set()
            await asyncio.sleep(3600)  # cancelled below
        return x

    async def run() -> None:
        await ab.run_batch(
            job, range(5), concurrency=1, run_id="reuse", tracer_provider=tracing.provider
        )

    task = asyncio.create_task(run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    attempts = {str((s.attributes or {})["asyncbatch.job.key"]): s for s in tracing.spans(ATTEMPT)}
    assert sorted(attempts) == ["0", "1", "2", "3"]
    assert len({span_id(s) for s in attempts.values()}) == 4
    for key in ("0", "2"):
        assert attempts[key].status.status_code is StatusCode.UNSET
        assert "asyncbatch.error.kind" not in (attempts[key].attributes or {})
    assert attempts["1"].status.status_code is StatusCode.ERROR
    assert (attempts["1"].attributes or {})["asyncbatch.error.kind"] == "permanent"
    assert attempts["3"].status.status_code is StatusCode.UNSET
    assert (attempts["3"].attributes or {})["asyncbatch.attempt.outcome"] == "cancelled"
    assert all(s.end_time is not None for s in attempts.values())
