"""`Dependencies`: the bulkheads, rate limits and circuits of every dependency of one run.

The engine builds one per run from ``limits=``, ``rates=`` and ``breakers=``;
`guard` finds it through a context variable. Each dependency keeps its
statistics (`DependencyStats`), which go into the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

from asyncbatch._errors import CircuitOpen, ConfigError, ErrorKind
from asyncbatch._observe._events import ConcurrencyChanged, Event

from ._adaptive import Adaptive, AdaptiveLimit, overloaded
from ._breaker import Breaker
from ._circuit import Circuit
from ._guard import Guard, rejected
from ._rate import Rate, limiter, rate_cost

if TYPE_CHECKING:
    from ._global import ExactLimit

__all__ = ["Dependencies", "DependencyStats"]

# Failures of these kinds say the dependency is in trouble; PERMANENT says the item is.
_COUNTED = frozenset({ErrorKind.TRANSIENT, ErrorKind.RECOVERABLE, ErrorKind.FATAL})


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
        limit: its bulkhead size (an adaptive one's current limit), or None.
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
        "adaptive",
        "calls",
        "circuit",
        "exact",
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
        self, name: str, limit: int | Adaptive | None, rate: Rate | None, circuit: Circuit | None
    ) -> None:
        self.name = name
        self.adaptive = AdaptiveLimit(limit) if isinstance(limit, Adaptive) else None
        if isinstance(limit, Adaptive):
            limit = limit.initial
        self.limit = limit
        self.rate = rate
        self.circuit = circuit
        self.exact: ExactLimit | None = None  # a shared run's exact limits (_global)
        self.limiter = anyio.CapacityLimiter(limit) if limit is not None else None
        self.rate_limiter = limiter(rate) if rate is not None else None
        self.rate_cost = rate_cost(rate) if rate is not None else 1.0
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
            limit=self.adaptive.current if self.adaptive is not None else self.limit,
            rate=self.rate,
        )


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
        limits: dependency → max concurrent calls (bulkheads): an int, or an
            `Adaptive` limit that learns from the calls through its guard.
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
        limits: Mapping[str, int | Adaptive] | None,
        rates: Mapping[str, Rate] | None,
        breakers: Mapping[str, Breaker] | None,
        classify: Callable[[BaseException], Any],
        emit: Callable[[Event], None],
    ) -> None:
        limits = _check_names("limits", limits)
        rates = _check_names("rates", rates)
        breakers = _check_names("breakers", breakers)
        for name, n in limits.items():
            if isinstance(n, Adaptive):
                continue
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(
                    f"limits[{name!r}] must be a positive int or an ab.Adaptive, got {n!r}"
                )
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
        self._reported: dict[str, tuple[int, float]] = {}  # adaptive limits: last event

    def __bool__(self) -> bool:
        return self._configured

    def __repr__(self) -> str:
        return f"<Dependencies run={self.run_id!r} {sorted(self._deps)}>"

    def share(self, workers: int) -> None:
        """Split every bulkhead and rate limit among ``workers`` processes (a shared run).

        Each process then allows ``ceil(limit / workers)`` calls at once
        (at least 1) and ``n / workers`` calls per period; the shared run's
        heartbeat calls this again as workers join and leave. Calls already
        waiting keep the share they started under.
        """
        workers = max(1, workers)
        for dep in self._deps.values():
            if dep.exact is not None:
                continue  # exact: held by the database across workers (_global), not split
            # An adaptive bulkhead is left alone: each process finds its own limit.
            if dep.limit is not None and dep.limiter is not None and dep.adaptive is None:
                dep.limiter.total_tokens = max(1, math.ceil(dep.limit / workers))
            if dep.rate is not None:
                share = Rate(dep.rate.n, per=dep.rate.per * workers)  # n/workers per period
                dep.rate_limiter = limiter(share)
                dep.rate_cost = rate_cost(share)

    def breaker(self, name: str) -> Breaker | None:
        """The `Breaker` policy configured for ``name`` (None without one)."""
        return self._breakers.get(name)

    def circuit(self, name: str) -> Circuit | None:
        """The live circuit of ``name`` in this run (None without a breaker)."""
        dep = self._deps.get(name)
        return dep.circuit if dep is not None else None

    def adaptive_state(self) -> dict[str, dict[str, int | float]]:
        """Per dependency with an `Adaptive` limit: its state, for the report."""
        return {
            name: dep.adaptive.state()
            for name, dep in sorted(self._deps.items())
            if dep.adaptive is not None
        }

    def stats(self) -> dict[str, DependencyStats]:
        """A snapshot per dependency seen or configured, by name."""
        return {name: dep.stats() for name, dep in sorted(self._deps.items())}

    def guard(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The guard of one dependency (what `ab.guard` returns inside this run)."""
        return Guard(self, self._dependency(name))

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
                    raise rejected(dep, CircuitOpen(dep.name, retry_in))
        peers = frozenset(dep.name for dep in deps)
        label = key[0] if key else None
        async with contextlib.AsyncExitStack() as stack:
            for dep in deps:
                await stack.enter_async_context(Guard(self, dep, peers, label))
            yield

    def _dependency(self, name: str) -> _Dependency:
        dep = self._deps.get(name)
        if dep is None:
            if not isinstance(name, str):
                raise ConfigError(f"a dependency name must be a str, got {name!r}")
            # Not configured: no guards, but the calls still show up in the statistics.
            dep = self._deps[name] = _Dependency(name, None, None, None)
        return dep

    def _sample(self, dep: _Dependency, since: float, exc: BaseException | None) -> None:
        """A call through an adaptive bulkhead ended: let its limit learn, resize the bulkhead."""
        adaptive = dep.adaptive
        assert adaptive is not None
        if exc is None:
            overload = False
        elif isinstance(exc, Exception) and overloaded(exc):
            overload = True
        else:
            return  # a failure that says nothing about load
        now = asyncio.get_running_loop().time()
        changed = adaptive.sample(now - since, overload=overload, in_flight=dep.in_flight, now=now)
        if changed is None:
            return
        limit, reason = changed
        assert dep.limiter is not None
        dep.limiter.total_tokens = limit  # anyio: a lower total lets current borrowers finish
        last, at = self._reported.get(dep.name, (adaptive.policy.initial, -math.inf))
        if reason != "grow" or now - at >= 1.0:
            self._reported[dep.name] = (limit, now)
            self._emit(
                ConcurrencyChanged(
                    run_id=self.run_id,
                    dependency=dep.name,
                    limit=limit,
                    previous=last,
                    reason=reason,
                )
            )

    def _counts(self, exc: BaseException) -> bool:
        """Does this failure count against the dependency? (see `Breaker`)."""
        try:
            kind = self._classify(exc)
            return ErrorKind(kind) in _COUNTED
        except Exception:
            # A classifier rule that blows up must not replace the job's own error.
            return True


