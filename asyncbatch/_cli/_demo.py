"""``asyncbatch demo``: a real batch against a real flaky HTTP service, end to end.

The service (`FlakyService`, on 127.0.0.1) is slow at times, answers some
requests 503/429 with ``Retry-After``, is down for two seconds (so the
breaker opens, probes, and closes again), rejects a few poison items with
422 and never serves a few "stuck" ones. The batch runs with a rate limit,
a circuit breaker and SQLite checkpoints, shows live progress, then prints
the error report and the commands to look at the DLQ, resume and redrive.

The job is what a user's code looks like: one ``aiohttp.ClientSession`` per
run (its pool sized to the batch's concurrency, connections kept alive), the
job closing over it, ``raise_for_status()``, and no classification rules of
its own: asyncbatch's built-in HTTP rules (`asyncbatch.http`) know that a 422
is permanent and that a 429/503 with ``Retry-After`` says when to come back.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.markup import escape

from asyncbatch._deps import Rate
from asyncbatch._deps._breaker import Breaker
from asyncbatch._errors import ErrorKind, UnknownRun
from asyncbatch._observe._events import Event, RunStarted
from asyncbatch._policy._retry import RetryPolicy
from asyncbatch._result import BatchResult, JobStatus
from asyncbatch._run._batch import Batch, new_run_id, redrive
from asyncbatch._store import open_store
from asyncbatch._testing._faults import FaultInjector
from asyncbatch._testing._service import FlakyService

from ._input import CLIError, store_url
from ._live import LiveProgress, render_report
from ._telemetry import telemetry

__all__ = ["DemoJob", "DemoOptions", "demo_service", "run_demo"]

# The service's misbehaviour (seconds are relative to its first request).
TRANSIENT_RATE = 0.08  # 503 + Retry-After
RECOVERABLE_RATE = 0.04  # 429 + Retry-After
RETRY_AFTER = 1  # whole seconds, as HTTP's Retry-After is
LATENCY = (0.005, 0.04)
OUTAGE = 2.0  # seconds down, starting halfway through the batch (at most 2 s in)
RATE = Rate(60, per=1.0)  # what the service's owners asked us to stay under


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    """The ``asyncbatch demo`` options."""

    jobs: int = 300
    concurrency: int = 32
    db: str = "./asyncbatch.db"
    run_id: str | None = None
    redrive: str | None = None
    seed: int = 0
    quiet: bool = False
    otel: str = "none"
    prometheus_port: int | None = None
    given: frozenset[str] = frozenset()
    """The settings named on the command line (the others may come from the stored run)."""


# What a demo run stores in its run config, so `demo --run-id` resumes the same batch.
SETTINGS = ("jobs", "seed", "concurrency")
# Resuming with other values of these would be another batch (other items, other faults).
_FIXED = ("jobs", "seed")


async def resolve_settings(opts: DemoOptions) -> DemoOptions:
    """The options with the settings of the run ``opts.run_id`` when it exists.

    A resumed demo run keeps its ``--jobs``, ``--seed`` and ``--concurrency``
    (an explicit ``--concurrency`` wins; a different ``--jobs`` or ``--seed``
    is refused: it would mark jobs finished that never ran, or change which
    items fail).

    Raises:
        CLIError: the run exists but is not a demo run, or a fixed setting differs.
    """
    if opts.run_id is None or not _db_exists(opts.db):
        return opts
    async with open_store(store_url(opts.db)) as store:
        try:
            run = await store.get_run(opts.run_id)
        except UnknownRun:
            return opts
    stored = run.config.get("demo")
    if not isinstance(stored, dict) or not all(isinstance(stored.get(k), int) for k in SETTINGS):
        raise CLIError(
            f"run {opts.run_id!r} in {opts.db} was not started by `asyncbatch demo` (it stores "
            "no demo settings), so it cannot be resumed as one; pass a new --run-id"
        )
    for name in _FIXED:
        if name in opts.given and getattr(opts, name) != stored[name]:
            raise CLIError(
                f"run {opts.run_id!r} was started with --{name} {stored[name]}; resume it "
                f"without --{name} (or with the same value), or pass a new --run-id"
            )
    keep = {k: stored[k] for k in SETTINGS if k not in opts.given or k in _FIXED}
    return dataclasses.replace(opts, **keep)


def _db_exists(db: str) -> bool:
    return "://" in db or Path(db).is_file()


class DemoJob:
    """The job: fetch one item from the service (``GET /items/<id>``) over a shared session."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session

    async def __call__(self, item: dict[str, Any]) -> Any:
        async with self.session.get(f"{self.base_url}/items/{item['id']}") as response:
            response.raise_for_status()  # 4xx/5xx: asyncbatch's HTTP rules classify it
            return await response.json()


