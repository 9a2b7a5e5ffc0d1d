"""`Adaptive`: a concurrency limit that finds a dependency's capacity (AIMD with a latency check).

``concurrency=ab.Adaptive(...)`` (the whole run) or ``limits={"api":
ab.Adaptive(...)}`` (one dependency's bulkhead). The policy is `Adaptive`;
each run keeps an `AdaptiveLimit` per use, fed one sample per finished call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from asyncbatch._errors import CircuitOpen, ConfigError, DeadlineExceeded
from asyncbatch._policy._http import status_of

__all__ = ["Adaptive", "AdaptiveLimit", "overloaded"]

_OVERLOAD_STATUSES = frozenset({429, 503})


def overloaded(exc: BaseException) -> bool:
    """Whether a failure says "too much load": 429/503, a Retry-After, a timeout."""
    if isinstance(exc, TimeoutError | DeadlineExceeded):
        return True
    if isinstance(exc, CircuitOpen):
        return False
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
        return True
    status = getattr(exc, "status", None)
    if not isinstance(status, int) or isinstance(status, bool):
        status = status_of(exc)
    return status in _OVERLOAD_STATUSES


@dataclass(frozen=True, slots=True, init=False)
class Adaptive:
    """A concurrency limit that adapts to what the dependency can take.

    The algorithm is AIMD (additive increase, multiplicative decrease, as in
    TCP and Netflix concurrency-limits' ``AIMDLimit``) with a latency check
    (as in their ``VegasLimit`` / Envoy's gradient controller). Each call
    that ends is a sample of (latency, overload):

    - **overload**: the call failed with 429 or 503, an exception carrying
      ``retry_after``, or a timeout; or the smoothed latency of successful
      calls (an exponential moving average, weight 1/10) is over
      ``tolerance`` x the lowest latency seen: the queue in front of the
      server is growing (one slow call, a heavy tail or a pause of the
      client's own loop, does not count). Then ``limit = max(min, limit x backoff)``, at most
      once per smoothed latency (one round trip), so one burst of rejections
      counts as one signal, not hundreds.
    - **success** within the latency tolerance, while at least half the limit
      is in use (a limit that is not being used is not being tested): in
      *slow start* (until the first overload) ``limit += 1`` per sample, which
      doubles it every round trip; after it, ``limit += 1 / limit`` per
      sample, i.e. +1 per round trip.
    - other failures (the item's, or errors that say nothing about load) do
      not move the limit.

    The lowest latency is remembered as the no-load latency; it is allowed to
    drift up by 1/1024 per sample so that it follows a dependency that became
    slower for good. Everything is clamped to ``[min, max]``.

    Args:
        min: the lowest limit (>= 1).
        max: the highest limit (>= ``min``).
        initial: where it starts (default: ``min(max, max(min, 10))``).
        backoff: the multiplicative decrease, in (0, 1) (default 0.9).
        tolerance: latency over ``tolerance`` x the no-load latency counts
            as overload (> 1, default 2.0; None: latency is not a signal).

    Raises:
        ConfigError: an option is out of range.
    """

    min: int
    max: int
    initial: int
    backoff: float
    tolerance: float | None

    def __init__(
        self,
        *,
        min: int = 1,
        max: int = 1000,
        initial: int | None = None,
        backoff: float = 0.9,
        tolerance: float | None = 2.0,
    ) -> None:
        for value, name in ((min, "min"), (max, "max")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Adaptive {name} must be an int >= 1, got {value!r}")
        if max < min:
            raise ConfigError(f"Adaptive max ({max}) must be >= min ({min})")
        if initial is None:
            initial = builtins_min(max, builtins_max(min, 10))
        if isinstance(initial, bool) or not isinstance(initial, int) or not min <= initial <= max:
            raise ConfigError(
                f"Adaptive initial must be an int within [min, max] = [{min}, {max}], "
                f"got {initial!r}"
            )
        if isinstance(backoff, bool) or not isinstance(backoff, int | float) or not 0 < backoff < 1:
            raise ConfigError(f"Adaptive backoff must be in (0, 1), got {backoff!r}")
        if tolerance is not None and (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, int | float)
            or not tolerance > 1
            or math.isinf(tolerance)
        ):
            raise ConfigError(f"Adaptive tolerance must be a number > 1 or None, got {tolerance!r}")
        object.__setattr__(self, "min", min)
        object.__setattr__(self, "max", max)
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "backoff", float(backoff))
        object.__setattr__(self, "tolerance", None if tolerance is None else float(tolerance))

    def __repr__(self) -> str:
        return (
            f"Adaptive(min={self.min}, max={self.max}, initial={self.initial}, "
            f"backoff={self.backoff:g}, tolerance={self.tolerance!r})"
        )


builtins_min = min
builtins_max = max

Change = Literal["grow", "overload", "latency"]


class AdaptiveLimit:
    """The live limit of one `Adaptive` in one run (see `Adaptive` for the algorithm).

    `sample` returns the new integer limit when it changed (else None).
    """

    __slots__ = (
        "_last_cut",
        "_min_rtt",
        "_srtt",
        "decreases",
        "highest",
        "limit",
        "lowest",
        "policy",
        "slow_start",
    )

    def __init__(self, policy: Adaptive) -> None:
        self.policy = policy
        self.limit = float(policy.initial)
        self.lowest = self.highest = policy.initial
        self.decreases = 0
        self.slow_start = True
        self._min_rtt = math.inf
        self._srtt = 0.0
        self._last_cut = -math.inf

    @property
    def current(self) -> int:
        """The limit now, as a number of calls."""
        return int(self.limit)

    def set(self, n: int) -> None:
        """Move the limit by hand (``Batch.resize``), within the policy's bounds."""
        self.limit = float(builtins_max(self.policy.min, builtins_min(self.policy.max, n)))
        self._note()

    def sample(
        self, latency: float, *, overload: bool, in_flight: int, now: float
    ) -> tuple[int, Change] | None:
        """One call ended after ``latency`` seconds.

        Args:
            latency: the call's duration.
            overload: it failed with an overload signal (`overloaded`).
            in_flight: calls running when it ended (itself included).
            now: the loop clock.

        Returns:
            (the new limit, why) when the integer limit changed, else None.
        """
        p = self.policy
        before = int(self.limit)
        reason: Change | None = None
        if overload:
            reason = "overload"
        else:
            self._srtt = latency if not self._srtt else 0.9 * self._srtt + 0.1 * latency
            self._min_rtt = builtins_min(latency, self._min_rtt * (1 + 1 / 1024))
            if p.tolerance is not None and self._srtt > p.tolerance * self._min_rtt:
                reason = "latency"
        if reason is not None:
            # One cut per round trip; before any success, the failing call's own time.
            if now - self._last_cut >= (self._srtt or latency):
                self._last_cut = now
                self.slow_start = False
                self.limit = builtins_max(float(p.min), self.limit * p.backoff)
                self.decreases += 1
            else:
                reason = None
        elif in_flight * 2 >= self.limit:  # a success within tolerance, the limit in use
            self.limit += 1.0 if self.slow_start else 1.0 / self.limit
            self.limit = builtins_min(float(p.max), self.limit)
            reason = "grow"
        after = int(self.limit)
        if after == before or reason is None:
            return None
        self._note()
        return after, reason

    def state(self) -> dict[str, int | float]:
        """JSON-ready: the limit now, its lowest and highest, how many backoffs."""
        return {
            "limit": self.current,
            "lowest": self.lowest,
            "highest": self.highest,
            "decreases": self.decreases,
            "min": self.policy.min,
            "max": self.policy.max,
        }

    def _note(self) -> None:
        now = int(self.limit)
        self.lowest = builtins_min(self.lowest, now)
        self.highest = builtins_max(self.highest, now)
