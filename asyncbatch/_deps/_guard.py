"""Per-dependency protection: bulkheads, rate limits and circuit breakers.

A run configures dependencies by name (``limits=``, ``rates=``, ``breakers=``)
and the executor builds one `Dependencies` for it. Jobs pass a dependency's
guards with ``async with ab.guard("payments"):`` around the calls inside, or
the run declares ``uses=["payments"]`` and the executor guards every whole
attempt with `Dependencies.guard_all`.

Inside a guard, in this order:

1. the breaker: an open circuit rejects at once with `CircuitOpen`, before
   waiting on anything;
2. the bulkhead (``anyio.CapacityLimiter``): at most ``limits[name]`` calls
   inside at once;
3. the rate limit (``aiolimiter.AsyncLimiter``): ``Rate(n, per)``;
4. the breaker admits the call (it may have opened while we waited, and
   half-open admits only its probes);
5. the call; its outcome is recorded on the breaker and in the statistics.

The executor finds the run's `Dependencies` for `guard` through a context
variable: it calls ``token = use_dependencies(deps)`` before starting the
workers (tasks inherit it) and ``reset_dependencies(token)`` after.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal

import anyio

from asyncbatch._context import _current
from asyncbatch._errors import CircuitOpen, ConfigError, ErrorKind
from asyncbatch._observe._events import Event
from asyncbatch._policy._retry import seconds

from ._breaker import Breaker, Circuit

__all__ = [
    "Dependencies",
    "DependencyStats",
    "Rate",
    "guard",
    "reset_dependencies",
    "use_dependencies",
]

_CLOCK_TICK = time.get_clock_info("monotonic").resolution  # what asyncio uses

# Failures of these kinds say the dependency is in trouble; PERMANENT says the item is.
_COUNTED = frozenset({ErrorKind.TRANSIENT, ErrorKind.RECOVERABLE, ErrorKind.FATAL})

# Set on an exception by the innermost guard it leaves, so that outer guards
# neither re-attribute nor re-classify it, and count it only when they are
# peers of that guard (the dependencies of one ``uses=``).
_ORIGIN = "_asyncbatch_origin"


class _Origin:
    """Where a failure came from: the guard(s) it left first, and whether it counts."""

    __slots__ = ("counts", "names")

    def __init__(self, names: frozenset[str], counts: bool) -> None:
        self.names = names
        self.counts = counts


@dataclass(frozen=True, slots=True, init=False)
class Rate:
    """A rate limit: at most ``n`` calls per ``per`` seconds (``rates={"api": ab.Rate(10)}``).

    A leaky bucket (aiolimiter): up to ``n`` calls may go at once after a
    quiet spell, then they are spaced ``per / n`` seconds apart. Over any
    window of ``t`` seconds at most ``n + n * t / per`` calls start.

    Args:
        n: calls per period (>= 1).
        per: the period in seconds (or a ``timedelta``), default 1.

    Raises:
        ConfigError: ``n`` < 1 or ``per`` not a positive duration.
    """

    n: float
    per: float

    def __init__(self, n: float, per: float | timedelta = 1.0) -> None:
        if isinstance(n, bool) or not isinstance(n, int | float) or not n >= 1 or math.isinf(n):
            raise ConfigError(
                f"Rate n must be a number >= 1 (calls per period), got {n!r}; "
                "HINT: for one call every 2 s write Rate(1, per=2)"
            )
        period = seconds(per, "Rate per")
        if not period or math.isinf(period):
            raise ConfigError(f"Rate per must be a positive number of seconds, got {per!r}")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "per", period)

    def __repr__(self) -> str:
        return f"Rate({self.n:g}, per={self.per:g})"


@dataclass(frozen=True, slots=True, kw_only=True)
class DependencyStats:
    """What one dependency saw during a run (a snapshot).

    Attributes:
        name: the dependency.
        state: its circuit: ``"closed"``, ``"open"`` or ``"half_open"``
            (``"closed"`` when it has no breaker).
        calls: calls admitted through its guard.
        successes: calls that returned normally.
        failures: calls that failed in a way that counts against the
            dependency (TRANSIENT, RECOVERABLE or FATAL); ``calls`` minus
            ``successes`` minus ``failures`` were neutral (PERMANENT,
            cancelled, failed in a nested guard) or are still running.
        rejections: calls its breaker rejected with `CircuitOpen`.
        trips: how often its circuit opened.
        time_open: seconds its circuit spent open or half-open.
        max_in_flight: most calls inside its guard at once.
        limit: its bulkhead size, or None.
        rate: its `Rate`, or None.
    """

    name: str
    state: Literal["closed", "open", "half_open"]
    calls: int
    successes: int
    failures: int
    rejections: int
    trips: int
    time_open: float
    max_in_flight: int
    limit: int | None
    rate: Rate | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``rate`` as ``{"n": ..., "per": ...}``)."""
        return {
            "name": self.name,
            "state": self.state,
            "calls": self.calls,
            "successes": self.successes,
            "failures": self.failures,
            "rejections": self.rejections,
            "trips": self.trips,
            "time_open": self.time_open,
            "max_in_flight": self.max_in_flight,
            "limit": self.limit,
            "rate": None if self.rate is None else {"n": self.rate.n, "per": self.rate.per},
        }


