"""`Breaker`: the circuit breaker policy of one dependency (its live state is `Circuit`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from asyncbatch._errors import CircuitOpen, ConfigError
from asyncbatch._policy._retry import seconds

__all__ = ["Breaker", "OnOpen"]

OnOpen = Literal["park", "fail", "fallback"]
_ON_OPEN = ("park", "fail", "fallback")


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Breaker:
    """A circuit breaker policy for one dependency: ``breakers={"api": ab.Breaker()}``.

    After ``fail_max`` consecutive counted failures the circuit opens: calls
    guarded by it are rejected with `CircuitOpen` for ``reset_timeout``
    seconds. Then it is half-open: up to ``half_open_probes`` calls run at
    once as probes (others are still rejected); the first probe to finish
    decides: success closes the circuit, failure opens it again. The call
    that trips the circuit raises its own, original exception.

    Which failures count: an exception leaving the guarded block counts when
    the run's classifier calls it TRANSIENT, RECOVERABLE or FATAL (the
    dependency is in trouble). PERMANENT errors (a bad item, e.g. HTTP 400)
    neither count nor reset the counter, and a PERMANENT probe leaves the
    circuit half-open. ``CancelledError`` and other ``BaseException`` never
    count; neither do rejections (`CircuitOpen`) nor errors that came out of
    a guard of another dependency nested inside. A success resets the count.
    Results of calls admitted before the circuit last changed state (e.g. the
    stragglers still running when it opened) are counted in the statistics
    but do not move the circuit.

    A `Breaker` is only the policy: each run keeps its own circuit per
    dependency, so state never leaks between runs or between dependencies
    sharing one `Breaker` value.

    Args:
        fail_max: consecutive counted failures that open the circuit.
        reset_timeout: seconds (or ``timedelta``) the circuit stays open
            before probes are let through.
        half_open_probes: how many probes may run at once while half-open.
        on_open: what a job does when the circuit rejects it: ``"park"``
            (wait until a probe may go, without spending an attempt or
            holding a concurrency slot), ``"fail"`` (dead-letter it with
            `CircuitOpen`) or ``"fallback"`` (its result is
            ``await fallback(item, error)``).
        fallback: ``async def fallback(item, error) -> result``; required
            with ``on_open="fallback"`` and only allowed with it.
        name: a label for reprs and logs (default: the dependency's name).

    Raises:
        ConfigError: an option has a value that cannot work.
    """

    fail_max: int
    reset_timeout: float
    half_open_probes: int
    on_open: OnOpen
    fallback: Callable[[Any, CircuitOpen], Awaitable[Any]] | None
    name: str | None

    def __init__(
        self,
        *,
        fail_max: int = 5,
        reset_timeout: float | timedelta = 30.0,
        half_open_probes: int = 1,
        on_open: OnOpen = "park",
        fallback: Callable[[Any, CircuitOpen], Awaitable[Any]] | None = None,
        name: str | None = None,
    ) -> None:
        _positive_int(fail_max, "fail_max")
        _positive_int(half_open_probes, "half_open_probes")
        timeout = seconds(reset_timeout, "Breaker reset_timeout")
        if not timeout:
            raise ConfigError(f"Breaker reset_timeout must be > 0 seconds, got {reset_timeout!r}")
        if on_open not in _ON_OPEN:
            raise ConfigError(f"Breaker on_open must be one of {_ON_OPEN}, got {on_open!r}")
        if on_open == "fallback" and fallback is None:
            raise ConfigError(
                'Breaker(on_open="fallback") needs fallback=; '
                'HINT: Breaker(on_open="fallback", fallback=async_fn(item, error))'
            )
        if fallback is not None and on_open != "fallback":
            raise ConfigError(
                f'Breaker fallback= is only used with on_open="fallback" (got on_open={on_open!r})'
            )
        if fallback is not None and not callable(fallback):
            raise ConfigError(f"Breaker fallback must be an async callable, got {fallback!r}")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"Breaker name must be a str, got {name!r}")
        object.__setattr__(self, "fail_max", fail_max)
        object.__setattr__(self, "reset_timeout", timeout)
        object.__setattr__(self, "half_open_probes", half_open_probes)
        object.__setattr__(self, "on_open", on_open)
        object.__setattr__(self, "fallback", fallback)
        object.__setattr__(self, "name", name)

    def __repr__(self) -> str:
        parts = [
            f"fail_max={self.fail_max}",
            f"reset_timeout={self.reset_timeout:g}",
            f"half_open_probes={self.half_open_probes}",
            f"on_open={self.on_open!r}",
        ]
        if self.fallback is not None:
            parts.append(f"fallback={getattr(self.fallback, '__qualname__', self.fallback)}")
        if self.name is not None:
            parts.append(f"name={self.name!r}")
        return f"Breaker({', '.join(parts)})"


def _positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Breaker {name} must be a positive int, got {value!r}")


