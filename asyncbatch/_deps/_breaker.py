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


class _Unset:
    """``fail_max`` not given: 5, or off when a rate rule is set."""

    def __repr__(self) -> str:
        return "<default>"


_UNSET: Any = _Unset()


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Breaker:
    """A circuit breaker policy for one dependency: ``breakers={"api": ab.Breaker()}``.

    After ``fail_max`` consecutive counted failures the circuit opens: calls
    guarded by it are rejected with `CircuitOpen` for ``reset_timeout``
    seconds. Then it is half-open: up to ``half_open_probes`` calls run at
    once as probes (others are still rejected); the first probe to finish
    decides: success closes the circuit, failure opens it again. The call
    that trips the circuit raises its own, original exception.

    **Failure-rate rule** (Resilience4j's sliding window): with
    ``failure_rate=`` the circuit also opens when, among the last ``window``
    counted calls (``window=100``) or the counted calls that ended in the last
    ``window`` seconds (``window=timedelta(seconds=30)``), at least
    ``min_calls`` were made and the share that failed is >= ``failure_rate``.
    Interleaved failures (60% of calls failing, never 5 in a row) open it,
    which ``fail_max`` never does. With a rate rule, half-open lets exactly
    ``half_open_probes`` probes through and judges them together: the circuit
    opens again when their failure share is >= ``failure_rate`` (or their slow
    share >= ``slow_rate``), and closes otherwise. ``fail_max`` is off when a
    rate rule is given, unless it is passed too (then either rule opens it).

    **Slow calls**: with ``slow_call=`` seconds, a counted call that took at
    least that long (from admission to its end, on the loop clock) is slow.
    With ``slow_rate=`` the circuit opens when the slow share of the window is
    >= ``slow_rate`` (calls that are slow but succeed, i.e. a dependency that
    is drowning); without it a slow call counts as a failure of the
    ``failure_rate`` rule.

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
        failure_rate: open when this share (0..1] of the window's calls failed.
        window: the sliding window: an int (the last n calls, default 100) or
            a ``timedelta`` (the calls of the last so many seconds).
        min_calls: calls the window must hold before a rate is judged
            (default 20; at most ``window`` for a count-based one).
        slow_call: seconds (or ``timedelta``) from which a call is slow.
        slow_rate: open when this share (0..1] of the window's calls was slow
            (needs ``slow_call``).

    Raises:
        ConfigError: an option has a value that cannot work.
    """

    fail_max: int | None
    reset_timeout: float
    half_open_probes: int
    on_open: OnOpen
    fallback: Callable[[Any, CircuitOpen], Awaitable[Any]] | None
    name: str | None
    failure_rate: float | None
    window: int | float | None
    """Calls (an int) or seconds (a float, from a ``timedelta``); None without a rate rule."""
    min_calls: int
    slow_call: float | None
    slow_rate: float | None

    def __init__(
        self,
        *,
        fail_max: int | None = _UNSET,
        reset_timeout: float | timedelta = 30.0,
        half_open_probes: int = 1,
        on_open: OnOpen = "park",
        fallback: Callable[[Any, CircuitOpen], Awaitable[Any]] | None = None,
        name: str | None = None,
        failure_rate: float | None = None,
        window: int | timedelta | None = None,
        min_calls: int | None = None,
        slow_call: float | timedelta | None = None,
        slow_rate: float | None = None,
    ) -> None:
        rates = failure_rate is not None or slow_rate is not None
        if fail_max is _UNSET:
            fail_max = None if rates else 5
        if fail_max is not None:
            _positive_int(fail_max, "fail_max")
        elif not rates:
            raise ConfigError(
                "Breaker needs a rule that opens it; HINT: Breaker(fail_max=5) "
                "or Breaker(failure_rate=0.5, window=100)"
            )
        window_v, min_calls_v, slow_v = _rate_rules(
            failure_rate, window, min_calls, slow_call, slow_rate
        )
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
        object.__setattr__(self, "failure_rate", failure_rate)
        object.__setattr__(self, "window", window_v)
        object.__setattr__(self, "min_calls", min_calls_v)
        object.__setattr__(self, "slow_call", slow_v)
        object.__setattr__(self, "slow_rate", slow_rate)

    @property
    def judges_rates(self) -> bool:
        """Whether a sliding window decides (a failure-rate or slow-rate rule is set)."""
        return self.window is not None

    def __repr__(self) -> str:
        parts = [] if self.fail_max is None else [f"fail_max={self.fail_max}"]
        if self.failure_rate is not None:
            parts.append(f"failure_rate={self.failure_rate:g}")
        if self.window is not None:
            shape = f"{self.window}" if isinstance(self.window, int) else f"{self.window:g}s"
            parts.append(f"window={shape}")
            parts.append(f"min_calls={self.min_calls}")
        if self.slow_call is not None:
            parts.append(f"slow_call={self.slow_call:g}")
        if self.slow_rate is not None:
            parts.append(f"slow_rate={self.slow_rate:g}")
        parts += [
            f"reset_timeout={self.reset_timeout:g}",
            f"half_open_probes={self.half_open_probes}",
            f"on_open={self.on_open!r}",
        ]
        if self.fallback is not None:
            parts.append(f"fallback={getattr(self.fallback, '__qualname__', self.fallback)}")
        if self.name is not None:
            parts.append(f"name={self.name!r}")
        return f"Breaker({', '.join(parts)})"


