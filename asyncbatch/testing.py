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

import asyncio
import contextlib
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from ._classify import ErrorKind, _as_kind
from ._context import _current
from ._errors import ConfigError, FatalError, PermanentError, RecoverableError, TransientError

if TYPE_CHECKING:  # provided lazily by __getattr__ below
    from ._demo_server import (
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

P = ParamSpec("P")
R = TypeVar("R")


# --------------------------------------------------------------- set_testing


@dataclass(frozen=True, slots=True)
class _TestingState:
    active: bool = False
    attempts: int | None = None


# One immutable value swapped as a whole, so a reader never sees half an update.
_state = _TestingState()


def testing_overrides() -> tuple[bool, int | None]:
    """What the executor reads once per run: ``(active, attempts cap or None)``.

    While ``active``, every backoff delay (``retry_after`` included) is zero;
    a non-None cap limits every kind's attempts to at most that many.
    """
    s = _state
    return s.active, s.attempts


# Its name starts with "test": keep pytest from collecting it where users import it.
testing_overrides.__test__ = False  # type: ignore[attr-defined]


def is_testing() -> bool:
    """True while `set_testing` is on."""
    return _state.active


class set_testing:  # lower case: used like a function, as stamina's is
    """Zero every backoff (and optionally cap attempts) for your own tests.

    Takes effect immediately and stays on until switched off; used as a
    context manager it restores the previous state on exit, even when
    nested.

    Args:
        on: switch testing mode on (True) or off (False).
        attempts: when given, every kind is retried at most this many
            attempts in total (1 = never retry). PERMANENT and FATAL are
            never retried anyway.

    Raises:
        ConfigError: ``attempts`` is not a positive int.
    """

    __slots__ = ("_previous",)

    def __init__(self, on: bool = True, *, attempts: int | None = None) -> None:
        global _state
        if attempts is not None and (
            isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1
        ):
            raise ConfigError(f"set_testing(attempts=...) must be a positive int, got {attempts!r}")
        self._previous = _state
        _state = _TestingState(active=bool(on), attempts=attempts if on else None)

    def __enter__(self) -> set_testing:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _state
        _state = self._previous

    def __repr__(self) -> str:
        s = _state
        return f"set_testing(on={s.active!r}, attempts={s.attempts!r})"


# ------------------------------------------------------------ FaultInjector


class InjectedFault(Exception):
    """Base of every failure a `FaultInjector` raises.

    Attributes:
        key: the key of the call that failed (None when the call had none).
        call: the 1-based number of the call for that key.
        retry_after: seconds the caller should wait, or None.
    """

    kind: ErrorKind = ErrorKind.RECOVERABLE

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        call: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.call = call
        self.retry_after = retry_after


class InjectedTransient(InjectedFault, TransientError):
    """An injected TRANSIENT failure (a blip: think 503)."""

    kind = ErrorKind.TRANSIENT


class InjectedRecoverable(InjectedFault, RecoverableError):
    """An injected RECOVERABLE failure (overload: think 429)."""

    kind = ErrorKind.RECOVERABLE


class InjectedPermanent(InjectedFault, PermanentError):
    """An injected PERMANENT failure (a bad item: think 422)."""

    kind = ErrorKind.PERMANENT


class InjectedFatal(InjectedFault, FatalError):
    """An injected FATAL failure (think revoked credentials)."""

    kind = ErrorKind.FATAL


class InjectedOutage(InjectedTransient):
    """The dependency is down: the call fell inside a configured outage window."""


_BY_KIND: dict[ErrorKind, type[InjectedFault]] = {
    ErrorKind.TRANSIENT: InjectedTransient,
    ErrorKind.RECOVERABLE: InjectedRecoverable,
    ErrorKind.PERMANENT: InjectedPermanent,
    ErrorKind.FATAL: InjectedFatal,
}

ExceptionFactory = type[BaseException] | Callable[[], BaseException]


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultStats:
    """What a `FaultInjector` has done so far (a snapshot).

    Attributes:
        calls: calls seen.
        passed: calls let through to the real code.
        injected: failures raised, by ``ErrorKind`` value, plus
            ``"outage"`` and ``"poison"`` and, for ``exceptions=``, the
            exception type's name.
        delayed: total injected latency in seconds.
    """

    calls: int = 0
    passed: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    delayed: float = 0.0

    @property
    def failures(self) -> int:
        """Every failure raised, whatever its kind."""
        return sum(self.injected.values())


class FaultInjector:
    """Seeded, reproducible faults for a dependency or a job.

    Each call draws from a random source seeded by ``(seed, key, n)`` where
    ``n`` counts the calls for that key: the same seed injects the same
    faults into the same calls whatever order concurrent calls happen in.
    In order, a call: fails PERMANENT if its key is poison; fails with
    `InjectedOutage` if it falls in an outage window; sleeps the injected
    latency; fails with one of ``rates``/``exceptions`` by their
    probabilities; else goes through.

    Args:
        seed: the seed; the same seed replays the same faults.
        rates: ``{ErrorKind: probability}`` of raising ``Injected<Kind>``.
        exceptions: ``{ExceptionType or factory(): probability}`` of raising
            your own exceptions instead.
        latency: ``(min, max)`` seconds of delay added to every call that is
            not rejected outright, or None.
        outages: ``[(start, end), ...]`` seconds relative to the first call
            (loop clock) during which every call fails with `InjectedOutage`.
        poison: keys (str) that always fail PERMANENT, or a predicate on the key.
        retry_after: seconds put on injected TRANSIENT/RECOVERABLE failures
            (and outages) as ``retry_after``, or None.

    Raises:
        ConfigError: probabilities outside [0, 1] or summing above 1, bad
            latency or outage windows.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        rates: Mapping[ErrorKind | str, float] | None = None,
        exceptions: Mapping[ExceptionFactory, float] | None = None,
        latency: tuple[float, float] | None = None,
        outages: Sequence[tuple[float, float]] = (),
        poison: Collection[str] | Callable[[str], bool] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.seed = seed
        table: list[tuple[float, str, Callable[[str | None, int], BaseException]]] = []
        total = 0.0
        for kind, p in (rates or {}).items():
            k = _as_kind(kind)
            total += _probability(p, f"rates[{k.value}]")
            table.append((total, k.value, functools.partial(self._kind_error, k)))
        for exc, p in (exceptions or {}).items():
            if not callable(exc):
                raise ConfigError(
                    f"exceptions keys must be exception types or factories, got {exc!r}"
                )
            total += _probability(p, f"exceptions[{exc!r}]")
            label = getattr(exc, "__name__", repr(exc))
            table.append((total, label, functools.partial(_make, exc)))
        if total > 1.0 + 1e-9:
            raise ConfigError(f"fault probabilities add up to {total:g}; they must not exceed 1")
        self._table = table
        if latency is not None:
            low, high = latency
            if not 0 <= low <= high:
                raise ConfigError(
                    f"latency must be (min, max) with 0 <= min <= max, got {latency!r}"
                )
        self.latency = latency
        for start, end in outages:
            if not 0 <= start < end:
                raise ConfigError(
                    "outage windows must be (start, end) with 0 <= start < end, "
                    f"got {(start, end)!r}"
                )
        self.outages = tuple(outages)
        if poison is None:
            self._poison: Callable[[str], bool] = lambda key: False
        elif callable(poison):
            self._poison = poison
        else:
            keys = frozenset(str(k) for k in poison)
            self._poison = keys.__contains__
        self.retry_after = retry_after
        self._t0: float | None = None
        self._per_key: dict[str | None, int] = {}
        self._calls = 0
        self._passed = 0
        self._injected: dict[str, int] = {}
        self._delayed = 0.0
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return (
            f"FaultInjector(seed={self.seed!r}, latency={self.latency!r}, "
            f"outages={list(self.outages)!r}, faults={[(p, n) for p, n, _ in self._table]!r})"
        )

    @property
    def stats(self) -> FaultStats:
        """A snapshot of what was injected so far."""
        return FaultStats(
            calls=self._calls,
            passed=self._passed,
            injected=dict(self._injected),
            delayed=self._delayed,
        )

    def in_outage(self) -> bool:
        """True when now (loop clock) falls inside an outage window."""
        if not self.outages:
            return False
        now = asyncio.get_running_loop().time()
        if self._t0 is None:
            self._t0 = now
        elapsed = now - self._t0
        return any(start <= elapsed < end for start, end in self.outages)

    async def maybe_fail(self, key: str | None = None) -> None:
        """Inject this call's fault, if it has one; return when it should go through.

        Args:
            key: what the call is about (a job key, an item id). Defaults to
                the current job's key when called inside a job.

        Raises:
            InjectedFault: or one of your ``exceptions=``, when the draw says so.
        """
        if key is None:
            ctx = _current.get(None)
            key = ctx.key if ctx is not None else None
        n = self._per_key.get(key, 0) + 1
        self._per_key[key] = n
        self._calls += 1
        if key is not None and self._poison(key):
            self._count("poison")
            raise InjectedPermanent(f"injected poison: key {key!r} always fails", key=key, call=n)
        if self.in_outage():
            self._count("outage")
            raise InjectedOutage(
                "injected outage: dependency unavailable",
                key=key,
                call=n,
                retry_after=self.retry_after,
            )
        # Seeding per (key, call) keeps faults reproducible under any interleaving;
        # calls without a key share one stream (reproducible when sequential).
        rng = random.Random(f"{self.seed}:{key}:{n}") if key is not None else self._rng
        if self.latency is not None:
            low, high = self.latency
            delay = rng.uniform(low, high)
            self._delayed += delay
            await asyncio.sleep(delay)
        if self._table:
            u = rng.random()
            for threshold, label, make in self._table:
                if u < threshold:
                    self._count(label)
                    raise make(key, n)
        self._passed += 1

    @contextlib.asynccontextmanager
    async def call(self, key: str | None = None) -> AsyncIterator[None]:
        """``async with faults.call(key):`` around a real call: faults happen before it."""
        await self.maybe_fail(key)
        yield

    def wrap(self, job: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """The job with faults injected before each call (keyed by the job key)."""

        @functools.wraps(job)
        async def faulty(*args: P.args, **kwargs: P.kwargs) -> R:
            await self.maybe_fail()
            return await job(*args, **kwargs)

        return faulty

    def _kind_error(self, kind: ErrorKind, key: str | None, n: int) -> BaseException:
        cls = _BY_KIND[kind]
        retry = self.retry_after if kind in (ErrorKind.TRANSIENT, ErrorKind.RECOVERABLE) else None
        where = f" (key {key!r}, call {n})" if key is not None else f" (call {n})"
        return cls(f"injected {kind.value} failure{where}", key=key, call=n, retry_after=retry)

    def _count(self, label: str) -> None:
        self._injected[label] = self._injected.get(label, 0) + 1


def _make(factory: ExceptionFactory, key: str | None, n: int) -> BaseException:
    exc: BaseException
    if isinstance(factory, type):
        exc = factory(f"injected {factory.__name__} (key {key!r}, call {n})")
    else:
        exc = factory()
    return exc


def _probability(p: float, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


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
        from . import _demo_server

        return getattr(_demo_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
