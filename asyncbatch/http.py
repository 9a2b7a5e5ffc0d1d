"""HTTP failures classified for httpx and aiohttp, and the server's ``Retry-After`` honoured.

The rules are **on by default**: every `ab.Classifier` (so every batch) tries
them right after the marker exceptions (``ab.TransientError`` and friends),
before the generic timeout/connection/``OSError`` rules. They recognise an
exception by the module its class comes from (``httpx``, ``aiohttp.*``), so
asyncbatch depends on neither library, imports neither, and pays nothing
when they are not used. Why on by default: an exception from these
libraries can only reach the classifier when the job uses them, the table
below is what nearly every API means, and without it a 404 was retried as
"unknown" and a 429's ``Retry-After`` ignored. Your own rules still come
first, and ``ab.Classifier(builtins=False)`` switches every built-in off.

Call `classifier` (or prepend `rules`) only to change the defaults: other
retryable statuses, a different ``Retry-After`` cap, or ``responses=True``
to treat a *returned* error response as a failure::

    classify = ab.http.classifier(max_retry_after=30, responses=True)
    result = await ab.run_batch(job, items, classify=classify)

=====================================================  ===========  =====================
failure                                                kind         delay
=====================================================  ===========  =====================
status 429, 503                                        RECOVERABLE  the server's, if sent
status 408, 425, 500, 502, 504                         TRANSIENT    the server's, if sent
any other status raised (4xx, 501, 505, ..., 3xx)      PERMANENT    no retry
connect error (refused, DNS, reset), pool timeout      TRANSIENT    backoff
connect/read/write timeout                             TRANSIENT    backoff
TLS or certificate error                               PERMANENT    no retry
protocol error (malformed HTTP, server disconnected,   RECOVERABLE  backoff
truncated body)
invalid URL, unsupported scheme, too many redirects,   PERMANENT    no retry
undecodable body
=====================================================  ===========  =====================

"The server's" delay is ``Retry-After`` (delay-seconds or an HTTP-date, RFC
9110 §10.2.3), else ``RateLimit-Reset``, else ``X-RateLimit-Reset`` (seconds,
or a Unix time when that large), capped at ``max_retry_after`` (120 s by
default). It is put on the exception as ``retry_after``, which the retry
policy honours as the least wait before the next attempt (and so counts in
``deadline=``); ``asyncbatch.testing.set_testing()`` zeroes it like every
delay.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from datetime import timedelta
from typing import Any

from ._errors import ConfigError, ErrorKind
from ._policy import _http
from ._policy._classify import Classifier, Rule
from ._policy._http import DEFAULT_MAX_RETRY_AFTER, RECOVERABLE_STATUSES, TRANSIENT_STATUSES

__all__ = [
    "DEFAULT_MAX_RETRY_AFTER",
    "RECOVERABLE_STATUSES",
    "TRANSIENT_STATUSES",
    "classifier",
    "kind_of_status",
    "retry_after",
    "rules",
]


def rules(
    *,
    transient: Collection[int] = TRANSIENT_STATUSES,
    recoverable: Collection[int] = RECOVERABLE_STATUSES,
    max_retry_after: float | timedelta = DEFAULT_MAX_RETRY_AFTER,
    responses: bool = False,
) -> tuple[Rule, ...]:
    """The HTTP rules with your settings, to put before your own in an `ab.Classifier`.

    Args:
        transient: statuses retried soon (TRANSIENT).
        recoverable: statuses retried with backoff (RECOVERABLE). Every other
            status that is raised is PERMANENT.
        max_retry_after: the longest server-requested delay honoured; a
            longer ``Retry-After`` is cut to it.
        responses: also classify *returned* ``httpx.Response`` /
            ``aiohttp.ClientResponse`` objects: a status >= 400 turns the
            success into a failure (an `ab.RejectedResult`) of its kind,
            delayed by the server's ``Retry-After``.

    Returns:
        Rules for ``ab.Classifier(rules=...)``.

    Raises:
        ConfigError: a status outside 100-599, one listed as both, or a
            negative ``max_retry_after``.
    """
    return _rules(_statuses(transient, recoverable, max_retry_after), responses=responses)


def _rules(statuses: _http.Statuses, *, responses: bool) -> tuple[Rule, ...]:
    out = [
        Rule(Exception, kind=ErrorKind(k), when=_http.matcher(k, statuses))
        for k in (_http.RECOVERABLE, _http.TRANSIENT, _http.PERMANENT)
    ]
    if responses:
        out += [
            Rule(result=_ResponseRule(k, statuses), kind=ErrorKind(k))
            for k in (_http.RECOVERABLE, _http.TRANSIENT, _http.PERMANENT)
        ]
    return tuple(out)


def classifier(
    *,
    rules: Iterable[Rule] = (),
    transient: Collection[int] = TRANSIENT_STATUSES,
    recoverable: Collection[int] = RECOVERABLE_STATUSES,
    max_retry_after: float | timedelta = DEFAULT_MAX_RETRY_AFTER,
    responses: bool = False,
    default: ErrorKind | str = ErrorKind.RECOVERABLE,
) -> Classifier:
    """An `ab.Classifier` with the HTTP rules configured your way.

    Your ``rules`` come first, then the HTTP rules, then the built-ins.

    Args:
        rules: your own rules, tried first.
        transient: statuses retried soon (TRANSIENT).
        recoverable: statuses retried with backoff (RECOVERABLE).
        max_retry_after: the longest server-requested delay honoured.
        responses: also classify returned error responses (see `rules`).
        default: the kind of anything no rule matches.

    Returns:
        The classifier, for ``classify=``.

    Raises:
        ConfigError: bad statuses or ``max_retry_after`` (see `rules`).
    """
    statuses = _statuses(transient, recoverable, max_retry_after)
    return Classifier([*rules, *_rules(statuses, responses=responses)], default=default)


def retry_after(
    error: object,
    *,
    max_retry_after: float | timedelta = DEFAULT_MAX_RETRY_AFTER,
    now: float | None = None,
) -> float | None:
    """The delay the server asked for, in seconds, or None when it named none.

    Reads ``Retry-After`` (delay-seconds or HTTP-date), else
    ``RateLimit-Reset``, else ``X-RateLimit-Reset``, from an
    ``httpx.HTTPStatusError``, an ``aiohttp.ClientResponseError``, a response
    of either library, or a headers mapping. Use it with other retry tools
    too, for example as stamina's backoff hook.

    Args:
        error: the exception, response or headers.
        max_retry_after: longer delays are cut to this.
        now: the current time (epoch seconds) for HTTP-dates; default the clock.

    Returns:
        Seconds (0 for a date in the past), or None.
    """
    cap = _http.seconds(max_retry_after)
    headers = _http.headers_of(error) if _http.client_of(error) else error
    if headers is None or isinstance(headers, BaseException):
        return None
    return _http.server_delay(headers, cap=cap, now=time.time() if now is None else now)


def kind_of_status(status: int) -> ErrorKind:
    """The kind the default table gives a failed request with ``status``."""
    return ErrorKind(_http.DEFAULT_STATUSES.kind(status))


class _ResponseRule:
    """A result predicate: the returned response failed with a status of this kind."""

    __slots__ = ("kind", "statuses")

    def __init__(self, kind: str, statuses: _http.Statuses) -> None:
        self.kind = kind
        self.statuses = statuses

    def __call__(self, value: Any) -> bool:
        if _http.response_kind(value, self.statuses) != self.kind:
            return False
        status = _http.status_of(value)
        if status is not None and self.statuses.retryable(status):
            delay = _http.server_delay(_http.headers_of(value), cap=self.statuses.max_retry_after)
            if delay is not None:
                # Read back by ab.RejectedResult, so the retry waits as the server asked.
                value.retry_after = delay
        return True

    def __repr__(self) -> str:
        return f"http_response_{self.kind}"


def _statuses(
    transient: Collection[int], recoverable: Collection[int], cap: float | timedelta
) -> _http.Statuses:
    t, r = frozenset(transient), frozenset(recoverable)
    for status in t | r:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ConfigError(f"HTTP statuses must be ints in 100-599, got {status!r}")
    if t & r:
        raise ConfigError(
            f"statuses {sorted(t & r)} are listed as both transient and recoverable; "
            "HINT: name each status once"
        )
    seconds = _http.seconds(cap)
    if not seconds >= 0:
        raise ConfigError(f"max_retry_after must be >= 0 seconds, got {cap!r}")
    return _http.Statuses(transient=t, recoverable=r, max_retry_after=seconds)
