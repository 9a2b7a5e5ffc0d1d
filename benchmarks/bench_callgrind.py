"""Instructions per no-op job, counted by ``valgrind --tool=callgrind``.

Run: ``python -m benchmarks.bench_callgrind [--quick] [--only NAME ...]``
(needs valgrind; skipped with a note when it is not installed).

Wall-clock figures move with the machine's load; instruction counts do not
(the same total twice, whatever else the machine runs). Each variant runs in
a fresh interpreter under callgrind twice, with N jobs and with none; the
difference over N is the cost of one job, start-up and imports excluded:
``(Ir(N) - Ir(0)) / N``. Every later change to the hot path shows its cost
here as a number.

Variants (concurrency 100 unless named):
- the baselines of `benchmarks.baselines`: ``floor`` (100 loops awaiting
  each job in turn, no results), ``queue-pool`` (a bounded ``asyncio.Queue``
  and 100 worker tasks),
  ``bounded-taskgroup`` (acquire a semaphore, then create the task) and
  ``gather-all`` (every task up front, each waiting on the semaphore);
- ``asyncbatch``, ``asyncbatch-stream``, ``asyncbatch-sqlite`` (durability
  normal), and ``asyncbatch`` at concurrency 10 and 10,000 (cost must stay
  flat);
- ``asyncbatch-sqlite-loop``: the same SQLite run, counting the run's own
  process only, not the writer process that commits its large groups: the
  loop's side of a checkpoint (what competes with the jobs for the GIL);
- ``queue-pool-sleep`` and ``asyncbatch-sleep``: jobs that sleep 1 ms, at
  concurrency 1,000 (what a job that suspends costs, timers included);
- tracing: ``sdk-span`` (the SDK's own bare span, batch span processor),
  ``sdk-span-attrs`` (with the 3 attributes every attempt span carries) and
  ``asyncbatch-traced``; tracing's share of a job is its difference from
  ``asyncbatch``. The processor exports when each tracing variant flushes
  it at its end (see `_provider`): every span is exported, on both sides,
  in every run, and the count does not follow the machine's load.

The SQLite variant alone moves a little between runs (within ~2%): its
groups fall where the timing puts them. Its count includes the writer
process that commits its large groups (and that process's start-up).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any

from ._util import row, table
from .baselines import bounded_taskgroup, floor, gather_all, queue_pool

N_FULL = 20_000
N_QUICK = 5_000


async def noop(x: int) -> int:
    return x


Variant = Callable[[int, int], Coroutine[Any, Any, None]]


# ----------------------------------------------------------------- variants


def baseline(loop: Callable[..., Coroutine[Any, Any, Any]]) -> Variant:
    async def run(n: int, c: int) -> None:
        await loop(noop, range(n), c)

    return run


async def asyncbatch_run(n: int, c: int) -> None:
    import asyncbatch as ab

    result = await ab.run_batch(noop, range(n), concurrency=c)
    assert len(result.outcomes) == n


async def asyncbatch_stream(n: int, c: int) -> None:
    import asyncbatch as ab

    count = 0
    async with ab.Batch(noop, concurrency=c).stream(range(n)) as outcomes:
        async for _ in outcomes:
            count += 1
    assert count == n


async def asyncbatch_sqlite(n: int, c: int) -> None:
    import asyncbatch as ab

    path = os.path.join(tempfile.mkdtemp(prefix="ab-cg-"), "cg.db")
    async with ab.open_store(path) as store:
        await _writer_started(store)
        result = await ab.run_batch(noop, range(n), concurrency=c, store=store)
    assert result.counts[ab.JobStatus.SUCCEEDED] == n


async def _writer_started(store: Any) -> None:
    """Start the store's writer process and wait until it is ready (in Ir(0) as in Ir(N)).

    A store commits through its thread until its writer has started (~20 ms;
    under valgrind, seconds): without this the run's groups would all go
    through the thread, which no run outside valgrind does for long.
    """
    from asyncbatch import JobStatus
    from asyncbatch._store import JobRecord, RunInfo, _sqlite

    def group(g: int) -> list[JobRecord]:
        return [
            JobRecord(run_id="warm-up", key=f"{g}-{i}", status=JobStatus.SUCCEEDED)
            for i in range(_sqlite.WRITER_ROWS)
        ]

    await store.begin_run(RunInfo(run_id="warm-up", job="bench"))  # starts the writer
    await store.commit(group(0))  # reads the run: the connection's thread
    while not store._writer.ready():
        await asyncio.sleep(0.01)
    # One group through the writer: one never used is killed at close, before
    # callgrind writes its counts.
    await store.commit(group(1))


async def sleepy(x: int) -> int:
    await asyncio.sleep(0.001)
    return x


async def queue_pool_sleep(n: int, c: int) -> None:
    await queue_pool(sleepy, range(n), c)


async def asyncbatch_sleep(n: int, c: int) -> None:
    import asyncbatch as ab

    result = await ab.run_batch(sleepy, range(n), concurrency=c)
    assert len(result.outcomes) == n


def _provider() -> Any:
    """The SDK with a batch span processor that exports when flushed.

    Its thread otherwise exports every 512 spans, and while it waits for the
    GIL it times out and asks for it every 5 ms of wall time: under callgrind
    (50x slower) how often that happens follows the machine's load, and it
    moved the bare span's count by 13% between runs (147k to 166k)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from .bench_otel import NullExporter

    provider = TracerProvider(shutdown_on_exit=False)
    big = 1 << 18  # more spans than any variant makes: none is dropped
    provider.add_span_processor(
        BatchSpanProcessor(
            NullExporter(), max_queue_size=big, max_export_batch_size=big,
            schedule_delay_millis=3_600_000,
        )
    )  # fmt: skip
    return provider


