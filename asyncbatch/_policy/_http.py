"""How httpx and aiohttp failures map onto error kinds, without importing either.

This module imports nothing from asyncbatch (the classifier's built-in rules
use it, so it sits beside `_policy._classify`) and never imports httpx or
aiohttp: an exception is recognised by the module of a class in its MRO
(``httpx``, ``aiohttp.*``), and only then are that library's classes looked
up in ``sys.modules`` (already imported, since it raised the exception).

Kinds are returned as `ErrorKind` values (plain strings) for the same reason.
The table (`Statuses` holds the retryable part)::

    status 408, 425, 500, 502, 504         transient    (Retry-After honoured if sent)
    status 429, 503                        recoverable  (Retry-After / RateLimit-Reset)
    any other status >= 300 raised on      permanent
    connect error, pool/connect timeout    transient
    read/write timeout, dropped connection transient
    TLS / certificate error                permanent
    protocol error (bad HTTP, disconnect)  recoverable
    invalid URL, unsupported scheme,
    too many redirects, decoding error     permanent
"""

from __future__ import annotations

import math
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "DEFAULT_MAX_RETRY_AFTER",
    "DEFAULT_STATUSES",
    "RECOVERABLE_STATUSES",
    "TRANSIENT_STATUSES",
    "Statuses",
    "attach_delay",
    "client_of",
    "exception_kind",
    "headers_of",
    "http_date",
    "matcher",
    "method_of",
    "parse_retry_after",
    "response_kind",
    "seconds",
    "server_delay",
    "status_of",
]

TRANSIENT = "transient"
RECOVERABLE = "recoverable"
PERMANENT = "permanent"

TRANSIENT_STATUSES = frozenset({408, 425, 500, 502, 504})
RECOVERABLE_STATUSES = frozenset({429, 503})
DEFAULT_MAX_RETRY_AFTER = 120.0
# An X-RateLimit-Reset this large is a Unix time (GitHub's form), not delta-seconds.
_EPOCH_THRESHOLD = 1_000_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Statuses:
    """Which statuses are retried, and how long a server may ask us to wait.

    Attributes:
        transient: statuses retried soon (TRANSIENT).
        recoverable: statuses retried with backoff (RECOVERABLE).
        max_retry_after: the longest server-requested delay honoured, in
            seconds; longer ones are cut to it.
    """

    transient: frozenset[int] = TRANSIENT_STATUSES
    recoverable: frozenset[int] = RECOVERABLE_STATUSES
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER

    def kind(self, status: int) -> str:
        """The kind of a failed request that got ``status``."""
        if status in self.recoverable:
            return RECOVERABLE
        if status in self.transient:
            return TRANSIENT
        return PERMANENT

    def retryable(self, status: int) -> bool:
        """True when ``status`` is retried."""
        return status in self.recoverable or status in self.transient


DEFAULT_STATUSES = Statuses()