class _Dependency:
    """One dependency's guards and counters within a run."""

    __slots__ = (
        "calls",
        "circuit",
        "failures",
        "in_flight",
        "limit",
        "limiter",
        "max_in_flight",
        "name",
        "rate",
        "rate_cost",
        "rate_limiter",
        "rejections",
        "successes",
    )

    def __init__(
        self, name: str, limit: int | None, rate: Rate | None, circuit: Circuit | None
    ) -> None:
        self.name = name
        self.limit = limit
        self.rate = rate
        self.circuit = circuit
        self.limiter = anyio.CapacityLimiter(limit) if limit is not None else None
        self.rate_limiter = _limiter(rate) if rate is not None else None
        self.rate_cost = _rate_cost(rate) if rate is not None else 1.0
        self.calls = 0
        self.successes = 0
        self.failures = 0
        self.rejections = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def stats(self) -> DependencyStats:
        circuit = self.circuit
        return DependencyStats(
            name=self.name,
            state=circuit.state if circuit is not None else "closed",
            calls=self.calls,
            successes=self.successes,
            failures=self.failures,
            rejections=self.rejections,
            trips=circuit.trips if circuit is not None else 0,
            time_open=circuit.time_open() if circuit is not None else 0.0,
            max_in_flight=self.max_in_flight,
            limit=self.limit,
            rate=self.rate,
        )


def _rate_cost(rate: Rate) -> float:
    """Bucket capacity one call takes: 1 token minus what the loop clock cannot resolve.

    asyncio runs a timer up to one clock tick early. aiolimiter then finds a
    float-sized shortfall, re-arms a timer for "now" and, on a virtual clock
    (looptime) that never ticks by itself, spins forever. Charging a call
    ``rate x tick`` less absorbs that; the rate moves by at most 0.1 %.
    """
    per_second = rate.n / rate.per
    return 1.0 - min(1e-3, 1e-9 + 2 * _CLOCK_TICK * per_second)


def _check_names(option: str, mapping: object) -> Mapping[str, Any]:
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{option}= must be a dict of dependency name -> value, got {mapping!r}")
    for name in mapping:
        if not isinstance(name, str):
            raise ConfigError(f"{option}= keys must be dependency names (str), got {name!r}")
    return mapping