def _share(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(f"Breaker {name} must be a share in (0, 1], got {value!r} (50% is 0.5)")


def _rate_rules(
    failure_rate: object,
    window: object,
    min_calls: object,
    slow_call: object,
    slow_rate: object,
) -> tuple[int | float | None, int, float | None]:
    """Validate the sliding-window options; returns (window, min_calls, slow_call)."""
    if failure_rate is not None:
        _share(failure_rate, "failure_rate")
    if slow_rate is not None:
        _share(slow_rate, "slow_rate")
        if slow_call is None:
            raise ConfigError(
                "Breaker slow_rate= needs slow_call= (the seconds from which a call is slow); "
                "HINT: Breaker(slow_call=2.0, slow_rate=0.8)"
            )
    slow = seconds(slow_call, "Breaker slow_call")  # type: ignore[arg-type]
    if slow_call is not None and not slow:
        raise ConfigError(f"Breaker slow_call must be > 0 seconds, got {slow_call!r}")
    if failure_rate is None and slow_rate is None:
        for given, option in (
            (window, "window"),
            (min_calls, "min_calls"),
            (slow_call, "slow_call"),
        ):
            if given is not None:
                raise ConfigError(
                    f"Breaker {option}= is only used with failure_rate= or slow_rate=; "
                    "HINT: Breaker(failure_rate=0.5, window=100, min_calls=20)"
                )
        return None, 20, None
    shape: int | float
    if window is None:
        shape = 100
    elif isinstance(window, timedelta):
        shape = window.total_seconds()
        if shape <= 0:
            raise ConfigError(f"Breaker window must be a positive duration, got {window!r}")
    elif isinstance(window, int) and not isinstance(window, bool) and window >= 1:
        shape = window
    else:
        raise ConfigError(
            f"Breaker window must be a number of calls (int) or a timedelta, got {window!r}; "
            "HINT: window=100 or window=timedelta(seconds=30)"
        )
    if min_calls is None:
        need = min(20, shape) if isinstance(shape, int) else 20
    else:
        _positive_int(min_calls, "min_calls")
        need = min_calls  # type: ignore[assignment]
        if isinstance(shape, int) and need > shape:
            raise ConfigError(
                f"Breaker min_calls ({need}) cannot exceed a count-based window ({shape} calls)"
            )
    return shape, need, slow


def _positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Breaker {name} must be a positive int, got {value!r}")
