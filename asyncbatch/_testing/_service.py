"""A real flaky HTTP service on 127.0.0.1 (aiohttp's server), and thin client helpers.

The service answers ``GET /items/<id>`` with JSON. How it misbehaves is decided
by a `FaultInjector` keyed by the item id: poison items get 422, injected
TRANSIENT failures 503 with ``Retry-After``, RECOVERABLE ones 429 with
``Retry-After``, outages 503 without it (the service is "down"), plus
latency. Items listed as ``stuck`` always get 503, so they exhaust their
retries. A few more routes make it a local httpbin for tests: ``/status/<code>``
(query parameters come back as response headers), ``/delay/<seconds>``,
``/drop`` (closes the connection without answering) and ``POST /hooks``.

It is served by aiohttp's web server with HTTP/1.1 keep-alive, and counts
the TCP connections it accepts (`FlakyService.connections`) so a test can
prove a client reuses them.

`get_json` and `http_request` are thin wrappers over an ``aiohttp.ClientSession``
kept for code written against the earlier hand-written client: pass
``session=`` to reuse connections (without it each call opens a session of
its own). Error statuses raise the `HTTPStatusError` subclasses below; transport
failures raise aiohttp's own exceptions, which ``asyncbatch.http`` classifies.
New code should use aiohttp or httpx directly (see the README).
"""

from __future__ import annotations

import asyncio
import json
import ssl as _ssl
from collections.abc import Collection
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from asyncbatch._errors import PermanentError, RecoverableError, TransientError

from ._faults import (
    FaultInjector,
    InjectedFatal,
    InjectedFault,
    InjectedOutage,
    InjectedPermanent,
    InjectedRecoverable,
)

__all__ = [
    "ClientError",
    "FlakyService",
    "HTTPStatusError",
    "Hit",
    "Response",
    "ServerError",
    "ServiceUnavailable",
    "TooManyRequests",
    "get_json",
    "http_request",
]


# ------------------------------------------------------------------ client


class HTTPStatusError(Exception):
    """The server answered with an error status (raised by `get_json`).

    Attributes:
        status: the HTTP status code.
        url: the URL requested.
        retry_after: seconds from the ``Retry-After`` header, or None.
    """

    def __init__(self, status: int, url: str, *, retry_after: float | None = None) -> None:
        self.status = status
        self.url = url
        self.retry_after = retry_after
        super().__init__(f"HTTP {status} {_reason(status)} from {url}".replace("  ", " "))


class ServiceUnavailable(HTTPStatusError, TransientError):
    """502, 503, 504: the service is briefly unavailable (TRANSIENT)."""


class ServerError(HTTPStatusError, RecoverableError):
    """Any other 5xx (RECOVERABLE)."""


class TooManyRequests(HTTPStatusError, RecoverableError):
    """429: slow down (RECOVERABLE)."""


class ClientError(HTTPStatusError, PermanentError):
    """Any other 4xx: the request itself is wrong (PERMANENT)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """An HTTP response read in full: status, lower-cased headers, body bytes."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


async def http_request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Response:
    """Send one request with aiohttp and read the whole response.

    Args:
        method: ``"GET"``, ``"POST"``, ...
        url: the absolute URL.
        body: the request body.
        headers: extra request headers.
        session: the session (and so the connection pool) to use; without it
            a session is opened for this one call.

    Raises:
        aiohttp.ClientError: the connection failed (refused, reset, timed out).
    """
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await http_request(method, url, body=body, headers=headers, session=own)
    async with session.request(method, url, data=body, headers=headers) as response:
        data = await response.read()
        return Response(
            status=response.status,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=data,
        )


async def get_json(url: str, *, session: aiohttp.ClientSession | None = None) -> Any:
    """``GET url`` and return the JSON body; error statuses raise `HTTPStatusError`s."""
    response = await http_request("GET", url, session=session)
    raise_for_status(response, url)
    return response.json()


def raise_for_status(response: Response, url: str) -> None:
    """Raise the `HTTPStatusError` subclass that classifies this status."""
    status = response.status
    if status < 400:
        return
    retry_after: float | None = None
    raw = response.headers.get("retry-after")
    if raw is not None:
        try:
            retry_after = float(raw)
        except ValueError:
            retry_after = None
    cls: type[HTTPStatusError]
    if status in (502, 503, 504):
        cls = ServiceUnavailable
    elif status >= 500:
        cls = ServerError
    elif status == 429:
        cls = TooManyRequests
    else:
        cls = ClientError
    raise cls(status, url, retry_after=retry_after)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


# ------------------------------------------------------------------ server


