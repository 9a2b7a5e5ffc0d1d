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

import asyncio
import contextlib
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from asyncbatch._context import _current
from asyncbatch._errors import CircuitOpen, ConfigError

if TYPE_CHECKING:
    from asyncbatch._store._postgres_limits import Slot

    from ._circuit import Ticket
    from ._dependencies import Dependencies, _Dependency

__all__ = ["Guard", "guard", "rejected", "reset_dependencies", "use_dependencies"]

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


def rejected(dep: _Dependency, exc: CircuitOpen) -> CircuitOpen:
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


class Guard:
    """``async with`` one dependency's breaker, bulkhead and rate limit."""

    __slots__ = ("_borrower", "_dep", "_deps", "_held", "_label", "_peers", "_since", "_slot",
                 "_ticket")  # fmt: skip

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
        self._ticket: Ticket | None = None
        self._slot: Slot | None = None  # an exact limit's slot (a shared run's, _global)
        self._held: Token[frozenset[str]] | None = None
        self._since = 0.0  # loop time the call was admitted (for an adaptive limit)

    async def __aenter__(self) -> None:
        dep = self._dep
        held = _held.get()
        if dep.name in held:
            return
        circuit = dep.circuit
        if circuit is not None:
            retry_in = circuit.retry_in()
            if retry_in is not None:
                raise rejected(dep, CircuitOpen(dep.name, retry_in))
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
            if dep.exact is not None:  # a slot and a start time from the database
                self._slot = await dep.exact.acquire()
            if dep.rate_limiter is not None:
                await dep.rate_limiter.acquire(dep.rate_cost)
            if circuit is not None:
                try:
                    self._ticket = circuit.admit()
                except CircuitOpen as exc:
                    raise rejected(dep, exc) from None
        except BaseException:
            self._release()
            raise
        self._held = _held.set(held | {dep.name})
        dep.calls += 1
        dep.in_flight += 1
        if dep.in_flight > dep.max_in_flight:
            dep.max_in_flight = dep.in_flight
        if dep.adaptive is not None:
            self._since = asyncio.get_running_loop().time()

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
        if dep.adaptive is not None:
            self._deps._sample(dep, self._since, exc)
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
        slot, self._slot = self._slot, None
        if slot is not None and self._dep.exact is not None:
            self._dep.exact.release(slot)
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
        return Guard(deps, deps._dependency(name))
    if _current.get(None) is not None:
        return _Unguarded(name)
    raise RuntimeError(
        f"ab.guard({name!r}) was used outside a batch run; HINT: use it inside a job "
        f"run by ab.run_batch(job, items, breakers={{{name!r}: ab.Breaker()}}, ...)"
    )


