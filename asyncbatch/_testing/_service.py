"""A real flaky HTTP service on 127.0.0.1 and a tiny client for it (demo and examples).

The service answers ``GET /items/<id>`` with JSON. How it misbehaves is decided
by a `FaultInjector` keyed by the item id: poison items get 422, injected
TRANSIENT failures 503 with ``Retry-After``, RECOVERABLE ones 429 with
``Retry-After``, outages 503 without it (the service is "down"), plus
latency. Items listed as ``stuck`` always get 503, so they exhaust their
retries.

The client speaks just enough HTTP/1.1 (one request per connection) to map
statuses onto asyncbatch's error kinds, with no dependency beyond asyncio:
5xx → `ServiceUnavailable` (TRANSIENT) or `ServerError` (RECOVERABLE), 429 →
`TooManyRequests` (RECOVERABLE), other 4xx → `ClientError` (PERMANENT); each
carries the server's ``Retry-After`` as ``retry_after`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

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
    "Response",
    "ServerError",
    "ServiceUnavailable",
    "TooManyRequests",
    "get_json",
    "http_request",
]

_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# ------------------------------------------------------------------ client


class HTTPStatusError(Exception):
    """The server answered with an error status.

    Attributes:
        status: the HTTP status code.
        retry_after: seconds from the ``Retry-After`` header, or None.
    """

    def __init__(self, status: int, url: str, *, retry_after: float | None = None) -> None:
        self.status = status
        self.url = url
        self.retry_after = retry_after
        reason = _REASONS.get(status, "")
        super().__init__(f"HTTP {status} {reason} from {url}".replace("  ", " "))


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
    """An HTTP response: status, lower-cased headers, body bytes."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


async def http_request(
    method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Response:
    """Send one HTTP/1.1 request over a fresh connection and read the response.

    Raises:
        ConnectionError: the connection was refused or dropped.
        ValueError: the URL is not ``http://host:port/path``.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http://host:port/path URLs are supported, got {url!r}")
    host, port = parts.hostname, parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError(f"{url}: connection closed before a response")
        status = int(status_line.split()[1])
        response_headers = await _read_headers(reader)
        length = int(response_headers.get("content-length", "0"))
        data = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError as exc:
        raise ConnectionResetError(f"{url}: connection closed mid-response") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return Response(status=status, headers=response_headers, body=data)


async def get_json(url: str) -> Any:
    """``GET url`` and return the JSON body; error statuses raise `HTTPStatusError`s."""
    response = await http_request("GET", url)
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
        with contextlib.suppress(ValueError):
            retry_after = float(raw)
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


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


# ------------------------------------------------------------------ server


class FlakyService:
    """An HTTP service on 127.0.0.1 (random port) that fails on purpose.

    ``async with FlakyService(faults) as service:`` serves until the block
    ends; ``service.url`` is its base URL. ``GET /items/<id>`` answers
    ``{"id": ..., "value": ...}``; ``POST /hooks`` records the JSON body in
    `received` (for the webhook example).

    Args:
        faults: decides each request's fate, keyed by the item id.
        stuck: item ids that always get 503 (they exhaust their retries).
    """

    def __init__(self, faults: FaultInjector | None = None, *, stuck: Collection[str] = ()) -> None:
        self.faults = faults or FaultInjector()
        self.stuck = frozenset(stuck)
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.received: list[Any] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:43121``."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FlakyService:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
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
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await reader.readline()
            if not request_line:
                return
            method, target, _ = request_line.decode("latin-1").split(" ", 2)
            headers = await _read_headers(reader)
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            status, extra, payload = await self._respond(method, target, body)
            self.requests += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            data = json.dumps(payload).encode()
            head = [
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
                "Content-Type: application/json",
                f"Content-Length: {len(data)}",
                "Connection: close",
                *(f"{k}: {v}" for k, v in extra.items()),
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away or sent garbage; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _respond(
        self, method: str, target: str, body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        path = urlsplit(target).path
        if method == "POST" and path == "/hooks":
            self.received.append(json.loads(body or b"null"))
            return 202, {}, {"accepted": True}
        prefix = "/items/"
        if method != "GET" or not path.startswith(prefix):
            return 404, {}, {"error": f"no route for {method} {path}"}
        item_id = path[len(prefix) :]
        if item_id in self.stuck:
            return 503, {"Retry-After": "1"}, {"error": "this item's shard is unavailable"}
        try:
            await self.faults.maybe_fail(item_id)
        except InjectedPermanent:
            return 422, {}, {"error": f"item {item_id} is malformed"}
        except InjectedOutage:
            return 503, {}, {"error": "service is down"}
        except InjectedRecoverable as exc:
            return 429, _retry_after(exc), {"error": "too many requests"}
        except InjectedFatal:
            return 401, {}, {"error": "credentials revoked"}
        except InjectedFault as exc:
            return 503, _retry_after(exc), {"error": "temporarily unavailable"}
        return 200, {}, {"id": item_id, "value": _value(item_id)}


def _retry_after(exc: InjectedFault) -> dict[str, str]:
    return {} if exc.retry_after is None else {"Retry-After": f"{exc.retry_after:g}"}


def _value(item_id: str) -> int:
    # Something deterministic to return: a checksum of the id.
    return sum(ord(c) * (i + 1) for i, c in enumerate(item_id)) % 1000
