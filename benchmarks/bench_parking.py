"""Parked jobs: bounded memory, no churn behind a hung probe, outages without a breaker.

Run: ``python -m benchmarks.bench_parking [--quick]``. Each scenario runs in a
fresh subprocess, so peak RSS and CPU time are its own.

Scenarios:
1. 100,000 streamed items that all fail (60 s backoff, or an open breaker) at
   concurrency 10, for 5 s: items pulled from the input and peak RSS. The
   parked cap (``max(1000, 10 * concurrency)``) holds new items back, so
   memory is bounded by the concurrency plus the cap (target < 60 MB; before
   the cap every item was pulled: 167 MB with backoff, 128 MB behind the
   breaker).
2. 10,000 jobs parked behind a half-open probe that hangs: process CPU per
   second while they wait (target < 0.1 s/s; polling every 0.1 s cost
   0.68 s/s and woke an unrelated 3 s sleep 258 ms late), and how late an
   unrelated ``asyncio.sleep`` wakes.
3. A dependency down for everyone for 3 s (every call fails with a
   connection error), 1,500 jobs of 10 ms at concurrency 25, default retries:
   jobs lost (dead-lettered) without a breaker, with a breaker, and for a
   semaphore-held retry loop (tenacity-style, sleeping inside the slot).
   Before the hold on new items during an outage: 1,230 lost without a breaker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from typing import Any

import anyio

import asyncbatch as ab

from ._util import row, table
from .bench_core import peak_rss_kb


def _child(name: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_parking", "--child", name, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------- 1. bounded memory


async def _all_fail(n: int, seconds: float, mode: str) -> dict[str, Any]:
    pulled = 0

    def items():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(n):
            pulled += 1
            yield {"id": i, "payload": "x" * 100}

    async def job(item: dict[str, Any]) -> None:
        if mode == "breaker":
            async with ab.guard("api"):
                raise ConnectionError("refused")
        raise ConnectionError("refused")

    options: dict[str, Any] = {"concurrency": 10}
    if mode == "breaker":
        options["breakers"] = {"api": ab.Breaker(fail_max=5, reset_timeout=60)}
    else:
        options["retry"] = ab.Retry(attempts=5, backoff=ab.Backoff.constant(60))
    outcomes_seen = 0
    with anyio.move_on_after(seconds):
        async with ab.Batch(job, **options).stream(items()) as outcomes:
            async for _ in outcomes:
                outcomes_seen += 1
    return {"pulled": pulled, "outcomes": outcomes_seen, "peak_rss_kb": peak_rss_kb()}


def scenario_memory(n: int, seconds: float) -> list[list[str]]:
    rows = []
    idle = _child("idle")["peak_rss_kb"] / 1024
    rows.append(row("python + asyncbatch imported, idle: peak RSS", f"{idle:.0f} MB", "baseline"))
    for mode, label in (("backoff", "60 s backoff"), ("breaker", "open breaker")):
        data = _child("memory", str(n), str(seconds), mode)
        mb = data["peak_rss_kb"] / 1024
        rows.append(
            row(
                f"{n:,} streamed items that all fail ({label}), concurrency 10, "
                f"{seconds:g} s: peak RSS",
                f"{mb:.0f} MB ({data['pulled']:,} items pulled)",
                "< 60 MB, <= cap + concurrency pulled",
                mb < 60 and data["pulled"] <= 1000 + 10 + 1,
            )
        )
    return rows


# ------------------------------------------------ 2. churn behind a hung probe


async def _hung_probe(n: int, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    down = True
    entered = 0

    async def job(x: int) -> int:
        nonlocal down, entered
        entered += 1
        async with ab.guard("api"):
            if down and x < 2:
                raise ConnectionError("down")
            if down:
                await release.wait()  # the probe hangs
                down = False
            return x

    breakers = {"api": ab.Breaker(fail_max=2, reset_timeout=0.5)}
    measured: dict[str, float] = {}

    async def observer() -> None:
        # Let every job be rejected and parked, the open period end and the probe start.
        give_up = loop.time() + 60
        while entered < n and loop.time() < give_up:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        cpu0, t0 = time.process_time(), loop.time()
        await asyncio.sleep(seconds)  # an unrelated sleep
        measured["late"] = loop.time() - t0 - seconds
        measured["cpu_per_s"] = (time.process_time() - cpu0) / (loop.time() - t0)
        measured["entered_during"] = entered
        release.set()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(observer())
        # Concurrency 1,000: a parked cap of 10,000, so every job can park.
        result = await ab.run_batch(
            job, range(n), concurrency=1000, breakers=breakers, retry=ab.Retry(attempts=3)
        )
    assert result.ok, result.counts
    return {**measured, "entered": entered}


def scenario_churn(n: int, seconds: float) -> list[list[str]]:
    data = _child("churn", str(n), str(seconds))
    return [
        row(
            f"{n:,} jobs parked behind a hung half-open probe: CPU while they wait",
            f"{data['cpu_per_s']:.4f} s/s (a {seconds:g} s sleep woke "
            f"{data['late'] * 1000:.0f} ms late; job entered {data['entered'] / n:.1f}x per job)",
            "< 0.1 s/s",
            data["cpu_per_s"] < 0.1,
        )
    ]


# ------------------------------------------------- 3. an outage for everyone


async def _outage(mode: str, n: int, c: int, outage: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if loop.time() - start < outage:
            raise ConnectionRefusedError("connection refused")

    if mode == "semaphore":
        # The loop people write: retries sleep inside the slot (tenacity-style).
        sem = asyncio.Semaphore(c)
        policy = ab.RetryPolicy()
        lost = 0

        async def one(i: int) -> None:
            nonlocal lost
            async with sem:
                retry = policy[ab.ErrorKind.TRANSIENT]
                prev = 0.0
                rng = random.Random(i)
                for attempt in range(1, retry.attempts + 1):
                    try:
                        await call()
                        return
                    except ConnectionError:
                        if attempt == retry.attempts:
                            lost += 1
                            return
                        prev = retry.backoff.delay(attempt, prev, rng)
                        await asyncio.sleep(prev)

        async with asyncio.TaskGroup() as tg:
            for i in range(n):
                tg.create_task(one(i))
        return {"lost": lost, "calls": calls, "seconds": loop.time() - start}

    async def job(i: int) -> None:
        if mode == "breaker":
            async with ab.guard("api"):
                await call()
        else:
            await call()

    options: dict[str, Any] = {"concurrency": c}
    if mode == "breaker":
        options["breakers"] = {"api": ab.Breaker(fail_max=5, reset_timeout=1)}
    result = await ab.run_batch(job, range(n), **options)
    return {
        "lost": result.counts[ab.JobStatus.DEAD_LETTERED],
        "calls": calls,
        "seconds": loop.time() - start,
    }


def scenario_outage(n: int, c: int, outage: float) -> list[list[str]]:
    rows = []
    for mode, label in (
        ("semaphore", "retries sleeping inside a semaphore"),
        ("plain", "asyncbatch, no breaker"),
        ("breaker", "asyncbatch, Breaker(fail_max=5, reset_timeout=1)"),
    ):
        data = _child("outage", mode, str(n), str(c), str(outage))
        rows.append(
            row(
                f"{n:,} x 10 ms at concurrency {c}, down {outage:g} s for everyone: {label}",
                f"{data['lost']:,} lost, {data['calls']:,} calls, {data['seconds']:.1f} s",
                "baseline" if mode == "semaphore" else "",
            )
        )
    return rows


def child(name: str, args: list[str]) -> None:
    if name == "idle":
        data: dict[str, Any] = {"peak_rss_kb": peak_rss_kb()}
    elif name == "memory":
        data = asyncio.run(_all_fail(int(args[0]), float(args[1]), args[2]))
    elif name == "churn":
        data = asyncio.run(_hung_probe(int(args[0]), float(args[1])))
    else:
        data = asyncio.run(_outage(args[0], int(args[1]), int(args[2]), float(args[3])))
    print(json.dumps(data))


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke run")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1:])
        return []
    quick = args.quick
    rows = []
    rows += scenario_memory(100_000, 2 if quick else 5)
    rows += scenario_churn(10_000, 2 if quick else 6)
    rows += scenario_outage(1_500, 25, 3)
    print(table("Parked jobs (python " + sys.version.split()[0] + ")", rows))
    return rows


if __name__ == "__main__":
    main()
