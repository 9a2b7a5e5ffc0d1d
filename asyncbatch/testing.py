"""Helpers for testing code that uses asyncbatch: fast retries and seeded faults.

``set_testing()`` makes every backoff zero (and can cap attempts) so your own
tests of batch code run in milliseconds, like ``stamina.set_testing``::

    import asyncbatch as ab
    from asyncbatch.testing import set_testing

    def test_my_batch():
        with set_testing(attempts=2):
            result = asyncio.run(ab.run_batch(job, items))

`FaultInjector` makes a dependency misbehave on purpose, reproducibly: the
same seed gives the same faults for the same keys, whatever the interleaving::

    faults = FaultInjector(seed=1, rates={ab.ErrorKind.TRANSIENT: 0.2}, poison={"7"})
    result = await ab.run_batch(faults.wrap(job), items)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._policy._testing_mode import is_testing, set_testing, testing_overrides
from ._testing import _faults
from ._testing._faults import (
    FaultInjector,
    FaultStats,
    InjectedFatal,
    InjectedFault,
    InjectedOutage,
    InjectedPermanent,
    InjectedRecoverable,
    InjectedTransient,
)

if TYPE_CHECKING:  # provided lazily by __getattr__ below
    from ._testing._service import (
        ClientError,
        FlakyService,
        Hit,
        HTTPStatusError,
        Response,
        ServerError,
        ServiceUnavailable,
        TooManyRequests,
        get_json,
        http_request,
    )

__all__ = [
    "ClientError",
    "FaultInjector",
    "FaultStats",
    "FlakyService",
    "HTTPStatusError",
    "Hit",
    "InjectedFatal",
    "InjectedFault",
    "InjectedOutage",
    "InjectedPermanent",
    "InjectedRecoverable",
    "InjectedTransient",
    "Response",
    "ServerError",
    "ServiceUnavailable",
    "TooManyRequests",
    "get_json",
    "http_request",
    "is_testing",
    "set_testing",
    "testing_overrides",
]

# The public home of these types: reports and pickles name them by it.
for _name in (*_faults.__all__, "set_testing"):
    globals()[_name].__module__ = __name__
del _name

# A real flaky HTTP service on 127.0.0.1 (aiohttp's server, driven by a
# FaultInjector) and thin aiohttp client helpers: a test double for code that
# calls HTTP APIs. Imported on first use so `import asyncbatch` stays light.
_HTTP_DOUBLES = frozenset(
    {
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
    }
)


def __getattr__(name: str) -> object:
    if name in _HTTP_DOUBLES:
        from ._testing import _service

        return getattr(_service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