@dataclass(frozen=True, slots=True, kw_only=True)
class Hit:
    """One request the service answered: when (loop clock), what, and the status."""

    at: float
    method: str
    path: str
    status: int


class FlakyService:
    """An HTTP service on 127.0.0.1 (random port) that fails on purpose.

    ``async with FlakyService(faults) as service:`` serves until the block
    ends; ``service.url`` is its base URL. Routes:

    - ``GET /items/<id>``: ``{"id": ..., "value": ...}``, or the failure the
      `FaultInjector` picks for that id (see the module docstring).
    - ``POST /hooks``: records the JSON body in `received` (202).
    - ``GET /status/<code>``: answers ``code``; every query parameter comes
      back as a response header (``/status/503?Retry-After=1``).
    - ``GET /delay/<seconds>``: answers 200 after that long.
    - ``GET /drop``: closes the connection without an answer.

    Args:
        faults: decides each ``/items`` request's fate, keyed by the item id.
        stuck: item ids that always get 503 (they exhaust their retries).
        ssl: serve HTTPS with this server context (``service.url`` is then
            ``https://``).

    Attributes:
        requests: requests answered.
        statuses: ``{status: count}`` of the answers.
        connections: TCP connections accepted (fewer than `requests` when
            clients keep connections alive).
        hits: every answered request, in order (`Hit`).
        received: JSON bodies posted to ``/hooks``.
    """

    def __init__(
        self,
        faults: FaultInjector | None = None,
        *,
        stuck: Collection[str] = (),
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        self.faults = faults or FaultInjector()
        self.stuck = frozenset(stuck)
        self.ssl = ssl
        self.requests = 0
        self.connections = 0
        self.statuses: dict[int, int] = {}
        self.hits: list[Hit] = []
        self.received: list[Any] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:43121``."""
        scheme = "https" if self.ssl is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FlakyService:
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/items/{id}", self._item)
        app.router.add_post("/hooks", self._hook)
        app.router.add_get("/status/{code:[0-9]{3}}", self._status)
        app.router.add_get("/delay/{seconds}", self._delay)
        app.router.add_get("/drop", self._drop)
        # A short shutdown: a client still waiting on /delay must not hold up the exit.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        self._runner = runner
        handler_factory = runner.server
        assert handler_factory is not None

        def protocol() -> asyncio.BaseProtocol:
            self.connections += 1
            return handler_factory()

        loop = asyncio.get_running_loop()
        # aiohttp's own factory on a server we own, so every accepted connection is counted.
        self._server = await loop.create_server(protocol, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()  # closes the kept-alive connections too
        if self._server is not None:
            await self._server.wait_closed()

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:  # unknown routes: 404, wrong method: 405
            response = web.json_response({"error": exc.reason}, status=exc.status)
        self.requests += 1
        self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
        loop = asyncio.get_running_loop()
        self.hits.append(
            Hit(at=loop.time(), method=request.method, path=request.path, status=response.status)
        )
        return response

    async def _item(self, request: web.Request) -> web.StreamResponse:
        item_id = request.match_info["id"]
        if item_id in self.stuck:
            return _json(503, {"error": "this item's shard is unavailable"}, {"Retry-After": "1"})
        try:
            await self.faults.maybe_fail(item_id)
        except InjectedPermanent:
            return _json(422, {"error": f"item {item_id} is malformed"})
        except InjectedOutage:
            return _json(503, {"error": "service is down"})
        except InjectedRecoverable as exc:
            return _json(429, {"error": "too many requests"}, _retry_after(exc))
        except InjectedFatal:
            return _json(401, {"error": "credentials revoked"})
        except InjectedFault as exc:
            return _json(503, {"error": "temporarily unavailable"}, _retry_after(exc))
        return _json(200, {"id": item_id, "value": _value(item_id)})

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(json.loads(body or b"null"))
        return _json(202, {"accepted": True})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        status = int(request.match_info["code"])
        return _json(status, {"status": status}, dict(request.query))

    async def _delay(self, request: web.Request) -> web.StreamResponse:
        seconds = float(request.match_info["seconds"])
        await asyncio.sleep(seconds)
        return _json(200, {"delayed": seconds})

    async def _drop(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        return web.Response(status=204)  # never reaches the client


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(payload, status=status, headers=headers)


def _retry_after(exc: InjectedFault) -> dict[str, str]:
    return {} if exc.retry_after is None else {"Retry-After": f"{exc.retry_after:g}"}


def _value(item_id: str) -> int:
    # Something deterministic to return: a checksum of the id.
    return sum(ord(c) * (i + 1) for i, c in enumerate(item_id)) % 1000
