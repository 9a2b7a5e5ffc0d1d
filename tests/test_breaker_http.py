"""End to end: a batch against a real HTTP server on 127.0.0.1 that is down for a while.

The server (`testing.FlakyService`, aiohttp's) answers 503 for a short stretch
after its first request, then 200; the jobs share one aiohttp session.
The same batch runs with and without a breaker: with one, the dependency sees
a handful of calls while it is down instead of a retry storm, every job still
succeeds, and the events tell the story (opened, probing, closed).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

import asyncbatch as ab
from asyncbatch.testing import FaultInjector, FlakyService

DOWN_FOR = 0.4  # seconds of outage, real time: the server is real
ITEMS = 40
CONCURRENCY = 8


def _executor_exists() -> bool:
    async def probe(item: int) -> int:
        return item

    try:
        asyncio.run(ab.run_batch(probe, [1]))
    except NotImplementedError:
        return False
    return True


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _executor_exists(), reason="ab.run_batch is not implemented yet"),
]


@asynccontextmanager
async def flaky_server(
    down_for: float,
) -> AsyncIterator[tuple[FlakyService, aiohttp.ClientSession]]:
    """aiohttp's server, 503 for ``down_for`` seconds after the first request; one shared client."""
    faults = FaultInjector(outages=[(0.0, down_for)])
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with (
        FlakyService(faults) as service,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        yield service, session


def calls_while_down(service: FlakyService) -> int:
    return service.statuses.get(503, 0)


# Plenty of quick retries, so that without a breaker every job outlasts the outage too.
# A 503 without Retry-After is RECOVERABLE (asyncbatch.http); one Retry covers both kinds.
RETRY = ab.Retry(attempts=200, backoff=ab.Backoff.constant(0.01))


async def run(
    server: tuple[FlakyService, aiohttp.ClientSession], style: str, breaker: bool
) -> tuple[ab.BatchResult[Any], list[ab.Event]]:
    service, session = server
    events: list[ab.Event] = []

    async def http_get(i: int) -> str:
        async with session.get(f"{service.url}/items/{i}") as response:
            response.raise_for_status()
            return str((await response.json())["id"])

    async def job_with_guard(i: int) -> str:
        async with ab.guard("api"):
            return await http_get(i)

    async def job_plain(i: int) -> str:
        return await http_get(i)

    options: dict[str, Any] = {}
    if breaker:
        options["breakers"] = {"api": ab.Breaker(fail_max=3, reset_timeout=0.05)}
    if style == "uses":
        options["uses"] = ["api"]
    job = job_with_guard if style == "guard" else job_plain
    result = await ab.run_batch(
        job, range(ITEMS), concurrency=CONCURRENCY, retry=RETRY, on_event=events.append, **options
    )
    return result, events


@pytest.mark.parametrize("style", ["guard", "uses"])
async def test_breaker_spares_a_down_http_service_and_every_job_succeeds(style: str) -> None:
    async with flaky_server(DOWN_FOR) as unprotected:
        plain, _ = await run(unprotected, style, breaker=False)
    async with flaky_server(DOWN_FOR) as protected:
        guarded, events = await run(protected, style, breaker=True)

    for result in (plain, guarded):
        assert result.ok
        assert result.counts[ab.JobStatus.SUCCEEDED] == ITEMS
        assert [o.result for o in result.outcomes] == [str(i) for i in range(ITEMS)]

    # Without a breaker every worker hammers the dead service; with one, only
    # the calls in flight when it tripped plus one probe per reset_timeout.
    down_plain, down_guarded = calls_while_down(unprotected[0]), calls_while_down(protected[0])
    assert down_plain > 100
    assert down_guarded * 4 < down_plain
    assert down_guarded <= CONCURRENCY + DOWN_FOR / 0.05 + 4

    story = [
        e for e in events if isinstance(e, ab.BreakerOpened | ab.BreakerHalfOpen | ab.BreakerClosed)
    ]
    names = [e.name for e in story]
    assert names[0] == "BreakerOpened"
    assert names[-1] == "BreakerClosed"
    assert names.count("BreakerClosed") == 1  # it closed once, after the outage
    for prev, curr in itertools.pairwise(names):  # every step is a legal transition
        assert (prev, curr) in {
            ("BreakerOpened", "BreakerHalfOpen"),
            ("BreakerHalfOpen", "BreakerOpened"),
            ("BreakerHalfOpen", "BreakerClosed"),
        }
    opened = story[0]
    assert isinstance(opened, ab.BreakerOpened)
    assert opened.dependency == "api"
    assert opened.failures == 3
    assert opened.error_type.endswith("ClientResponseError")  # aiohttp's, for the 503
    assert all(e.run_id == guarded.run_id for e in story)

    # Rejected jobs were parked, not charged an attempt: far fewer attempts with the breaker.
    attempts = {
        name: sum(o.attempts for o in r.outcomes)
        for name, r in (("plain", plain), ("guarded", guarded))
    }
    assert attempts["guarded"] * 3 < attempts["plain"]
