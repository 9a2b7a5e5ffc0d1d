"""OpenTelemetry spans and metrics for a run.

One `Instrumentation` per run, made by `Instrumentation.create`, which returns
None when nothing would be recorded (no SDK configured and no provider passed):
the executor then skips every call here, so an uninstrumented app pays nothing.
When only tracing or only metrics is configured, only that half does work.

Spans: ``asyncbatch.run`` around the run (a child of the caller's current
span) and ``asyncbatch.attempt`` around every attempt, a child of the run span
and current while the job runs, so spans the job makes nest under it.
Success leaves the status UNSET, as the OpenTelemetry spec asks of
instrumentation libraries; a failure sets ERROR with the error kind, type and
an exception event.

Metrics, with no run id attribute (one series per run would grow without
bound in a long-lived app):

- ``asyncbatch.jobs`` (counter, ``{job}``): jobs finished, by
  ``asyncbatch.job.status``;
- ``asyncbatch.attempts`` (counter, ``{attempt}``): by
  ``asyncbatch.attempt.outcome`` and, for failures, ``asyncbatch.error.kind``;
- ``asyncbatch.attempt.duration`` (histogram, ``s``): attributes as above;
  its exemplars link to attempt spans;
- ``asyncbatch.dlq.entries`` (counter, ``{entry}``): by ``asyncbatch.error.kind``;
- ``asyncbatch.breaker.state_changes`` (counter, ``{change}``): by
  ``asyncbatch.dependency`` and ``asyncbatch.breaker.state``
  (``open``, ``half_open``, ``closed``);
- ``asyncbatch.jobs.in_flight`` (up-down counter, ``{job}``): attempts running.

The first two and the last are asynchronous instruments over counts kept
here (see `_Metrics`): same exported data, a fraction of the cost per job.

Attempt outcomes: ``success``, ``failure``, ``rejected`` (a circuit breaker
refused the call) and ``cancelled`` (the attempt was interrupted, e.g. by an
abort).

The OpenTelemetry API is imported on first use, not with asyncbatch: a run
with no provider in a process that never imported OpenTelemetry cannot have an
SDK configured, so it costs neither the import nor a lookup.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from asyncbatch._errors import ErrorKind, qualname
from asyncbatch._result import JobStatus

from ._events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    BudgetExhausted,
    ConcurrencyChanged,
    Event,
    JobDeadLettered,
    RunAborted,
)
from ._metrics import metrics_for
from ._otel_names import (
    _ATTEMPT_ATTRS,
    _CANCELLED,
    _FAILED,
    _REJECTED,
    _STATUS,
    _SUCCESS,
    _UNCLASSIFIED,
    ATTEMPT_NUMBER,
    ATTEMPT_OUTCOME,
    ATTEMPT_SPAN,
    BREAKER_STATE,
    CANCELLED,
    CHUNK_FAILED,
    CHUNK_SIZE,
    DEPENDENCY,
    ERROR_KIND,
    ERROR_TYPE,
    FAILURE,
    HEDGE_EXTRA,
    HEDGE_WON,
    ITEM_EVENT,
    JOB_KEY,
    REJECTED,
    RETRY_DELAY,
    RUN_ID,
    RUN_SPAN,
    SCOPE,
)

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import (
        Meter,
        MeterProvider,
    )
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["AttemptScope", "Instrumentation"]

_BREAKER_STATE: dict[type[Event], str] = {
    BreakerOpened: "open",
    BreakerHalfOpen: "half_open",
    BreakerClosed: "closed",
}


class Instrumentation:
    """Spans and metrics of one run; every method is cheap (the executor calls them per attempt)."""

    __slots__ = ("_metrics", "_run_ctx", "_run_span", "_tracer", "run_id")

    def __init__(self, run_id: str, tracer: Tracer | None, meter: Meter | None) -> None:
        self.run_id = run_id
        self._tracer = tracer
        self._run_ctx: Context | None = None
        self._run_span: Span | None = None
        self._metrics = metrics_for(meter) if meter is not None else None

    @staticmethod
    def create(
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        run_id: str,
    ) -> Instrumentation | None:
        """Instrumentation for a run, or None when nothing would be recorded.

        Args:
            tracer_provider: where spans go; None means the global provider.
            meter_provider: where metrics go; None means the global provider.
            run_id: the run's id, an attribute of every span.

        Returns:
            None when neither provider records anything (both None and no SDK
            configured globally, or explicit no-op providers).
        """
        if tracer_provider is None and meter_provider is None and not _otel_in_use():
            return None
        tracer = _tracer(tracer_provider)
        meter = _meter(meter_provider)
        if tracer is None and meter is None:
            return None
        return Instrumentation(run_id, tracer, meter)

    @property
    def traced(self) -> bool:
        """Whether spans are recorded."""
        return self._tracer is not None

    @property
    def metered(self) -> bool:
        """Whether metrics are recorded."""
        return self._metrics is not None

    # ------------------------------------------------------------ spans

    @contextmanager
    def run_span(self, attrs: Mapping[str, Any]) -> Iterator[None]:
        """Span ``asyncbatch.run``, current inside; attempts become its children.

        Args:
            attrs: attributes beside ``asyncbatch.run.id`` (e.g. concurrency).
        """
        tracer = self._tracer
        if tracer is None:
            yield
            return
        from opentelemetry import context, trace

        span = tracer.start_span(RUN_SPAN, attributes={RUN_ID: self.run_id, **attrs})
        ctx = trace.set_span_in_context(span)
        self._run_span, self._run_ctx = span, ctx
        token = context.attach(ctx)
        try:
            yield
        except Exception as exc:
            span.record_exception(exc, escaped=True)
            _set_error(span, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            context.detach(token)
            span.end()

    def attempt(self, key: str, attempt: int) -> AttemptScope:
        """Span ``asyncbatch.attempt`` (current while the job runs) and attempt metrics.

        Args:
            key: the job's key.
            attempt: the attempt number, 1-based.

        Returns:
            A context manager yielding the `AttemptScope` to report failures on.
        """
        return AttemptScope(self, key, attempt)

    # ------------------------------------------------------------ metrics

    def job_finished(self, status: JobStatus) -> None:
        """Count a job that reached its final status."""
        m = self._metrics
        if m is not None:
            with m.lock:
                m.jobs[_STATUS[status]] += 1

    def in_flight(self, delta: int) -> None:
        """An attempt started (+1) or ended (-1)."""
        m = self._metrics
        if m is not None:
            with m.lock:
                m.in_flight += delta

    def on_event(self, event: Event) -> None:
        """Count DLQ entries and breaker changes; note run-level events on the run span."""
        m = self._metrics
        if isinstance(event, JobDeadLettered):
            if m is not None:
                m.dlq.add(1, {ERROR_KIND: event.kind})
            return
        if isinstance(event, ConcurrencyChanged):
            if m is not None:
                with m.lock:
                    m.limits[event.dependency] = event.limit
            return
        span = self._run_span
        if isinstance(event, BreakerOpened | BreakerHalfOpen | BreakerClosed):
            attrs = {DEPENDENCY: event.dependency, BREAKER_STATE: _BREAKER_STATE[type(event)]}
            if m is not None:
                m.breaker_changes.add(1, attrs)
            if span is not None and span.is_recording():
                span.add_event("asyncbatch.breaker_state_change", attrs)
        elif span is not None and span.is_recording():
            if isinstance(event, RunAborted):
                span.add_event(
                    "asyncbatch.run_aborted",
                    {ERROR_TYPE: event.error_type, "message": event.message},
                )
                span.set_attribute(ERROR_TYPE, event.error_type)
                _set_error(span, f"aborted: {event.error_type}: {event.message}")
            elif isinstance(event, BudgetExhausted):
                span.add_event(
                    "asyncbatch.budget_exhausted",
                    {"asyncbatch.budget.action": event.action, "message": event.reason},
                )


class AttemptScope:
    """One attempt's span and measurements; report how it went with `failed`/`rejected`.

    Used as a context manager (``with inst.attempt(key, n) as scope:``). On
    exit the span ends and the attempt is counted and timed, with outcome
    ``success`` unless `failed` or `rejected` was called, or ``cancelled``
    when a cancellation (any non-`Exception`) escapes.

    A worker may also keep one scope for all its attempts: `begin` each one,
    and `end` it (after `escaped`, when something escaped the job); no
    object is then made per attempt.
    """

    __slots__ = ("_inst", "_key", "_number", "_outcome", "_span", "_start", "_token")

    def __init__(self, inst: Instrumentation, key: str, number: int) -> None:
        self._inst = inst
        self._key = key
        self._number = number
        self._outcome = _SUCCESS
        self._span: Span | None = None
        self._token: object = None
        self._start = 0.0

    def __enter__(self) -> AttemptScope:
        self.begin(self._key, self._number)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.escaped(exc)
        self.end()

    def begin(self, key: str, number: int) -> None:
        """Attempt ``number`` of job ``key`` starts: its span starts, current from now."""
        self._outcome = _SUCCESS
        inst = self._inst
        tracer = inst._tracer
        if tracer is not None:
            ctx = inst._run_ctx
            span = tracer.start_span(
                ATTEMPT_SPAN,
                ctx,
                attributes={RUN_ID: inst.run_id, JOB_KEY: key, ATTEMPT_NUMBER: number},
            )
            self._span = span
            self._token = _attach(_set_span_in_context(span, ctx))
        if inst._metrics is not None:
            self._start = time.perf_counter()

    def end(self) -> None:
        """The attempt is over: its span ends, and it is counted and timed."""
        m = self._inst._metrics
        if m is not None:
            outcome = self._outcome
            # Recorded while the attempt span is current: an exemplar then links to it.
            m.duration.record(time.perf_counter() - self._start, _ATTEMPT_ATTRS[outcome])
            with m.lock:
                m.attempts[outcome] += 1
        span = self._span
        if span is not None:
            self._span = None  # a reused scope holds no ended span
            _detach(self._token)
            span.end()

    def failed(self, kind: ErrorKind, exc: BaseException, *, retry_in: float | None) -> None:
        """The attempt failed with ``exc``, classified ``kind``.

        Args:
            kind: how the failure was classified.
            exc: the error (recorded as the span's exception event).
            retry_in: seconds until the retry, or None when there is none.
        """
        self._outcome = _FAILED[kind]
        span = self._span
        if span is None:
            return
        error_type = qualname(type(exc))
        span.set_attributes(
            {ATTEMPT_OUTCOME: FAILURE, ERROR_KIND: kind.value, ERROR_TYPE: error_type}
        )
        span.record_exception(exc)
        _set_error(span, f"{error_type}: {exc}")
        if retry_in is not None:
            span.set_attribute(RETRY_DELAY, retry_in)
            span.add_event("asyncbatch.retry_scheduled", {RETRY_DELAY: retry_in})

    def hedged(self, extra: int, *, won: bool) -> None:
        """The attempt started ``extra`` hedged calls; ``won``: one of them gave its result.

        Args:
            extra: extra calls started.
            won: whether the result came from an extra call.
        """
        span = self._span
        if span is None:
            return
        span.set_attributes({HEDGE_EXTRA: extra, HEDGE_WON: won})
        span.add_event("asyncbatch.hedged", {HEDGE_EXTRA: extra, HEDGE_WON: won})

    def rejected(self, dependency: str) -> None:
        """A circuit breaker refused the call: the job never ran in this attempt.

        Args:
            dependency: the dependency whose circuit is open.
        """
        self._outcome = _REJECTED
        span = self._span
        if span is None:
            return
        span.set_attributes({ATTEMPT_OUTCOME: REJECTED, DEPENDENCY: dependency})
        span.add_event("asyncbatch.circuit_open", {DEPENDENCY: dependency})

    def chunk(self, size: int) -> None:
        """The attempt is one call for ``size`` items (``batch_size=``)."""
        span = self._span
        if span is not None:
            span.set_attribute(CHUNK_SIZE, size)

    def item(
        self,
        key: str,
        outcome: str,
        kind: ErrorKind | None = None,
        exc: BaseException | None = None,
    ) -> None:
        """One item of a chunked call ended this way: an ``asyncbatch.item`` event.

        Args:
            key: the item's job key.
            outcome: ``"success"`` or ``"failure"``.
            kind: how its failure was classified, if it failed.
            exc: its error, if it failed.
        """
        span = self._span
        if span is None:
            return
        attrs: dict[str, Any] = {JOB_KEY: key, ATTEMPT_OUTCOME: outcome}
        if kind is not None:
            attrs[ERROR_KIND] = kind.value
        if exc is not None:
            attrs[ERROR_TYPE] = qualname(type(exc))
            attrs["exception.message"] = str(exc)
        span.add_event(ITEM_EVENT, attrs)

    def items_failed(self, n: int) -> None:
        """``n`` items of this chunked call failed (the call itself returned)."""
        span = self._span
        if span is not None and n:
            span.set_attribute(CHUNK_FAILED, n)

    def escaped(self, exc: BaseException) -> None:
        """``exc`` escaped the attempt: a cancellation, or an error nobody classified
        (nothing is said when `failed` or `rejected` already said how it ended)."""
        if self._outcome != _SUCCESS:
            return
        span = self._span
        if not isinstance(exc, Exception):
            # Cancellation is not an error of the job: say so, leave the status.
            self._outcome = _CANCELLED
            if span is not None:
                span.set_attribute(ATTEMPT_OUTCOME, CANCELLED)
            return
        self._outcome = _UNCLASSIFIED
        if span is not None:
            error_type = qualname(type(exc))
            span.set_attributes({ATTEMPT_OUTCOME: FAILURE, ERROR_TYPE: error_type})
            span.record_exception(exc, escaped=True)
            _set_error(span, f"{error_type}: {exc}")


# ------------------------------------------------------------ the API, lazily

_attach: Any = None
_detach: Any = None
_set_span_in_context: Any = None


def _load_api() -> None:
    """Bind the context functions the hot path calls (once per process)."""
    global _attach, _detach, _set_span_in_context
    from opentelemetry import context, trace

    _attach, _detach = context.attach, context.detach
    _set_span_in_context = trace.set_span_in_context


def _set_error(span: Span, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, description))


def _otel_in_use() -> bool:
    """Whether a global provider may be configured at all.

    Setting one means importing the API, and the environment variables name
    providers the API loads on first lookup: with neither, there is none.
    """
    return (
        "opentelemetry.trace" in sys.modules
        or "opentelemetry.metrics" in sys.modules
        or "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
        or "OTEL_PYTHON_METER_PROVIDER" in os.environ
    )


def _tracer(provider: TracerProvider | None) -> Tracer | None:
    """A recording tracer from ``provider`` (or the global one), else None."""
    from opentelemetry import trace

    if provider is None or isinstance(provider, trace.ProxyTracerProvider):
        # An old reference to the proxy: what it forwards to now is what counts.
        provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    from asyncbatch._version import __version__

    tracer = provider.get_tracer(SCOPE, __version__)
    if isinstance(tracer, trace.NoOpTracer | trace.ProxyTracer):
        return None  # e.g. an SDK provider disabled by OTEL_SDK_DISABLED
    if _attach is None:
        _load_api()
    return tracer


def _meter(provider: MeterProvider | None) -> Meter | None:
    """A recording meter from ``provider`` (or the global one), else None."""
    from opentelemetry import metrics

    if provider is None or _is_proxy(provider):
        provider = metrics.get_meter_provider()
    if _is_proxy(provider) or isinstance(provider, metrics.NoOpMeterProvider):
        return None
    from asyncbatch._version import __version__

    meter = provider.get_meter(SCOPE, __version__)
    if isinstance(meter, metrics.NoOpMeter):
        return None  # e.g. an SDK provider disabled by OTEL_SDK_DISABLED
    return meter


def _is_proxy(provider: object) -> bool:
    # The API's placeholder until a global is set; its class is private, so by name.
    return type(provider).__name__ == "_ProxyMeterProvider"