class Dependencies:
    """The guards of every dependency of one run (built by the executor).

    Args:
        run_id: the run's id (for events).
        limits: dependency → max concurrent calls (bulkheads).
        rates: dependency → `Rate`.
        breakers: dependency → `Breaker`.
        classify: the run's classifier, ``exc -> ErrorKind``; decides which
            failures count against a breaker.
        emit: receives breaker events; must not block.

    Raises:
        ConfigError: a name is not a str, a limit not a positive int, a rate
            not a `Rate` or a breaker not a `Breaker`.
    """

    def __init__(
        self,
        *,
        run_id: str,
        limits: Mapping[str, int] | None,
        rates: Mapping[str, Rate] | None,
        breakers: Mapping[str, Breaker] | None,
        classify: Callable[[BaseException], Any],
        emit: Callable[[Event], None],
    ) -> None:
        limits = _check_names("limits", limits)
        rates = _check_names("rates", rates)
        breakers = _check_names("breakers", breakers)
        for name, n in limits.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"limits[{name!r}] must be a positive int, got {n!r}")
        for name, rate in rates.items():
            if not isinstance(rate, Rate):
                raise ConfigError(
                    f"rates[{name!r}] must be an ab.Rate, got {rate!r}; HINT: ab.Rate(10, per=1)"
                )
        for name, breaker in breakers.items():
            if not isinstance(breaker, Breaker):
                raise ConfigError(
                    f"breakers[{name!r}] must be an ab.Breaker, got {breaker!r}; "
                    "HINT: ab.Breaker(fail_max=5, reset_timeout=30)"
                )
        self.run_id = run_id
        self._classify = classify
        self._emit = emit
        self._breakers: dict[str, Breaker] = dict(breakers)
        self._configured = bool(limits or rates or breakers)
        self._deps: dict[str, _Dependency] = {}
        for name in sorted({*limits, *rates, *breakers}):
            policy = breakers.get(name)
            circuit = (
                Circuit(policy, name, run_id=run_id, emit=emit) if policy is not None else None
            )
            self._deps[name] = _Dependency(name, limits.get(name), rates.get(name), circuit)
        self._orders: dict[tuple[str, ...], list[_Dependency]] = {}

    def __bool__(self) -> bool:
        return self._configured

    def __repr__(self) -> str:
        return f"<Dependencies run={self.run_id!r} {sorted(self._deps)}>"

    def breaker(self, name: str) -> Breaker | None:
        """The `Breaker` policy configured for ``name`` (None without one)."""
        return self._breakers.get(name)

    def circuit(self, name: str) -> Circuit | None:
        """The live circuit of ``name`` in this run (None without a breaker)."""
        dep = self._deps.get(name)
        return dep.circuit if dep is not None else None

    def stats(self) -> dict[str, DependencyStats]:
        """A snapshot per dependency seen or configured, by name."""
        return {name: dep.stats() for name, dep in sorted(self._deps.items())}

    def guard(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The guard of one dependency (what `ab.guard` returns inside this run)."""
        return _Guard(self, self._dependency(name))

    @contextlib.asynccontextmanager
    async def guard_all(self, names: Iterable[str]) -> AsyncIterator[None]:
        """Enter the guards of several dependencies (the executor's ``uses=``).

        Every breaker is checked before any bulkhead is waited on; bulkheads
        are then taken in name order, so two jobs using the same
        dependencies cannot deadlock on each other's slots.

        Raises:
            CircuitOpen: one of the circuits rejected the call.
        """
        key = names if isinstance(names, tuple) else tuple(names)
        deps = self._orders.get(key)
        if deps is None:
            deps = self._orders[key] = [self._dependency(n) for n in sorted(set(key))]
        for dep in deps:
            circuit = dep.circuit
            if circuit is not None:
                retry_in = circuit.retry_in()
                if retry_in is not None:
                    raise _rejected(dep, CircuitOpen(dep.name, retry_in))
        peers = frozenset(dep.name for dep in deps)
        label = key[0] if key else None
        async with contextlib.AsyncExitStack() as stack:
            for dep in deps:
                await stack.enter_async_context(_Guard(self, dep, peers, label))
            yield

    def _dependency(self, name: str) -> _Dependency:
        dep = self._deps.get(name)
        if dep is None:
            if not isinstance(name, str):
                raise ConfigError(f"a dependency name must be a str, got {name!r}")
            # Not configured: no guards, but the calls still show up in the statistics.
            dep = self._deps[name] = _Dependency(name, None, None, None)
        return dep

    def _counts(self, exc: BaseException) -> bool:
        """Does this failure count against the dependency? (see `Breaker`)."""
        try:
            kind = self._classify(exc)
            return ErrorKind(kind) in _COUNTED
        except Exception:
            # A classifier rule that blows up must not replace the job's own error.
            return True


def _rejected(dep: _Dependency, exc: CircuitOpen) -> CircuitOpen:
    dep.rejections += 1
    _attribute(exc, dep.name)
    _tag(exc, _Origin(frozenset((dep.name,)), counts=False))
    return exc


def _attribute(exc: BaseException, name: str) -> None:
    """Tell the running job (if any) which dependency ``exc`` came from."""
    ctx = _current.get(None)
    if ctx is not None:
        ctx.dependency = name


def _tag(exc: BaseException, origin: _Origin) -> None:
    try:
        setattr(exc, _ORIGIN, origin)
    except Exception:  # an exception class that forbids attributes: outer guards count it too
        pass


# Dependencies whose guard the current task is inside: a guard of one of them
# nested in another (``uses=["api"]`` plus ``ab.guard("api")`` in the job)
# passes through instead of waiting for a second bulkhead slot held by itself.
_held: ContextVar[frozenset[str]] = ContextVar("asyncbatch_guards_held", default=frozenset())


class _Guard:
    """``async with`` one dependency's breaker, bulkhead and rate limit."""

    __slots__ = ("_borrower", "_dep", "_deps", "_held", "_label", "_peers", "_ticket")

    def __init__(
        self,
        deps: Dependencies,
        dep: _Dependency,
        peers: frozenset[str] | None = None,
        label: str | None = None,
    ) -> None:
        self._deps = deps
        self._dep = dep
        self._peers = peers if peers is not None else frozenset((dep.name,))
        self._label = label if label is not None else dep.name
        self._borrower: object | None = None
        self._ticket: tuple[int, bool] | None = None
        self._held: Token[frozenset[str]] | None = None

    async def __aenter__(self) -> None:
        dep = self._dep
        held = _held.get()
        if dep.name in held:
            return
        circuit = dep.circuit
        if circuit is not None:
            retry_in = circuit.retry_in()
            if retry_in is not None:
                raise _rejected(dep, CircuitOpen(dep.name, retry_in))
        limiter = dep.limiter
        if limiter is not None:
            # A fresh borrower per entry: anyio ties tokens to a task otherwise, and a
            # task may guard the same dependency from two places at once.
            borrower = object()
            try:
                limiter.acquire_on_behalf_of_nowait(borrower)  # no loop round trip when free
            except anyio.WouldBlock:
                await limiter.acquire_on_behalf_of(borrower)
            self._borrower = borrower
        try:
            if dep.rate_limiter is not None:
                await dep.rate_limiter.acquire(dep.rate_cost)
            if circuit is not None:
                try:
                    self._ticket = circuit.admit()
                except CircuitOpen as exc:
                    raise _rejected(dep, exc) from None
        except BaseException:
            self._release()
            raise
        self._held = _held.set(held | {dep.name})
        dep.calls += 1
        dep.in_flight += 1
        if dep.in_flight > dep.max_in_flight:
            dep.max_in_flight = dep.in_flight

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._held is None:
            return False  # passed through: the outer guard of this dependency records
        _held.reset(self._held)
        self._held = None
        dep = self._dep
        dep.in_flight -= 1
        self._release()
        ticket, self._ticket = self._ticket, None
        if exc is None:
            dep.successes += 1
            if ticket is not None and dep.circuit is not None:
                dep.circuit.record(ticket, None, counts=False)
            return False
        counts = False
        if isinstance(exc, Exception):
            origin = getattr(exc, _ORIGIN, None)
            if origin is None:
                _attribute(exc, self._label)  # before classifying: rules may read it
                counts = self._deps._counts(exc)
                _tag(exc, _Origin(self._peers, counts))
            elif dep.name in origin.names:
                counts = origin.counts  # a peer in the same uses= classified it
        if counts:
            dep.failures += 1
        if ticket is not None and dep.circuit is not None:
            dep.circuit.record(ticket, exc, counts=counts)
        return False

    def _release(self) -> None:
        borrower, self._borrower = self._borrower, None
        if borrower is not None and self._dep.limiter is not None:
            self._dep.limiter.release_on_behalf_of(borrower)


class _Unguarded:
    """A guard in a job whose run configured no dependencies: only attributes errors."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if isinstance(exc, Exception) and getattr(exc, _ORIGIN, None) is None:
            _attribute(exc, self._name)
            _tag(exc, _Origin(frozenset((self._name,)), counts=False))
        return False


_dependencies: ContextVar[Dependencies] = ContextVar("asyncbatch_dependencies")


def use_dependencies(deps: Dependencies) -> Token[Dependencies]:
    """Make ``deps`` the dependencies `guard` finds in this context (and tasks started from it).

    Returns:
        The token to pass to `reset_dependencies` when the run ends.
    """
    return _dependencies.set(deps)


def reset_dependencies(token: Token[Dependencies]) -> None:
    """Undo `use_dependencies`."""
    _dependencies.reset(token)


def guard(name: str) -> contextlib.AbstractAsyncContextManager[None]:
    """Guard the calls to a dependency: ``async with ab.guard("payments"): ...``.

    Inside a batch run, the block passes the dependency's circuit breaker,
    bulkhead (``limits=``) and rate limit (``rates=``), in that order, and
    its outcome is recorded on the breaker. A name the run did not configure
    is not limited, but its calls still appear in the run's statistics. An
    exception leaving the block sets ``current_job().dependency`` to
    ``name`` (the innermost guard wins), so classifier rules can use it.
    A guard of a dependency the task is already inside (the job's
    ``uses=``, an enclosing guard, or child tasks started within one) passes
    straight through: the outer guard holds the slot and records the call.

    Args:
        name: the dependency's name, as used in ``limits=``/``rates=``/``breakers=``.

    Raises:
        CircuitOpen: (on entering) the dependency's circuit is open, or
            half-open with every probe busy. The run handles it per the
            breaker's ``on_open``: by default the job is parked until a
            probe may go, without spending an attempt.
        RuntimeError: used outside a batch run.
    """
    if not isinstance(name, str):
        raise ConfigError(f"ab.guard() takes a dependency name (str), got {name!r}")
    deps = _dependencies.get(None)
    if deps is not None:
        return _Guard(deps, deps._dependency(name))
    if _current.get(None) is not None:
        return _Unguarded(name)
    raise RuntimeError(
        f"ab.guard({name!r}) was used outside a batch run; HINT: use it inside a job "
        f"run by ab.run_batch(job, items, breakers={{{name!r}: ab.Breaker()}}, ...)"
    )


def _limiter(rate: Rate) -> Any:
    # Imported on first use: aiolimiter reads package metadata at import,
    # which is a noticeable share of `import asyncbatch` for runs without rates.
    import aiolimiter

    return aiolimiter.AsyncLimiter(rate.n, rate.per)
