"""Chunked calls (``batch_size=``) vs one call per item, against a real local HTTP server.

Run: ``python -m benchmarks.bench_chunks [--quick] [--n 100000] [--concurrency 64]``.

The server (aiohttp, in its own process) answers ``POST /batch`` with a JSON
list of items after 5 ms + 0.05 ms per item: the shape of an embedding or
bulk-insert endpoint, whose fixed cost per request dominates small requests.
Both variants run ``--n`` items (100,000) at the same concurrency over one
aiohttp session, with durable SQLite checkpoints (one row per item in both):

- one call per item: ``job(item)`` posts ``[item]``;
- chunked: ``batch_size=100``, ``job(items)`` posts the 100 items at once.

Rounds are interleaved and the medians compared (the machine is shared).
Targets (issue 18): >= 20x fewer calls and >= 10x less wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

import asyncbatch as ab

from ._server import serve_app, server_process
from ._util import row, table

FIXED, PER_ITEM = 0.005, 0.00005  # the server's cost of a request: 5 ms + 0.05 ms per item


def serve() -> None:
    """The server process: prints its port, serves until stdin closes."""
    stats = {"calls": 0, "items": 0}

    async def batch(request: web.Request) -> web.Response:
        items = await request.json()
        stats["calls"] += 1
        stats["items"] += len(items)
        await asyncio.sleep(FIXED + PER_ITEM * len(items))
        return web.json_response([2 * x for x in items])

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def reset(request: web.Request) -> web.Response:
        stats.update(calls=0, items=0)
        return web.json_response(stats)

    app = web.Application()
    app.router.add_post("/batch", batch)
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/reset", reset)
    serve_app(app, backlog=1024)


async def _stats(session: aiohttp.ClientSession, base: str, *, reset: bool) -> dict[str, int]:
    method, path = ("POST", "reset") if reset else ("GET", "stats")
    async with session.request(method, f"{base}/{path}") as response:
        return dict(await response.json())


async def run_variant(
    base: str, n: int, c: int, batch_size: int | None, db: Path
) -> dict[str, Any]:
    """One run; returns its wall time, the server's call count and the succeeded count."""
    connector = aiohttp.TCPConnector(limit=c, limit_per_host=c)
    async with aiohttp.ClientSession() as admin, aiohttp.ClientSession(connector=connector) as s:
        await _stats(admin, base, reset=True)

        async def post(payload: list[int]) -> Any:
            async with s.post(f"{base}/batch", json=payload) as response:
                response.raise_for_status()
                return await response.json()

        async def one(item: int) -> Any:
            return (await post([item]))[0]

        job: Callable[[Any], Awaitable[Any]] = one if batch_size is None else post
        start = time.perf_counter()
        result = await ab.run_batch(
            job, range(n), concurrency=c, store=f"sqlite:///{db}", batch_size=batch_size
        )
        took = time.perf_counter() - start
        server = await _stats(admin, base, reset=False)
    assert result.counts[ab.JobStatus.SUCCEEDED] == n, result.counts
    assert server["items"] == n, server
    return {"seconds": took, "calls": server["calls"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_chunks")
    parser.add_argument("--quick", action="store_true", help="10,000 items, 2 rounds")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return
    n = args.n or (10_000 if args.quick else 100_000)
    rounds = args.rounds or (2 if args.quick else 3)
    c, size = args.concurrency, args.batch_size
    times: dict[str, list[float]] = {"item": [], "chunk": []}
    calls: dict[str, int] = {}
    loads: list[float] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        server_process("benchmarks.bench_chunks", "--serve") as base,
    ):
        for r in range(rounds):  # interleaved: a noisy neighbour hits both alike
            for name, bs in (("item", None), ("chunk", size)):
                loads.append(os.getloadavg()[0])
                db = Path(tmp) / f"{name}-{r}.db"  # a fresh store each run
                got = asyncio.run(run_variant(base, n, c, bs, db))
                times[name].append(got["seconds"])
                calls[name] = got["calls"]
    item_s, chunk_s = statistics.median(times["item"]), statistics.median(times["chunk"])
    fewer, faster = calls["item"] / calls["chunk"], item_s / chunk_s
    load = f"load average {statistics.median(loads):.1f} (2 cores)"
    rows = [
        row(
            f"one call per item: {n:,} items, concurrency {c}",
            f"{item_s:.2f} s, {calls['item']:,} calls",
        ),
        row(f"batch_size={size}", f"{chunk_s:.2f} s, {calls['chunk']:,} calls"),
        row("fewer calls", f"{fewer:.0f}x", ">= 20x", fewer >= 20),
        row("less wall time (median of rounds)", f"{faster:.1f}x", ">= 10x", faster >= 10),
    ]
    print(table(f"Chunked calls, SQLite checkpoints per item ({load}, {rounds} rounds)", rows))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