# ------------------------------------------------------------------ headers


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds a ``Retry-After`` value asks for, or None when it is not one.

    Both forms of RFC 9110 §10.2.3: delay-seconds (``"120"``; fractions such
    as ``"0.5"`` are accepted too) and an HTTP-date (IMF-fixdate, or the
    obsolete RFC 850 and asctime forms), compared with ``now`` (epoch
    seconds; the local clock, as the RFC's resolution of one second would
    otherwise be lost to the ``Date`` header's). A date in the past is 0.
    """
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    from email.utils import parsedate_to_datetime  # only for HTTP-dates: keeps the import light

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # asctime carries no zone; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _parse_reset(value: str, now: float) -> float | None:
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    if seconds >= _EPOCH_THRESHOLD:
        return max(0.0, seconds - now)
    return seconds


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    try:
        value = headers.get(name)
    except Exception:  # not a mapping after all
        return None
    if value is None and isinstance(headers, Mapping):
        value = headers.get(name.lower())
    return value if isinstance(value, str) else None


def server_delay(headers: Any, *, cap: float, now: float | None = None) -> float | None:
    """The delay the server asked for, capped at ``cap`` seconds, or None.

    ``Retry-After`` first, then ``RateLimit-Reset`` (delta-seconds, IETF
    draft), then ``X-RateLimit-Reset`` (delta-seconds or, when it is that
    large, a Unix time).
    """
    t = time.time() if now is None else now
    delay: float | None = None
    raw = _header(headers, "Retry-After")
    if raw is not None:
        delay = parse_retry_after(raw, t)
    if delay is None:
        for name in ("RateLimit-Reset", "X-RateLimit-Reset"):
            raw = _header(headers, name)
            if raw is not None:
                delay = _parse_reset(raw, t)
                if delay is not None:
                    break
    return None if delay is None else min(delay, cap)


# ----------------------------------------------------------- recognising


def client_of(obj: object) -> str | None:
    """``"httpx"`` or ``"aiohttp"`` when ``obj``'s class comes from that library."""
    for cls in type(obj).__mro__:
        module = cls.__module__
        if module == "httpx" or module.startswith("httpx."):
            return "httpx"
        if module.startswith("aiohttp."):
            return "aiohttp"
    return None


def _response_of(obj: object) -> Any:
    """The response an exception carries (httpx), or the object when it is one."""
    client = client_of(obj)
    if client == "httpx":
        httpx = sys.modules["httpx"]
        if isinstance(obj, httpx.HTTPStatusError):
            return obj.response
        if isinstance(obj, httpx.Response):
            return obj
    return obj if client == "aiohttp" else None


def status_of(obj: object) -> int | None:
    """The HTTP status of an httpx/aiohttp status error or response, else None."""
    client = client_of(obj)
    if client == "httpx":
        response = _response_of(obj)
        return None if response is None else int(response.status_code)
    if client == "aiohttp":
        aiohttp = sys.modules["aiohttp"]
        if isinstance(obj, aiohttp.ClientResponseError | aiohttp.ClientResponse):
            return int(obj.status)
    return None


def headers_of(obj: object) -> Any:
    """The response headers of an httpx/aiohttp status error or response, else None."""
    client = client_of(obj)
    if client == "httpx":
        response = _response_of(obj)
        return None if response is None else response.headers
    if client == "aiohttp":
        aiohttp = sys.modules["aiohttp"]
        if isinstance(obj, aiohttp.ClientResponseError | aiohttp.ClientResponse):
            return obj.headers
    return None


def method_of(obj: object) -> str | None:
    """The request method behind an httpx/aiohttp error or response, else None."""
    client = client_of(obj)
    try:
        if client == "httpx":
            return str(obj.request.method)  # type: ignore[attr-defined]
        if client == "aiohttp":
            info = getattr(obj, "request_info", None)
            if info is not None:
                return str(info.method)
            method = getattr(obj, "method", None)
            return None if method is None else str(method)
    except (AttributeError, RuntimeError):  # httpx: "The request instance has not been set"
        return None
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen) and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


_TLS_DROPPED = (ssl.SSLEOFError, ssl.SSLZeroReturnError)


def _tls_failure(exc: BaseException) -> bool:
    """A certificate or handshake failure somewhere in the chain (not a dropped handshake)."""
    for e in _chain(exc):
        if isinstance(e, _TLS_DROPPED):
            return False
        if isinstance(e, ssl.SSLError | ssl.CertificateError):
            return True
    return False


# -------------------------------------------------------------- classifying


def exception_kind(exc: BaseException, statuses: Statuses = DEFAULT_STATUSES) -> str | None:
    """The kind of an httpx/aiohttp exception, or None when it is not one of theirs."""
    client = client_of(exc)
    if client == "httpx":
        return _httpx_kind(exc, statuses)
    if client == "aiohttp":
        return _aiohttp_kind(exc, statuses)
    return None


def response_kind(response: object, statuses: Statuses = DEFAULT_STATUSES) -> str | None:
    """The kind of failure a returned httpx/aiohttp response stands for, or None (a success)."""
    client = client_of(response)
    if client is None or isinstance(response, BaseException):
        return None
    status = status_of(response)
    if status is None or status < 400:
        return None
    return statuses.kind(status)


