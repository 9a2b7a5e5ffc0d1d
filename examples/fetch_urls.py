"""Fetch many URLs from a flaky API with a rate limit and a circuit breaker.

Runs offline: it starts a local HTTP service that answers 503 (with
Retry-After) now and then and goes down for a second halfway through. The
breaker notices the outage, stops sending requests (jobs wait without
holding a slot or spending an attempt), probes, and closes when the service
is back. Run it: ``python examples/fetch_urls.py``.

One aiohttp session serves the whole batch (its pool sized to the
concurrency, connections kept alive); the job closes over it. No rules are
needed: asyncbatch classifies aiohttp's (and httpx's) errors by status and
waits as long as the server's ``Retry-After`` asks.
"""

from __future__ import annotations

import asyncio

import aiohttp

import asyncbatch as ab

# A local stand-in for a real API (aiohttp's server on 127.0.0.1, failing on purpose).
from asyncbatch.testing import FaultInjector, FlakyService

CONCURRENCY = 20


def show(event: ab.Event) -> None:
    if isinstance(event, ab.BreakerOpened | ab.BreakerHalfOpen | ab.BreakerClosed):
        print(f"  {event.name}: {event.dependency}")


async def main() -> None:
    faults = FaultInjector(
        seed=1,
        rates={ab.ErrorKind.TRANSIENT: 0.1},  # 503 Service Unavailable
        retry_after=0.2,  # sent as Retry-After: 0.2
        latency=(0.002, 0.02),
        outages=[(0.5, 1.5)],  # down from 0.5 s to 1.5 s after the first request
    )
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)  # pool size = concurrency
    async with FlakyService(faults) as api, aiohttp.ClientSession(connector=connector) as session:
        urls = [f"{api.url}/items/{i}" for i in range(300)]

        async def fetch(url: str) -> dict[str, object]:
            async with session.get(url) as response:
                response.raise_for_status()  # 503 + Retry-After: retried after that long
                return await response.json()  # type: ignore[no-any-return]

        result = await ab.run_batch(
            fetch,
            urls,
            key=lambda url: url.rsplit("/", 1)[-1],
            concurrency=CONCURRENCY,
            timeout=2.0,
            rates={"api": ab.Rate(200, per=1.0)},
            breakers={"api": ab.Breaker(fail_max=5, reset_timeout=0.3)},
            uses=["api"],  # every attempt passes the api's rate limit and breaker
            on_event=show,
        )
    print(f"fetched {result.counts[ab.JobStatus.SUCCEEDED]}/{len(urls)} in {result.duration:.1f} s")
    print(
        f"the service answered {api.requests} requests over {api.connections} connections: "
        f"{api.statuses}"
    )
    print(result.report)


if __name__ == "__main__":
    asyncio.run(main())
