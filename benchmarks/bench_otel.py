"""OpenTelemetry cost: what asyncbatch's spans add, next to the SDK's own bare span.

Run: ``python -m benchmarks.bench_otel [--quick]``. Every figure is a ratio to
a baseline measured in the same run (the machines are shared and noisy), each
the best of a few repeats.

Scenarios:
1. no SDK configured (global providers untouched) vs instrumentation compiled
   out (``Instrumentation.create`` patched to return None): target >= 0.95x;
2. the SDK with a ``BatchSpanProcessor`` to a no-op exporter: asyncbatch's
   per-attempt tracing cost (traced minus untraced run time, per job) vs the
   SDK's bare ``with tracer.start_as_current_span("x"): pass``: target <= 1.25x;
   the same for ``Instrumentation.attempt()`` alone; metrics on top, for
   information;
3. 1 ms jobs with tracing on: wall time lost. Sequentially (concurrency 1)
   the target is <= 5%. At concurrency 100 the loop is CPU-bound (100 jobs
   per millisecond leave ~10 µs of CPU per job, half of one SDK span), so
   any per-job span shows in full: reported against a span the job makes
   itself, which is what asyncbatch's tracing replaces.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from unittest import mock

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import asyncbatch as ab
from asyncbatch._observe._otel import Instrumentation

from ._util import best_of, row, table


class NullExporter(SpanExporter):
    """Accepts every span and does nothing: the cost measured is the SDK's and ours."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def sdk_provider() -> TracerProvider:
    provider = TracerProvider(shutdown_on_exit=False)
    # A queue big enough that no span is dropped: dropping would flatter both sides.
    provider.add_span_processor(BatchSpanProcessor(NullExporter(), max_queue_size=1 << 18))
    return provider


async def noop(x: int) -> int:
    return x


async def one_ms(x: int) -> int:
    await asyncio.sleep(0.001)
    return x


def per_op(loop: Callable[[int], object], n: int) -> float:
    """Seconds per iteration of one ``loop(n)``."""
    gc.collect()
    start = time.perf_counter()
    loop(n)
    return (time.perf_counter() - start) / n


def bare_span_loop(provider: TracerProvider) -> Callable[[int], None]:
    tracer = provider.get_tracer("bench")

    def loop(n: int) -> None:
        for _ in range(n):
            with tracer.start_as_current_span("x"):
                pass

    return loop


def attributed_span_loop(provider: TracerProvider) -> Callable[[int], None]:
    """The bare span with the three attributes every attempt span carries (DESIGN.md)."""
    tracer = provider.get_tracer("bench")

    def loop(n: int) -> None:
        for i in range(n):
            attributes = {
                "asyncbatch.run.id": "bench",
                "asyncbatch.job.key": "key",
                "asyncbatch.attempt.number": i,
            }
            with tracer.start_as_current_span("x", attributes=attributes):
                pass

    return loop


def attempt_loop(provider: TracerProvider) -> Callable[[int], None]:
    inst = Instrumentation.create(provider, None, "bench")
    assert inst is not None

    def loop(n: int) -> None:
        with inst.run_span({}):
            for i in range(n):
                with inst.attempt("key", i):
                    pass

    return loop


class Rounds:
    """Interleaved measurements, the best of each kept (noise only ever adds time)."""

    def __init__(self) -> None:
        self.best: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.best[name] = min(self.best.get(name, float("inf")), seconds)

    def batch(self, name: str, make: Callable[[], Awaitable[object]]) -> None:
        self.add(name, best_of(make, repeat=1))

    def __getitem__(self, name: str) -> float:
        return self.best[name]


def scenario_no_sdk(n: int, rounds: int) -> list[list[str]]:
    c = 100
    r = Rounds()
    for _ in range(rounds):
        r.batch("no sdk", lambda: ab.run_batch(noop, range(n), concurrency=c))
        with mock.patch.object(Instrumentation, "create", staticmethod(lambda *_: None)):
            r.batch("compiled out", lambda: ab.run_batch(noop, range(n), concurrency=c))
    ratio = r["compiled out"] / r["no sdk"]
    return [
        row(
            f"{n:,} no-op jobs, no SDK configured vs instrumentation compiled out",
            f"{ratio:.2f}x ({n / r['no sdk']:,.0f} jobs/s)",
            ">= 0.95x",
            ratio >= 0.95,
        )
    ]


