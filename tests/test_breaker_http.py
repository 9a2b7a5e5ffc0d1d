"""End to end: a batch against a real HTTP server on 127.0.0.1 that is down for a while.

The server answers 503 for a short stretch after its first request, then 200.
The same batch runs with and without a breaker: with one, the dependency sees
a handful of calls while it is down instead of a retry storm, every job still
succeeds, and the events tell the story (opened, probing, closed).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

import asyncbatch as ab

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


@dataclass
class FlakyServer:
    """A tiny HTTP/1.1 server: 503 for ``down_for`` seconds after the first request."""

    down_for: float
    port: int = 0
    calls: int = 0
    calls_while_down: int = 0
    first_at: float | None = None
    _server: asyncio.Server | None = field(default=None, repr=False)

    def is_down(self) -> bool:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        return now - self.first_at < self.down_for

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1].decode()
            self.calls += 1
            if self.is_down():
                self.calls_while_down += 1
                status, body = "503 Service Unavailable", b"down"
            else:
                status, body = "200 OK", path.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        finally:
            writer.close()

    async def __aenter__(self) -> FlakyServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


class ServiceUnavailable(ab.TransientError):
    """HTTP 503."""


async def http_get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status == 503:
        raise ServiceUnavailable(f"GET {path}: 503")
    if status != 200:
        raise ab.PermanentError(f"GET {path}: {status}")
    return body.decode()


# Plenty of quick retries, so that without a breaker every job outlasts the outage too.
RETRY = ab.RetryPolicy(
    {ab.ErrorKind.TRANSIENT: ab.Retry(attempts=200, backoff=ab.Backoff.constant(0.01))}
)


async def run(
    server: FlakyServer, style: str, breaker: bool
) -> tuple[ab.BatchResult[Any], list[ab.Event]]:
    events: list[ab.Event] = []

    async def job_with_guard(i: int) -> str:
        async with ab.guard("api"):
            return await http_get(server.port, f"/item/{i}")

    async def job_plain(i: int) -> str:
        return await http_get(server.port, f"/item/{i}")

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
    async with FlakyServer(down_for=DOWN_FOR) as unprotected:
        plain, _ = await run(unprotected, style, breaker=False)
    async with FlakyServer(down_for=DOWN_FOR) as protected:
        guarded, events = await run(protected, style, breaker=True)

    for result in (plain, guarded):
        assert result.ok
        assert result.counts[ab.JobStatus.SUCCEEDED] == ITEMS
        assert [o.result for o in result.outcomes] == [f"/item/{i}" for i in range(ITEMS)]

    # Without a breaker every worker hammers the dead service; with one, only
    # the calls in flight when it tripped plus one probe per reset_timeout.
    assert unprotected.calls_while_down > 100
    assert protected.calls_while_down * 4 < unprotected.calls_while_down
    assert protected.calls_while_down <= CONCURRENCY + DOWN_FOR / 0.05 + 4

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
    assert opened.error_type.endswith("ServiceUnavailable")
    assert all(e.run_id == guarded.run_id for e in story)

    # Rejected jobs were parked, not charged an attempt: far fewer attempts with the breaker.
    attempts = {
        name: sum(o.attempts for o in r.outcomes)
        for name, r in (("plain", plain), ("guarded", guarded))
    }
    assert attempts["guarded"] * 3 < attempts["plain"]
