"""HTTP benchmarks: real GETs against a local aiohttp server in its own process.

Run: ``python -m benchmarks.bench_http [--quick] [--n 20000] [--concurrency 100]``.
The server runs in a subprocess (the other core), so the client's CPU time
is the benchmark process's own.

Scenarios:
1. ``--n`` GETs (20,000 by default; ``--quick``: 2,000) where 20% of the
   items first answer 503 with ``Retry-After: 1``. The server holds to it: a
   request for such an item before its second is up gets another 503 (a
   wasted call; each failing item's first 503 is not counted as wasted).
   Same aiohttp client, same concurrency, one run:
   asyncbatch with its built-in HTTP rules (the retry is parked, the slot
   freed) vs aiometer + tenacity (random exponential backoff, which knows
   nothing of Retry-After) vs an ``asyncio.Semaphore`` + stamina (whose
   backoff hook returns the server's delay). Target: asyncbatch finishes
   first and makes the fewest wasted calls.
2. Client CPU per request, httpx vs aiohttp, all 200s, a plain semaphore
   loop at concurrency 100 and 25, plus asyncbatch over aiohttp at 100 (the
   batching layer's share).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import aiometer
import httpx
import stamina
import tenacity
from aiohttp import web

import asyncbatch as ab

from ._server import serve_app, server_process
from ._util import row, table

FAIL_EVERY = 5  # 20% of the items
RETRY_AFTER = 1


# ------------------------------------------------------------------ server


def serve() -> None:
    """The server process: prints its port, serves until stdin closes."""
    blocked: dict[str, float] = {}  # item -> when it may be served
    stats = {"calls": 0, "unavailable": 0}

    async def item(request: web.Request) -> web.Response:
        stats["calls"] += 1
        key = request.match_info["id"]
        now = time.monotonic()
        if int(key) % FAIL_EVERY == 0:
            until = blocked.get(key)
            if until is None:
                blocked[key] = now + RETRY_AFTER
                until = blocked[key]
            if now < until:
                stats["unavailable"] += 1
                wait = max(1, math.ceil(until - now))
                return web.json_response(
                    {"error": "busy"}, status=503, headers={"Retry-After": str(wait)}
                )
        return web.json_response({"id": key})

    async def ok(request: web.Request) -> web.Response:
        stats["calls"] += 1
        return web.json_response({"ok": True})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def reset(request: web.Request) -> web.Response:
        blocked.clear()
        stats.update(calls=0, unavailable=0)
        return web.json_response(stats)

    app = web.Application()
    app.router.add_get("/items/{id}", item)
    app.router.add_get("/ok", ok)
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/reset", reset)
    serve_app(app, backlog=1024)


def http_server() -> contextlib.AbstractContextManager[str]:
    """The server in its own process; yields its base URL."""
    return server_process("benchmarks.bench_http", "--serve")


async def server_stats(session: aiohttp.ClientSession, url: str, *, reset: bool) -> dict[str, int]:
    method = "POST" if reset else "GET"
    async with session.request(method, f"{url}/{'reset' if reset else 'stats'}") as response:
        return dict(await response.json())


# ------------------------------------------------------- the three runners


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, aiohttp.ClientResponseError) and exc.status in (429, 503)


async def run_asyncbatch(get: Callable[[str], Awaitable[Any]], urls: list[str], c: int) -> int:
    result = await ab.run_batch(get, urls, concurrency=c)
    return result.counts[ab.JobStatus.SUCCEEDED]


async def run_aiometer_tenacity(
    get: Callable[[str], Awaitable[Any]], urls: list[str], c: int
) -> int:
    # tenacity has no Retry-After support: its documented jittered exponential backoff.
    fetch = tenacity.retry(
        retry=tenacity.retry_if_exception(is_retryable),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=5),
        stop=tenacity.stop_after_attempt(10),
    )(get)
    results = await aiometer.run_on_each(fetch, urls, max_at_once=c)  # type: ignore[func-returns-value]
    del results
    return len(urls)


async def run_semaphore_stamina(
    get: Callable[[str], Awaitable[Any]], urls: list[str], c: int
) -> int:
    def hook(exc: Exception) -> bool | float:
        # stamina's backoff hook: the server's delay when it named one.
        if not is_retryable(exc):
            return False
        delay = ab.http.retry_after(exc)
        return True if delay is None else delay

    fetch = stamina.retry(on=hook, attempts=10, timeout=None)(get)
    sem = asyncio.Semaphore(c)

    async def one(url: str) -> Any:
        async with sem:  # held while stamina sleeps
            return await fetch(url)

    async with asyncio.TaskGroup() as tg:
        for url in urls:
            tg.create_task(one(url))
    return len(urls)


RUNNERS = {
    "asyncbatch + asyncbatch.http": run_asyncbatch,
    "aiometer + tenacity": run_aiometer_tenacity,
    "Semaphore + stamina (Retry-After hook)": run_semaphore_stamina,
}


@contextlib.asynccontextmanager
async def aiohttp_get(c: int) -> AsyncIterator[Callable[[str], Awaitable[Any]]]:
    connector = aiohttp.TCPConnector(limit=c, limit_per_host=c)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(url: str) -> Any:
            async with session.get(url) as response:
                response.raise_for_status()
                return await response.json()

        yield get


@contextlib.asynccontextmanager
async def httpx_get(c: int) -> AsyncIterator[Callable[[str], Awaitable[Any]]]:
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(limits=limits) as client:

        async def get(url: str) -> Any:
            response = await client.get(url)
            response.raise_for_status()
            return response.json()

        yield get


def scenario_retry_after(base: str, n: int, c: int) -> list[list[str]]:
    urls = [f"{base}/items/{i}" for i in range(n)]
    failing = len(range(0, n, FAIL_EVERY))
    measured: dict[str, tuple[float, int]] = {}

    async def one(name: str) -> None:
        async with aiohttp.ClientSession() as admin:
            await server_stats(admin, base, reset=True)
            async with aiohttp_get(c) as get:
                start = time.perf_counter()
                await RUNNERS[name](get, urls, c)
                took = time.perf_counter() - start
            stats = await server_stats(admin, base, reset=False)
        measured[name] = (took, stats["calls"])

    # stamina logs every retry by default (thousands of lines here): measure it silent.
    stamina.instrumentation.set_on_retry_hooks([])
    try:
        for name in RUNNERS:
            asyncio.run(one(name))
    finally:
        stamina.instrumentation.set_on_retry_hooks(None)
    fastest = min(t for t, _ in measured.values())
    fewest = min(calls for _, calls in measured.values())
    rows = []
    for name, (took, calls) in measured.items():
        wasted = calls - n - failing  # beyond the one 503 each failing item must get
        rows.append(
            row(
                f"{n:,} GETs, {failing:,} answer 503 + Retry-After: 1, c={c}: {name}",
                f"{took:.1f} s, {calls:,} calls, {wasted:,} wasted",
                "fastest, fewest calls" if name.startswith("asyncbatch") else "",
                (took == fastest and calls == fewest) if name.startswith("asyncbatch") else None,
            )
        )
    return rows


def scenario_client_cpu(base: str, n: int) -> list[list[str]]:
    """Client CPU per request (the server's is not counted: it is another process)."""
    url = f"{base}/ok"
    rows = []

    async def loop(make: Any, c: int, batching: bool, n: int) -> tuple[float, float]:
        async with make(c) as get:
            await asyncio.gather(*(get(url) for _ in range(min(c, 50))))  # warm the pool
            cpu, wall = time.process_time(), time.perf_counter()
            if batching:
                await ab.run_batch(get, [url] * n, concurrency=c)
            else:
                sem = asyncio.Semaphore(c)

                async def one() -> None:
                    async with sem:
                        await get(url)

                async with asyncio.TaskGroup() as tg:
                    for _ in range(n):
                        tg.create_task(one())
            return time.process_time() - cpu, time.perf_counter() - wall

    # httpx manages ~100-150 requests/s here: it gets a fifth of the requests aiohttp gets.
    cases = [
        ("httpx", httpx_get, 100, False, n // 5),
        ("aiohttp", aiohttp_get, 100, False, n),
        ("httpx", httpx_get, 25, False, n // 5),
        ("aiohttp", aiohttp_get, 25, False, n),
        ("asyncbatch over aiohttp", aiohttp_get, 100, True, n),
    ]
    # The least CPU of three rounds, the cases interleaved: the machine is shared and noisy.
    runs: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(cases))}
    for _ in range(3):
        for i, (_, make, c, batching, size) in enumerate(cases):
            runs[i].append(asyncio.run(loop(make, c, batching, size)))
    for i, (name, _, c, _, size) in enumerate(cases):
        cpu, wall = min(runs[i])
        rows.append(
            row(
                f"{size:,} GETs, {name}, concurrency {c}",
                f"{cpu / size * 1e6:,.0f} µs client CPU/request, {size / wall:,.0f} req/s",
                "info",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--n", type=int, default=None, help="GETs in scenario 1 (20,000)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--cpu-only", action="store_true", help="only scenario 2")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return []
    n = args.n or (2_000 if args.quick else 20_000)
    rows = []
    with http_server() as base:
        if not args.cpu_only:
            rows += scenario_retry_after(base, n, args.concurrency)
        rows += scenario_client_cpu(base, 1_000 if args.quick else 5_000)
    print(table("HTTP (python " + sys.version.split()[0] + ", server in its own process)", rows))
    return rows


if __name__ == "__main__":
    main()