async def sdk_span(n: int, c: int) -> None:
    provider = _provider()
    tracer = provider.get_tracer("bench")
    for _ in range(n):
        with tracer.start_as_current_span("x"):
            pass
    provider.force_flush()


async def sdk_span_attrs(n: int, c: int) -> None:
    provider = _provider()
    tracer = provider.get_tracer("bench")
    for i in range(n):
        attributes = {"asyncbatch.run.id": "r", "asyncbatch.job.key": "k",
                      "asyncbatch.attempt.number": i}  # fmt: skip
        with tracer.start_as_current_span("x", attributes=attributes):
            pass
    provider.force_flush()


async def asyncbatch_traced(n: int, c: int) -> None:
    import asyncbatch as ab

    provider = _provider()
    result = await ab.run_batch(noop, range(n), concurrency=c, tracer_provider=provider)
    assert len(result.outcomes) == n
    provider.force_flush()


VARIANTS: dict[str, tuple[Variant, int, str]] = {
    "floor": (baseline(floor), 100, "100 loops awaiting each job in turn (the floor)"),
    "queue-pool": (baseline(queue_pool), 100, "bounded asyncio.Queue + 100 workers"),
    "bounded-taskgroup": (baseline(bounded_taskgroup), 100, "bounded TaskGroup"),
    "gather-all": (baseline(gather_all), 100, "gather every task, semaphore inside"),
    "asyncbatch": (asyncbatch_run, 100, "asyncbatch run_batch"),
    "asyncbatch-c10": (asyncbatch_run, 10, "asyncbatch run_batch, concurrency 10"),
    "asyncbatch-c10000": (asyncbatch_run, 10_000, "asyncbatch run_batch, concurrency 10,000"),
    "asyncbatch-stream": (asyncbatch_stream, 100, "asyncbatch Batch.stream"),
    "asyncbatch-sqlite": (asyncbatch_sqlite, 100, "asyncbatch, SQLite checkpoints (normal)"),
    "asyncbatch-sqlite-loop": (
        asyncbatch_sqlite, 100, "same, the run's process alone (the writer process left out)"
    ),
    "queue-pool-sleep": (queue_pool_sleep, 1000, "1 ms jobs at concurrency 1,000: the Queue pool"),
    "asyncbatch-sleep": (asyncbatch_sleep, 1000, "same, asyncbatch run_batch"),
    "sdk-span": (sdk_span, 1, "OpenTelemetry SDK: a bare span (batch processor)"),
    "sdk-span-attrs": (sdk_span_attrs, 1, "same, with the attempt span's 3 attributes"),
    "asyncbatch-traced": (asyncbatch_traced, 100, "asyncbatch with the SDK tracer"),
}