def scenario_sdk(n: int, rounds: int) -> list[list[str]]:
    c = 100
    provider = sdk_provider()
    tracer = provider.get_tracer("bench")
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    bare, attempt = bare_span_loop(provider), attempt_loop(provider)
    attributed = attributed_span_loop(provider)

    async def own_span(x: int) -> int:
        with tracer.start_as_current_span("x"):
            pass
        return x

    r = Rounds()
    try:
        for _ in range(rounds):
            r.add("bare", per_op(bare, n))
            r.add("attributed", per_op(attributed, n))
            r.add("attempt", per_op(attempt, n))
            r.batch("off", lambda: ab.run_batch(noop, range(n), concurrency=c))
            r.batch(
                "on", lambda: ab.run_batch(noop, range(n), concurrency=c, tracer_provider=provider)
            )
            r.batch("own", lambda: ab.run_batch(own_span, range(n), concurrency=c))
            # Instrumentation that records nothing: the traced worker loop
            # (taken whenever there is instrumentation) without any span cost.
            empty = staticmethod(lambda *_: Instrumentation("bench", None, None))
            with mock.patch.object(Instrumentation, "create", empty):
                r.batch("path", lambda: ab.run_batch(noop, range(n), concurrency=c))
            r.batch(
                "both",
                lambda: ab.run_batch(
                    noop, range(n), concurrency=c, tracer_provider=provider, meter_provider=meters
                ),
            )
    finally:
        provider.shutdown()
        meters.shutdown()
    traced = (r["on"] - r["off"]) / n
    own = (r["own"] - r["off"]) / n
    both = (r["both"] - r["off"]) / n
    path = (r["path"] - r["off"]) / n
    bare_s = r["bare"]
    us = 1e6
    return [
        row("SDK bare span in a tight loop (batch processor)", f"{bare_s * us:.1f} µs", ""),
        row(
            f"{n:,} no-op jobs, tracing on: per-attempt cost vs bare span",
            f"{traced / bare_s:.2f}x ({traced * us:.1f} µs/job)",
            "<= 1.25x",
            traced / bare_s <= 1.25,
        ),
        row(
            "same, vs the job making one bare span itself (SDK cost inside a batch)",
            f"{traced / own:.2f}x ({own * us:.1f} µs/job)",
            "<= 1.25x",
            traced / own <= 1.25,
        ),
        row(
            "of which the traced worker loop itself (instrumentation recording nothing)",
            f"{path * us:.1f} µs/job",
            "info",
        ),
        row(
            "SDK span with the attempt span's 3 attributes, in a tight loop",
            f"{r['attributed'] * us:.1f} µs ({r['attributed'] / bare_s:.2f}x the bare span)",
            "",
        ),
        row(
            "tracing on: per-attempt cost vs that attributed span",
            f"{traced / r['attributed']:.2f}x",
            "<= 1.1x",
            traced / r["attributed"] <= 1.1,
        ),
        row(
            "Instrumentation.attempt() alone vs bare span",
            f"{r['attempt'] / bare_s:.2f}x ({r['attempt'] * us:.1f} µs)",
            "<= 1.25x",
            r["attempt"] / bare_s <= 1.25,
        ),
        row(
            "tracing + metrics (SDK MeterProvider): per-attempt cost vs bare span",
            f"{both / bare_s:.2f}x ({both * us:.1f} µs/job)",
            "info",
        ),
    ]


def scenario_one_ms(n_seq: int, n_conc: int, rounds: int) -> list[list[str]]:
    provider = sdk_provider()
    tracer = provider.get_tracer("bench")

    async def own_span(x: int) -> int:
        with tracer.start_as_current_span("job"):
            await asyncio.sleep(0.001)
        return x

    def batch(job: Callable[[int], Awaitable[int]], n: int, c: int, traced: bool) -> Any:
        kw: dict[str, Any] = {"tracer_provider": provider} if traced else {}
        return lambda: ab.run_batch(job, range(n), concurrency=c, **kw)

    c = 100
    r = Rounds()
    try:
        for _ in range(rounds):
            r.batch("seq off", batch(one_ms, n_seq, 1, False))
            r.batch("seq on", batch(one_ms, n_seq, 1, True))
            r.batch("seq own", batch(own_span, n_seq, 1, False))
            r.batch("conc off", batch(one_ms, n_conc, c, False))
            r.batch("conc on", batch(one_ms, n_conc, c, True))
            r.batch("conc own", batch(own_span, n_conc, c, False))
    finally:
        provider.shutdown()
    seq_loss = r["seq on"] / r["seq off"] - 1
    return [
        row(
            f"{n_seq:,} x 1 ms jobs, concurrency 1: wall time lost to tracing",
            f"{seq_loss:+.1%} ({r['seq off']:.2f} s -> {r['seq on']:.2f} s)",
            "<= 5%",
            seq_loss <= 0.05,
        ),
        row(
            "same, the job making one span itself instead",
            f"{r['seq own'] / r['seq off'] - 1:+.1%}",
            "info",
        ),
        row(
            f"{n_conc:,} x 1 ms jobs, concurrency {c}: wall time lost to tracing",
            f"{r['conc on'] / r['conc off'] - 1:+.1%} ({r['conc off']:.2f} s -> "
            f"{r['conc on']:.2f} s)",
            "info (CPU-bound)",
        ),
        row(
            "same, the job making one span itself instead",
            f"{r['conc own'] / r['conc off'] - 1:+.1%}",
            "info",
        ),
    ]


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args(argv)
    scale = 5 if args.quick else 1
    rows = []
    rounds = 3 if args.quick else 5
    rows += scenario_no_sdk(50_000 // scale, rounds)
    rows += scenario_sdk(10_000 // scale, rounds)
    rows += scenario_one_ms(400 // scale, 10_000 // scale, rounds - 2)
    print(table("OpenTelemetry (python " + sys.version.split()[0] + ")", rows))
    return rows


if __name__ == "__main__":
    main()
