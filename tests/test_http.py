"""asyncbatch.http against real local servers, with httpx and with aiohttp.

Every test runs a real aiohttp server on 127.0.0.1 (`FlakyService`) and a real
client; nothing is mocked. Waits are real but short (at most ~1.3 s).
"""

from __future__ import annotations

import asyncio
import math
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

import asyncbatch as ab
from asyncbatch._policy._http import http_date
from asyncbatch.testing import FlakyService, set_testing

K = ab.ErrorKind
S = ab.JobStatus
CLIENTS = ["httpx", "aiohttp"]
Get = Callable[[str], Awaitable[Any]]

# No backoff of our own: only the server's delay (if any) separates attempts.
NO_BACKOFF = ab.Retry(attempts=2, backoff=ab.Backoff.constant(0))


@asynccontextmanager
async def client(
    name: str,
    *,
    pool: int = 10,
    read_timeout: float | None = None,
    trust: ssl.SSLContext | None = None,
) -> AsyncIterator[Get]:
    """One shared client per test, as the README tells users: ``get(url)`` raises for status."""
    if name == "httpx":
        async with httpx.AsyncClient(
            limits=httpx.Limits(max_connections=pool),
            timeout=httpx.Timeout(5.0, read=read_timeout),
            verify=trust if trust is not None else True,
        ) as http:

            async def get_httpx(url: str) -> Any:
                response = await http.get(url)
                response.raise_for_status()
                return response.json()

            yield get_httpx
    else:
        connector = aiohttp.TCPConnector(limit=pool, ssl=trust if trust is not None else True)
        timeout = aiohttp.ClientTimeout(total=5.0, sock_read=read_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def get_aiohttp(url: str) -> Any:
                async with session.get(url) as response:
                    response.raise_for_status()
                    return await response.json()

            yield get_aiohttp


async def failure(get: Get, url: str) -> BaseException:
    """The exception one request raises."""
    with pytest.raises((httpx.HTTPError, aiohttp.ClientError)) as info:
        await get(url)
    return info.value


# ------------------------------------------------------------ the table

TABLE = {
    400: K.PERMANENT,
    401: K.PERMANENT,
    403: K.PERMANENT,
    404: K.PERMANENT,
    405: K.PERMANENT,
    408: K.TRANSIENT,
    409: K.PERMANENT,
    410: K.PERMANENT,
    422: K.PERMANENT,
    425: K.TRANSIENT,
    429: K.RECOVERABLE,
    500: K.TRANSIENT,
    501: K.PERMANENT,
    502: K.TRANSIENT,
    503: K.RECOVERABLE,
    504: K.TRANSIENT,
    505: K.PERMANENT,
}


@pytest.mark.parametrize("name", CLIENTS)
async def test_every_status_in_the_table_is_retried_or_dead_lettered_by_its_kind(
    name: str,
) -> None:
    async with FlakyService() as service, client(name) as get:

        async def job(status: int) -> Any:
            return await get(f"{service.url}/status/{status}")

        result = await ab.run_batch(job, list(TABLE), retry=NO_BACKOFF, concurrency=4)
    seen = {s: (o.kind, o.attempts) for s, o in zip(TABLE, result.outcomes, strict=True)}
    expected = {s: (k, 1 if k is K.PERMANENT else 2) for s, k in TABLE.items()}
    assert seen == expected
    assert all(o.status is S.DEAD_LETTERED for o in result.outcomes)
    assert service.statuses == {s: 1 if k is K.PERMANENT else 2 for s, k in TABLE.items()}


@pytest.mark.parametrize("name", CLIENTS)
async def test_a_2xx_is_a_success_and_kind_of_status_matches_the_table(name: str) -> None:
    async with FlakyService() as service, client(name) as get:
        assert await get(f"{service.url}/status/200") == {"status": 200}
    assert {s: ab.http.kind_of_status(s) for s in TABLE} == TABLE


# ---------------------------------------------------------- Retry-After


@pytest.mark.parametrize("name", CLIENTS)
async def test_retry_after_in_seconds_is_the_actual_wait(name: str) -> None:
    async with FlakyService() as service, client(name) as get:

        async def job(path: str) -> Any:
            first = ab.current_job().attempt == 1
            return await get(f"{service.url}{path if first else '/status/200'}")

        result = await ab.run_batch(job, ["/status/503?Retry-After=1"], retry=NO_BACKOFF)
    assert result.ok
    first, second = service.hits
    assert (first.status, second.status) == (503, 200)
    assert second.at - first.at == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("name", CLIENTS)
async def test_retry_after_as_an_http_date_is_the_actual_wait(name: str) -> None:
    # HTTP-dates have whole seconds: the retry must come at that second, 0.3-1.3 s from now.
    target = float(math.ceil(time.time() + 0.3))
    retried_at: list[float] = []
    async with FlakyService() as service, client(name) as get:

        async def job(_: int) -> Any:
            if ab.current_job().attempt == 1:
                date = http_date(target).replace(" ", "%20").replace(",", "%2C")
                return await get(f"{service.url}/status/429?Retry-After={date}")
            retried_at.append(time.time())
            return await get(f"{service.url}/status/200")

        result = await ab.run_batch(job, [0], retry=NO_BACKOFF)
    assert result.ok
    assert [h.status for h in service.hits] == [429, 200]
    assert retried_at[0] == pytest.approx(target, abs=0.05)


@pytest.mark.parametrize("name", CLIENTS)
async def test_a_long_retry_after_is_cut_to_the_configured_maximum(name: str) -> None:
    classify = ab.http.classifier(max_retry_after=0.2)
    async with FlakyService() as service, client(name) as get:

        async def job(_: int) -> Any:
            first = ab.current_job().attempt == 1
            return await get(f"{service.url}/status/{'503?Retry-After=3600' if first else '200'}")

        result = await ab.run_batch(job, [0], retry=NO_BACKOFF, classify=classify)
    assert result.ok
    first, second = service.hits
    assert second.at - first.at == pytest.approx(0.2, abs=0.05)


@pytest.mark.parametrize("name", CLIENTS)
async def test_rate_limit_reset_is_honoured_without_retry_after(name: str) -> None:
    async with FlakyService() as service, client(name) as get:
        exc = await failure(get, f"{service.url}/status/429?RateLimit-Reset=7")
        legacy = await failure(get, f"{service.url}/status/429?X-RateLimit-Reset={time.time() + 9}")
    assert ab.Classifier()(exc) is K.RECOVERABLE
    assert exc.retry_after == 7.0  # type: ignore[attr-defined]
    assert ab.http.retry_after(legacy) == pytest.approx(9.0, abs=0.5)  # a Unix time


async def test_set_testing_zeroes_the_servers_delay_too() -> None:
    async with FlakyService() as service, client("httpx") as get:

        async def job(_: int) -> Any:
            first = ab.current_job().attempt == 1
            return await get(f"{service.url}/status/{'503?Retry-After=30' if first else '200'}")

        started = time.perf_counter()
        with set_testing():
            result = await ab.run_batch(job, [0])
    assert result.ok
    assert time.perf_counter() - started < 1.0


# ------------------------------------------------------------ transport


@pytest.mark.parametrize("name", CLIENTS)
async def test_a_refused_connection_is_transient_and_retried(name: str) -> None:
    async with FlakyService() as service:
        url = f"{service.url}/items/1"  # nobody listens there once the block ends
    async with client(name) as get:
        result = await ab.run_batch(get, [url], retry=NO_BACKOFF)
    (outcome,) = result.outcomes
    assert (outcome.status, outcome.kind, outcome.attempts) == (S.DEAD_LETTERED, K.TRANSIENT, 2)


@pytest.mark.parametrize("name", CLIENTS)
async def test_a_read_timeout_is_transient(name: str) -> None:
    async with FlakyService() as service, client(name, read_timeout=0.1) as get:
        exc = await failure(get, f"{service.url}/delay/1")
    assert isinstance(exc, httpx.ReadTimeout | aiohttp.SocketTimeoutError)
    assert ab.Classifier()(exc) is K.TRANSIENT


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.mark.parametrize("name", CLIENTS)
async def test_an_untrusted_certificate_is_permanent_and_never_retried(
    name: str, ca: trustme.CA
) -> None:
    async with FlakyService(ssl=server_tls(ca)) as service:
        assert service.url.startswith("https://")
        async with client(name) as get:  # the system's trust store: the local CA is unknown
            result = await ab.run_batch(get, [f"{service.url}/items/1"], retry=NO_BACKOFF)
        trusted = ssl.create_default_context()
        ca.configure_trust(trusted)
        async with client(name, trust=trusted) as get:  # the same server, trusted: it works
            assert await get(f"{service.url}/items/1") == {"id": "1", "value": 49}
    (outcome,) = result.outcomes
    assert (outcome.status, outcome.kind, outcome.attempts) == (S.DEAD_LETTERED, K.PERMANENT, 1)
    assert "CERTIFICATE_VERIFY_FAILED" in str(outcome.error) or "certificate" in str(
        outcome.error.__cause__ if outcome.error is not None else ""
    )


@pytest.mark.parametrize("name", CLIENTS)
async def test_a_server_that_drops_the_connection_is_a_recoverable_protocol_error(
    name: str,
) -> None:
    async with FlakyService() as service, client(name) as get:
        exc = await failure(get, f"{service.url}/drop")
    assert isinstance(exc, httpx.RemoteProtocolError | aiohttp.ServerDisconnectedError)
    assert ab.Classifier()(exc) is K.RECOVERABLE


@pytest.mark.parametrize("name", CLIENTS)
async def test_one_shared_client_keeps_connections_alive(name: str) -> None:
    async with FlakyService() as service, client(name, pool=5) as get:

        async def job(i: int) -> Any:
            return await get(f"{service.url}/items/{i}")

        result = await ab.run_batch(job, range(200), concurrency=5)
    assert result.ok
    assert service.requests == 200
    assert 1 <= service.connections <= 5, "requests reuse the pool's kept-alive connections"


# --------------------------------------------------------------- report


@pytest.mark.parametrize("name", CLIENTS)
async def test_the_report_shows_status_and_method(name: str) -> None:
    async with FlakyService() as service, client(name) as get:

        async def job(path: str) -> Any:
            return await get(f"{service.url}{path}")

        paths = ["/status/404", "/status/410", "/status/503", "/status/503"]
        result = await ab.run_batch(job, paths, retry=NO_BACKOFF)
    groups = sorted((g.kind.value, g.count, g.fingerprint) for g in result.report.groups)
    # Before issue 13 the 404 and the 410 were one group, "<n>", with no method.
    assert [(kind, count) for kind, count, _ in groups] == [
        ("permanent", 1),
        ("permanent", 1),
        ("recoverable", 4),
    ]
    for (_, _, fp), status in zip(groups, ["404", "410", "503"], strict=True):
        assert fp.startswith("GET "), fp
        assert status in fp.split("url")[0], fp


# ------------------------------------------------------------ responses


async def test_returned_error_responses_fail_with_their_kind_when_asked() -> None:
    classify = ab.http.classifier(responses=True)
    async with FlakyService() as service, httpx.AsyncClient() as http:

        async def job(path: str) -> httpx.Response:
            first = ab.current_job().attempt == 1
            return await http.get(f"{service.url}{path if first else '/status/200'}")

        result = await ab.run_batch(
            job, ["/status/404", "/status/503?Retry-After=1"], retry=NO_BACKOFF, classify=classify
        )
    missing, busy = result.outcomes
    assert (missing.status, missing.kind, missing.attempts) == (S.DEAD_LETTERED, K.PERMANENT, 1)
    assert isinstance(missing.error, ab.RejectedResult)
    assert (busy.status, busy.attempts) == (S.SUCCEEDED, 2)
    hits = [h for h in service.hits if h.path == "/status/503" or h.status == 200]
    assert hits[-1].at - hits[0].at == pytest.approx(1.0, abs=0.05), "the server's delay"


async def test_without_responses_a_returned_error_response_is_the_jobs_business() -> None:
    async with FlakyService() as service, httpx.AsyncClient() as http:

        async def job(_: int) -> int:
            return (await http.get(f"{service.url}/status/404")).status_code

        result = await ab.run_batch(job, [0])
    assert result.ok
    assert result.outcomes[0].result == 404


# ------------------------------------------------------------- options


async def test_your_statuses_and_rules_come_first() -> None:
    req = httpx.Request("GET", "http://api.test/x")
    forbidden = httpx.HTTPStatusError("403", request=req, response=httpx.Response(403, request=req))
    gone = httpx.HTTPStatusError("410", request=req, response=httpx.Response(410, request=req))
    classify = ab.http.classifier(
        transient={500, 410},
        rules=[ab.Rule(httpx.HTTPStatusError, kind="fatal", when=lambda e: "403" in str(e))],
    )
    assert (classify(forbidden), classify(gone)) == (K.FATAL, K.TRANSIENT)
    assert ab.Classifier(builtins=False)(gone) is K.RECOVERABLE, "built-ins off: no HTTP rules"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"transient": {700}},
        {"transient": {503}},  # also recoverable by default
        {"max_retry_after": -1},
    ],
)
def test_bad_http_options_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ab.ConfigError):
        ab.http.classifier(**kwargs)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"retry-after": " 3 "}, 3.0),
        ({"Retry-After": "Sun, 06 Nov 1994 08:49:47 GMT"}, 10.0),  # IMF-fixdate
        ({"Retry-After": "Sunday, 06-Nov-94 08:49:47 GMT"}, 10.0),  # RFC 850
        ({"Retry-After": "Sun Nov  6 08:49:47 1994"}, 10.0),  # asctime
        ({"Retry-After": "Sun, 06 Nov 1994 08:40:00 GMT"}, 0.0),  # in the past
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "99999"}, 120.0),  # capped
        ({"RateLimit-Reset": "4"}, 4.0),
        ({"X-RateLimit-Reset": "15"}, 15.0),
        ({"Retry-After": "2", "RateLimit-Reset": "9"}, 2.0),  # Retry-After first
        ({}, None),
    ],
)
def test_retry_after_parses_both_rfc_9110_forms_and_rate_limit_headers(
    headers: dict[str, str], expected: float | None
) -> None:
    now = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
    assert ab.http.retry_after(headers, now=now) == expected