OWN_PROCESS_ONLY = {"asyncbatch-sqlite-loop"}
"""Variants counted without the processes they start."""


def child(name: str, n: int) -> None:
    """Run one variant (in the interpreter valgrind started)."""
    import asyncbatch  # noqa: F401  imports land in Ir(0) as well as Ir(N)

    fn, c, _ = VARIANTS[name]
    # What the imports left is frozen out of the collector's sight, for every
    # variant alike: otherwise a full collection over it falls in the N-job
    # run or not, by chance, and moves the difference by thousands a job.
    gc.collect()
    gc.freeze()
    asyncio.run(fn(n, c))


# ----------------------------------------------------------------- counting

_TOTAL = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.M)


def instructions(name: str, n: int) -> int:
    """Total instructions of one fresh interpreter running ``name`` with ``n`` jobs, and
    of every process it starts (the SQLite store's writer process)."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    children = "no" if name in OWN_PROCESS_ONLY else "yes"
    with tempfile.TemporaryDirectory(prefix="cg-") as out:
        cmd = [
            "valgrind", "--tool=callgrind", f"--trace-children={children}",
            f"--callgrind-out-file={out}/%p.out",
            sys.executable, "-m", "benchmarks.bench_callgrind", "--child", name, str(n),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        total = 0
        for file in os.listdir(out):
            with open(os.path.join(out, file), "rb") as f:
                match = _TOTAL.search(f.read())
            assert match, f"no instruction total in callgrind's output for {name}"
            total += int(match.group(1))
    return total


def per_job(name: str, n: int) -> float:
    return (instructions(name, n) - instructions(name, 0)) / n


TARGETS: dict[str, tuple[str, Callable[[dict[str, float]], bool]]] = {
    "asyncbatch": (
        "<= 18k and <= the Queue pool",
        lambda r: r["asyncbatch"] <= 18_000 and r["asyncbatch"] <= r.get("queue-pool", 1e12),
    ),
    "asyncbatch-c10000": (
        "<= 1.2x concurrency 100",
        lambda r: r["asyncbatch-c10000"] <= 1.2 * r.get("asyncbatch", 1e12),
    ),
    "asyncbatch-c10": (
        "<= 1.2x concurrency 100",
        lambda r: r["asyncbatch-c10"] <= 1.2 * r.get("asyncbatch", 1e12),
    ),
    "asyncbatch-sqlite": ("<= 52k", lambda r: r["asyncbatch-sqlite"] <= 52_000),
    "asyncbatch-traced": (
        "tracing's share <= 1.1x the bare span",
        lambda r: r["asyncbatch-traced"] - r["asyncbatch"] <= 1.1 * r.get("sdk-span", 0),
    ),
}


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{N_QUICK:,} jobs, not {N_FULL:,}")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="these variants")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return []
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: instruction counts skipped (apt-get install valgrind)")
        return []
    n = N_QUICK if args.quick else N_FULL
    names = args.only or list(VARIANTS)
    results: dict[str, float] = {}
    rows = []
    for name in names:
        results[name] = per_job(name, n)
    for name in names:
        label = VARIANTS[name][2]
        target = TARGETS.get(name)
        ok = None
        if target is not None and all(k in results for k in ("asyncbatch", name)):
            ok = target[1](results)
        value = f"{results[name] / 1000:.1f}k Ir/job"
        if name == "asyncbatch-traced" and "asyncbatch" in results:
            share = results[name] - results["asyncbatch"]
            value += f" (tracing {share / 1000:.1f}k"
            if "sdk-span" in results:
                value += f" = {share / results['sdk-span']:.2f}x the bare span"
            value += ")"
        rows.append(row(label, value, target[0] if target else "", ok))
    print(table(f"Instructions per no-op job (callgrind, {n:,} jobs)", rows))
    return rows


if __name__ == "__main__":
    main()