def _httpx_kind(exc: BaseException, statuses: Statuses) -> str | None:
    httpx = sys.modules["httpx"]
    if isinstance(exc, httpx.HTTPStatusError):
        return statuses.kind(exc.response.status_code)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and _tls_failure(exc):
        return PERMANENT
    if isinstance(exc, httpx.TimeoutException | httpx.ProxyError):
        return TRANSIENT
    if isinstance(exc, httpx.ProtocolError):
        return RECOVERABLE
    if isinstance(exc, httpx.UnsupportedProtocol):
        return PERMANENT
    if isinstance(exc, httpx.NetworkError):
        return TRANSIENT
    if isinstance(
        exc,
        httpx.DecodingError
        | httpx.TooManyRedirects
        | httpx.InvalidURL
        | httpx.StreamError
        | httpx.CookieConflict,
    ):
        return PERMANENT
    return None


def _aiohttp_kind(exc: BaseException, statuses: Statuses) -> str | None:
    aiohttp = sys.modules["aiohttp"]
    http_exceptions = sys.modules.get("aiohttp.http_exceptions")
    protocol: tuple[type[BaseException], ...] = (
        (http_exceptions.HttpProcessingError,) if http_exceptions is not None else ()
    )
    if isinstance(exc, aiohttp.ClientResponseError):
        if protocol and any(isinstance(e, protocol) for e in _chain(exc)[1:]):
            return RECOVERABLE  # the response could not be parsed: wrapped as a 400
        if isinstance(exc, aiohttp.TooManyRedirects):
            return PERMANENT
        if isinstance(exc, aiohttp.ContentTypeError) and exc.status < 400:
            return PERMANENT  # a 2xx that is not JSON: asking again gives the same body
        return statuses.kind(exc.status)
    if isinstance(exc, aiohttp.ClientSSLError):
        # aiohttp wraps every ssl.SSLError: a handshake cut short is the network's doing.
        dropped = any(isinstance(e, _TLS_DROPPED) for e in _chain(exc))
        return TRANSIENT if dropped else PERMANENT
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return PERMANENT
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return TRANSIENT
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return RECOVERABLE  # what httpx calls a RemoteProtocolError
    if protocol and isinstance(exc, protocol):
        return RECOVERABLE
    if isinstance(exc, aiohttp.ClientConnectorError) and _tls_failure(exc):
        return PERMANENT
    if isinstance(exc, aiohttp.InvalidURL):
        return PERMANENT
    if isinstance(exc, aiohttp.ClientConnectionError):
        return TRANSIENT  # refused, reset, DNS, and ClientOSError in general
    return None


def attach_delay(exc: BaseException, statuses: Statuses) -> None:
    """Put the server's delay on a retryable status error as ``retry_after``.

    The engine honours a numeric ``retry_after`` on the exception as the least
    wait before the next attempt. One already set (by the caller) is kept.
    """
    current = getattr(exc, "retry_after", None)
    if isinstance(current, int | float) and not isinstance(current, bool):
        return
    status = status_of(exc)
    if status is None or not statuses.retryable(status):
        return
    delay = server_delay(headers_of(exc), cap=statuses.max_retry_after)
    if delay is not None:
        try:
            exc.retry_after = delay  # type: ignore[attr-defined]
        except AttributeError:  # a class with __slots__: the policy's backoff applies
            pass


def matcher(kind: str, statuses: Statuses = DEFAULT_STATUSES) -> Callable[[BaseException], bool]:
    """A rule predicate: the exception is an HTTP failure of ``kind`` (its delay attached)."""

    def when(exc: BaseException) -> bool:
        if exception_kind(exc, statuses) != kind:
            return False
        if kind != PERMANENT:
            attach_delay(exc, statuses)
        return True

    when.__qualname__ = f"http_{kind}"
    return when


def seconds(value: float | timedelta) -> float:
    """A duration option as seconds."""
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def http_date(when: float) -> str:
    """``when`` (epoch seconds) as an IMF-fixdate, for servers and tests."""
    t = datetime.fromtimestamp(when, UTC)
    # Names spelled out: strftime's %a and %b follow the locale, HTTP's do not.
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[t.weekday()]
    month = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")[
        t.month - 1
    ]
    return f"{day}, {t.day:02d} {month} {t.year} {t:%H:%M:%S} GMT"
