"""Traffic benchmarks: adaptive concurrency against a server whose capacity is hidden,
and hedging against a server with heavy-tailed latency.

Run: ``python -m benchmarks.bench_traffic [--quick] [--n 20000] [--capacity 50]``.

**Adaptive concurrency.**
The server (its own process, so the client's CPU is the benchmark's own)
answers ``429 Too Many Requests`` at once to a request that arrives while
``--capacity`` (K) requests are already being served, and serves the others
more slowly as load grows: ``base x (1 + 0.5 x load / K)`` seconds (20 ms
base). The client is asyncbatch over aiohttp with the built-in HTTP rules
(429 is retried with backoff, the slot freed while it waits).

In one run, on the same ``--n`` calls (20,000; ``--quick``: 4,000): a sweep
of fixed ``concurrency=`` from K/4 to 4K, then ``concurrency=ab.Adaptive(min=1,
max=1000, initial=10)``, which knows nothing of K. Targets: Adaptive reaches
>= 90% of the best fixed concurrency's throughput with <= 5% of the calls
rejected; a fixed 4K gets >= 30% of its calls rejected.

**Hedging.** The same server's ``/tail`` route answers in 20 ms, except for
3% of requests (seeded) that take 400 ms: p99 = 20x p50. 5,000 calls
(``--quick``: 2,000) at concurrency 20, without and with
``hedge=ab.Hedge(after="p95")``. Targets: the batch's p99 job latency is cut
>= 3x, with <= 10% extra calls (counted by the server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from typing import Any

import aiohttp
from aiohttp import web

import asyncbatch as ab

from ._server import serve_app, server_process
from ._util import row, table

BASE = 0.02  # seconds per request at no load
TAIL_FAST, TAIL_SLOW, TAIL_SHARE = 0.02, 0.4, 0.03  # the heavy-tailed route


# ------------------------------------------------------------------ server


def serve(capacity: int) -> None:
    """The server process: prints its port, serves until stdin closes."""
    stats = {"calls": 0, "rejected": 0}
    load = [0]
    rng = random.Random(11)

    async def tail(request: web.Request) -> web.Response:
        stats["calls"] += 1
        slow = rng.random() < TAIL_SHARE
        await asyncio.sleep(TAIL_SLOW if slow else TAIL_FAST)
        return web.json_response({"id": request.match_info["id"]})

    async def item(request: web.Request) -> web.Response:
        stats["calls"] += 1
        if load[0] >= capacity:
            stats["rejected"] += 1
            return web.json_response({"error": "busy"}, status=429)
        load[0] += 1
        try:
            await asyncio.sleep(BASE * (1 + 0.5 * load[0] / capacity))
        finally:
            load[0] -= 1
        return web.json_response({"id": request.match_info["id"]})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def reset(request: web.Request) -> web.Response:
        stats.update(calls=0, rejected=0)
        return web.json_response(stats)

    app = web.Application()
    app.router.add_get("/items/{id}", item)
    app.router.add_get("/tail/{id}", tail)
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/reset", reset)
    serve_app(app, backlog=4096)


def traffic_server(capacity: int) -> contextlib.AbstractContextManager[str]:
    """The server in its own process; yields its base URL."""
    return server_process("benchmarks.bench_traffic", "--serve", "--capacity", str(capacity))


# ------------------------------------------------------------------ client


RETRY = ab.Retry(attempts=50, backoff=ab.Backoff.constant(0.02, jitter="full"))


async def one_run(url: str, n: int, concurrency: int | ab.Adaptive) -> dict[str, Any]:
    """``n`` GETs at ``concurrency``; throughput, rejected share, the limit at the end."""
    connector = aiohttp.TCPConnector(limit=0)  # the batch's concurrency is the only limit
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(i: int) -> Any:
            async with session.get(f"{url}/items/{i}") as response:
                response.raise_for_status()
                return await response.json()

        async with session.post(f"{url}/reset") as r:
            await r.read()
        start = time.perf_counter()
        result = await ab.run_batch(
            get, range(n), concurrency=concurrency, classify=ab.http.classifier(), retry=RETRY
        )
        took = time.perf_counter() - start
        async with session.get(f"{url}/stats") as r:
            stats = await r.json()
    succeeded = result.counts[ab.JobStatus.SUCCEEDED]
    traffic = result.report.traffic or {}
    return {
        "throughput": succeeded / took,
        "rejected": stats["rejected"] / max(1, stats["calls"]),
        "calls": stats["calls"],
        "succeeded": succeeded,
        "limit": (traffic.get("concurrency") or {}).get("limit"),
    }


async def scenario(url: str, n: int, k: int) -> list[list[str]]:
    rows: list[list[str]] = []
    sweep: dict[int, dict[str, Any]] = {}
    for c in sorted({max(1, k // 4), max(1, k // 2), k, 2 * k, 4 * k}):
        sweep[c] = got = await one_run(url, n, c)
        rows.append(
            row(
                f"fixed concurrency={c}",
                f"{got['throughput']:,.0f} calls/s, {got['rejected']:.1%} rejected",
            )
        )
    best_c = max(sweep, key=lambda c: sweep[c]["throughput"])
    best = sweep[best_c]["throughput"]
    adaptive = await one_run(url, n, ab.Adaptive(min=1, max=1000, initial=10))
    ratio = adaptive["throughput"] / best
    rows.append(
        row(
            "Adaptive(min=1, max=1000, initial=10)",
            f"{adaptive['throughput']:,.0f} calls/s = {ratio:.2f}x the best fixed "
            f"(concurrency={best_c}); limit at the end {adaptive['limit']}",
            ">= 0.90x",
            ratio >= 0.9,
        )
    )
    rows.append(
        row(
            "Adaptive: calls rejected (429)",
            f"{adaptive['rejected']:.1%} of {adaptive['calls']:,}",
            "<= 5%",
            adaptive["rejected"] <= 0.05,
        )
    )
    flood = sweep[4 * k]
    rows.append(
        row(
            f"fixed 4K (concurrency={4 * k}): calls rejected",
            f"{flood['rejected']:.1%} of {flood['calls']:,}",
            ">= 30%",
            flood["rejected"] >= 0.3,
        )
    )
    return rows


async def tail_run(url: str, n: int, hedge: ab.Hedge | None) -> dict[str, float]:
    """``n`` GETs of the heavy-tailed route; p50/p99 job latency and the calls made."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(i: int) -> Any:
            async with session.get(f"{url}/tail/{i}") as response:
                response.raise_for_status()
                return await response.json()

        async with session.post(f"{url}/reset") as r:
            await r.read()
        result = await ab.run_batch(get, range(n), concurrency=20, hedge=hedge)
        async with session.get(f"{url}/stats") as r:
            stats = await r.json()
    durations = sorted(o.duration for o in result.outcomes)
    return {
        "p50": durations[len(durations) // 2],
        "p99": durations[int(0.99 * len(durations))],
        "calls": stats["calls"],
    }


async def hedging(url: str, n: int) -> list[list[str]]:
    plain = await tail_run(url, n, None)
    hedged = await tail_run(url, n, ab.Hedge(after="p95"))
    cut = plain["p99"] / hedged["p99"]
    extra = hedged["calls"] / n - 1
    return [
        row(
            "no hedging: job latency",
            f"p50 {plain['p50'] * 1e3:.0f} ms, p99 {plain['p99'] * 1e3:.0f} ms",
        ),
        row(
            'hedge=ab.Hedge(after="p95"): p99 cut',
            f"p50 {hedged['p50'] * 1e3:.0f} ms, p99 {hedged['p99'] * 1e3:.0f} ms: {cut:.1f}x",
            ">= 3x",
            cut >= 3,
        ),
        row("hedging: extra calls", f"{extra:.1%}", "<= 10%", extra <= 0.10),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_traffic")
    parser.add_argument("--quick", action="store_true", help="4,000 calls per run")
    parser.add_argument("--n", type=int, default=None, help="calls per run (default 20,000)")
    parser.add_argument("--capacity", type=int, default=50, help="the server's hidden K")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.capacity)
        return
    n = args.n or (4000 if args.quick else 20000)
    k = args.capacity
    tail_n = 2000 if args.quick else 5000
    with traffic_server(k) as url:
        rows = asyncio.run(scenario(url, n, k))
        hedge_rows = asyncio.run(hedging(url, tail_n))
    print(
        table(
            f"Adaptive concurrency vs a server of hidden capacity K={k} ({n:,} calls per run; "
            "429 beyond K, slower with load)",
            rows,
        )
    )
    print(
        table(
            f"Hedging vs heavy-tailed latency ({tail_n:,} calls at concurrency 20; "
            f"{TAIL_SHARE:.0%} of calls {TAIL_SLOW / TAIL_FAST:.0f}x slower)",
            hedge_rows,
        )
    )


if __name__ == "__main__":
    main()