@asynccontextmanager
async def client(concurrency: int) -> AsyncIterator[aiohttp.ClientSession]:
    """One session for the whole run: a pool of ``concurrency`` kept-alive connections."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def _key(item: dict[str, Any]) -> str:
    return f"item-{item['id']:04d}"


def outage_window(jobs: int) -> tuple[float, float]:
    """When the service is down: halfway through the batch, so every size sees it."""
    expected = max(jobs - RATE.n, 0) / RATE.n * RATE.per
    start = min(2.0, expected / 2)
    return (start, start + OUTAGE)


def demo_service(jobs: int, seed: int, *, healed: bool = False) -> FlakyService:
    """The flaky service for ``jobs`` items (``healed``: every bug fixed)."""
    if healed:
        return FlakyService(FaultInjector(seed))
    rng = random.Random(seed)
    ids = [str(i) for i in range(jobs)]
    bad = rng.sample(ids, k=min(len(ids), max(1, jobs // 60) + max(1, jobs // 150)))
    poison, stuck = bad[: max(1, jobs // 60)], bad[max(1, jobs // 60) :]
    faults = FaultInjector(
        seed,
        rates={ErrorKind.TRANSIENT: TRANSIENT_RATE, ErrorKind.RECOVERABLE: RECOVERABLE_RATE},
        retry_after=RETRY_AFTER,
        latency=LATENCY,
        outages=[outage_window(jobs)],
        poison=set(poison),
    )
    return FlakyService(faults, stuck=stuck)


def _batch_options(opts: DemoOptions, otel: dict[str, Any]) -> dict[str, Any]:
    """How the demo's batch protects the service and itself (run and redrive alike)."""
    return {
        "concurrency": opts.concurrency,
        "timeout": 2.0,
        "rates": {"api": RATE},
        "breakers": {"api": Breaker(fail_max=5, reset_timeout=1.0)},
        "uses": ["api"],
        "retry": RetryPolicy(seed=opts.seed),
        **otel,
    }


async def run_demo(opts: DemoOptions, console: Console) -> int:
    """Run the demo; returns the exit status.

    0 when the demo ran, dead letters or not: they are part of what it shows
    (``asyncbatch run`` exits 3 for them). An aborted batch raises.
    """
    if opts.redrive is not None:
        return await _redrive(opts, console)
    opts = await resolve_settings(opts)
    run_id = opts.run_id or new_run_id().replace("run-", "demo-", 1)  # the CLI names it
    items = [{"id": i} for i in range(opts.jobs)]
    async with demo_service(opts.jobs, opts.seed) as service, client(opts.concurrency) as session:
        say = console.print
        say(
            f"[bold]asyncbatch demo[/]: {opts.jobs} jobs against a flaky HTTP service at "
            f"{service.url} (concurrency {opts.concurrency}, run [bold]{escape(run_id)}[/])"
        )
        down_from, down_to = outage_window(opts.jobs)
        say(
            f"  the service: {TRANSIENT_RATE:.0%} 503s and {RECOVERABLE_RATE:.0%} 429s with "
            f"Retry-After, {LATENCY[0] * 1000:.0f}-{LATENCY[1] * 1000:.0f} ms latency, down from "
            f"{down_from:.1f} s to {down_to:.1f} s, {len(service.stuck)} item(s) it never serves, "
            f"poison items it rejects with 422"
        )
        say(
            f"  the batch: rate limit {RATE.n:g}/s, breaker 'api' (opens after 5 failures, "
            f"probes after 1 s), retries by kind, checkpoints in {escape(opts.db)}"
        )

        def note(event: Event) -> None:
            if isinstance(event, RunStarted) and event.resumed:
                say("  [yellow]resuming:[/] jobs finished in the earlier run are skipped")

        progress = LiveProgress(
            console,
            total=opts.jobs,
            label="fetching",
            enabled=not opts.quiet,
            events=not opts.quiet,
        )
        with telemetry(opts.otel, opts.prometheus_port, service="asyncbatch-demo") as otel:
            batch: Batch[dict[str, Any], Any] = Batch(
                progress.wrap(DemoJob(service.url, session)),
                key=_key,
                run_id=run_id,
                store=store_url(opts.db),
                on_event=[note, progress.on_event],
                **_batch_options(opts, otel),
            )
            demo_settings = {k: getattr(opts, k) for k in SETTINGS}
            batch.options = dataclasses.replace(batch.options, run_config={"demo": demo_settings})
            with progress:
                async with batch.stream(items) as outcomes:
                    async for outcome in outcomes:
                        progress.on_outcome(outcome)
            result = outcomes.result
            assert result is not None
    await _epilogue(opts, console, result, service, progress)
    return 0