def test_an_x_ratelimit_reset_that_large_is_a_unix_time() -> None:
    now = 1_700_000_000.0
    assert ab.http.retry_after({"X-RateLimit-Reset": "1700000030"}, now=now) == 30.0
    assert ab.http.retry_after({"X-RateLimit-Reset": "1699999990"}, now=now) == 0.0


def test_importing_asyncbatch_imports_neither_http_client() -> None:
    code = (
        "import sys, asyncbatch as ab; ab.Classifier()(ValueError()); "
        "assert 'httpx' not in sys.modules and 'aiohttp' not in sys.modules, sorted(sys.modules); "
        "ab.http.classifier(); assert 'httpx' not in sys.modules and 'aiohttp' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_the_readme_result_rules_turn_a_200_with_an_error_body_into_failures() -> None:
    def error_code(body: dict[str, Any]) -> str | None:
        return (body.get("error") or {}).get("code") if body.get("ok") is False else None

    classify = ab.http.classifier(
        rules=[
            ab.Rule(result=lambda body: error_code(body) == "overloaded", kind="recoverable"),
            ab.Rule(result=lambda body: error_code(body) is not None, kind="permanent"),
        ]
    )
    answers = {
        "busy": [{"ok": False, "error": {"code": "overloaded"}}, {"ok": True, "text": "hi"}],
        "bad": [{"ok": False, "error": {"code": "invalid_prompt"}}],
    }

    async def job(prompt: str) -> dict[str, Any]:
        return answers[prompt][ab.current_job().attempt - 1]

    result = await ab.run_batch(job, ["busy", "bad"], classify=classify, retry=NO_BACKOFF)
    busy, bad = result.outcomes
    assert (busy.status, busy.attempts, busy.result) == (S.SUCCEEDED, 2, {"ok": True, "text": "hi"})
    assert (bad.status, bad.kind, bad.attempts) == (S.DEAD_LETTERED, K.PERMANENT, 1)


@pytest.mark.parametrize("name", CLIENTS)
async def test_a_malformed_response_is_a_recoverable_protocol_error(name: str) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 2x0 Nonsense\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with client(name) as get:
            exc = await failure(get, f"http://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    # aiohttp reports it as a ClientResponseError with status 400: not the server's 400.
    assert ab.Classifier()(exc) is K.RECOVERABLE


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.PoolTimeout("no connection free"), K.TRANSIENT),
        (httpx.ConnectTimeout("connect"), K.TRANSIENT),
        (httpx.WriteTimeout("write"), K.TRANSIENT),
        (httpx.ReadError("reset"), K.TRANSIENT),
        (httpx.LocalProtocolError("bad header"), K.RECOVERABLE),
        (httpx.UnsupportedProtocol("ftp://"), K.PERMANENT),
        (httpx.TooManyRedirects("loop"), K.PERMANENT),
        (httpx.DecodingError("gzip"), K.PERMANENT),
        (httpx.InvalidURL("bad"), K.PERMANENT),
    ],
)
def test_httpx_transport_errors_get_the_tables_kind(exc: BaseException, kind: ab.ErrorKind) -> None:
    assert ab.Classifier()(exc) is kind


@given(st.floats(0, 10**6, allow_nan=False), st.floats(0, 10**4, allow_nan=False))
def test_retry_after_is_never_negative_and_never_above_the_cap(seconds: float, cap: float) -> None:
    delay = ab.http.retry_after({"Retry-After": repr(seconds)}, max_retry_after=cap)
    assert delay == min(seconds, cap)


@given(st.integers(0, 3600), st.floats(1e9, 4e9, allow_nan=False))
def test_an_http_date_round_trips_to_its_delay_in_whole_seconds(ahead: int, now: float) -> None:
    date = http_date(math.floor(now) + ahead)
    delay = ab.http.retry_after({"Retry-After": date}, now=now, max_retry_after=10**4)
    assert delay is not None
    assert ahead - 1 <= delay <= ahead


@pytest.mark.parametrize("name", CLIENTS)
async def test_a_tls_handshake_the_server_cuts_short_is_transient(name: str) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)  # the ClientHello, then nothing
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with client(name) as get:
            exc = await failure(get, f"https://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    assert ab.Classifier()(exc) is K.TRANSIENT, "a dropped connection, not a bad certificate"