async def _epilogue(
    opts: DemoOptions,
    console: Console,
    result: BatchResult[Any],
    service: FlakyService,
    progress: LiveProgress,
) -> None:
    say = console.print
    counts = result.counts
    async with open_store(store_url(opts.db)) as store:
        dead = await store.dlq.list(run_id=result.run_id)
    say()
    render_report(console, result.report)
    say()
    skipped = counts[JobStatus.SKIPPED]
    say(
        f"run [bold]{escape(result.run_id)}[/] finished in {result.duration:.1f} s: "
        f"[green]{counts[JobStatus.SUCCEEDED]} succeeded[/]"
        + (f", {skipped} skipped (finished before)" if skipped else "")
        + f", [red]{counts[JobStatus.DEAD_LETTERED]} dead-lettered[/], "
        f"{progress.retries} retries, breaker opened {progress.breaker_trips}x; "
        f"the service saw {service.requests} requests over {service.connections} connection(s)"
    )
    say(f"DLQ: {len(dead)} dead letter(s) for this run in {escape(opts.db)}")
    for entry in dead[:5]:
        say(
            f"  #{entry.id} {escape(entry.key)}: {entry.kind.value}, "
            f"{escape(entry.error_type.rsplit('.', 1)[-1])} after {len(entry.attempts)} attempt(s)"
        )
    if len(dead) > 5:
        say(f"  ... and {len(dead) - 5} more")
    db, run = escape(opts.db), escape(result.run_id)
    first = dead[0].id if dead else 1
    say()
    say("[bold]Next[/] (every outcome above was checkpointed before it was counted):")
    commands = [
        (f"asyncbatch report {run} --db {db}", "the report again"),
        (f"asyncbatch dlq list --run-id {run} --db {db}", "the dead letters"),
        (f"asyncbatch dlq show {first} --db {db}", "one of them, attempt by attempt"),
        (f"asyncbatch demo --run-id {run} --db {db}", "resume: finished jobs are skipped"),
        (f"asyncbatch demo --redrive {run} --db {db}", "redrive the DLQ once the service is fixed"),
        (f"asyncbatch dlq redrive --run-id ID MODULE:FUNC --db {db}", "the same for your own job"),
    ]
    width = max(len(c) for c, _ in commands)
    for command, what in commands:
        say(f"  {command.ljust(width)}  [dim]# {what}[/]")


async def _redrive(opts: DemoOptions, console: Console) -> int:
    assert opts.redrive is not None
    run_id = opts.redrive
    async with (
        demo_service(opts.jobs, opts.seed, healed=True) as service,
        client(opts.concurrency) as session,
    ):
        console.print(
            "[bold]asyncbatch demo[/]: redriving the dead letters of run "
            f"[bold]{escape(run_id)}[/] "
            f"against the service at {service.url}, its bugs now fixed"
        )
        progress = LiveProgress(console, total=None, label="redriving", enabled=False, events=True)
        with telemetry(opts.otel, opts.prometheus_port, service="asyncbatch-demo") as otel:
            started = time.perf_counter()
            result = await redrive(
                DemoJob(service.url, session),
                store=store_url(opts.db),
                run_id=run_id,
                on_event=progress.on_event,
                **_batch_options(opts, otel),
            )
    counts = result.counts
    console.print(
        f"redrove {len(result.outcomes)} dead letter(s) in {time.perf_counter() - started:.1f} s: "
        f"[green]{counts[JobStatus.SUCCEEDED]} resolved[/], "
        f"[red]{counts[JobStatus.DEAD_LETTERED]} dead again[/]"
    )
    console.print(
        f"  asyncbatch dlq list --run-id {escape(run_id)} --status resolved --db {escape(opts.db)}"
    )
    return 0
