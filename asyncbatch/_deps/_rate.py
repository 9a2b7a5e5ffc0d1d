"""Rate limits: `Rate` (the policy) and its aiolimiter bucket."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asyncbatch._errors import ConfigError
from asyncbatch._policy._retry import seconds

__all__ = ["Rate", "limiter", "rate_cost"]

_CLOCK_TICK = time.get_clock_info("monotonic").resolution  # what asyncio uses


@dataclass(frozen=True, slots=True, init=False)
class Rate:
    """A rate limit: at most ``n`` calls per ``per`` seconds (``rates={"api": ab.Rate(10)}``).

    Calls start at most one every ``per / n`` seconds (aiolimiter's leaky
    bucket, sized for one call), so every window of ``per`` seconds holds at
    most ``n`` starts, the first one included: ``Rate(50, per=1)`` starts
    50 calls in the first second, not a burst of 50 plus the drip. There is
    no burst after a quiet spell either: the limit is what the API allows in
    any window, spread evenly.

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


def rate_cost(rate: Rate) -> float:
    """Bucket capacity one call takes: 1 token minus what the loop clock cannot resolve.

    asyncio runs a timer up to one clock tick early. aiolimiter then finds a
    float-sized shortfall, re-arms a timer for "now" and, on a virtual clock
    (looptime) that never ticks by itself, spins forever. Charging a call
    ``rate x tick`` less absorbs that; the rate moves by at most 0.1 %.
    """
    per_second = rate.n / rate.per
    return 1.0 - min(1e-3, 1e-9 + 2 * _CLOCK_TICK * per_second)


def limiter(rate: Rate) -> Any:
    """The aiolimiter bucket enforcing ``rate`` (charge `rate_cost` per call)."""
    # Imported on first use: aiolimiter reads package metadata at import,
    # which is a noticeable share of `import asyncbatch` for runs without rates.
    import aiolimiter

    # One call's worth of capacity: a full bucket of n would let n calls go at
    # once and n more drip in, ~2n in the first period (99 for Rate(50)).
    # rate_cost() charges a call slightly less than the bucket holds, which
    # would let calls in slightly early; slowing the drip by 3x that discount
    # keeps every start at or after its per/n slot (the rate drops by <= 0.2 %).
    discount = 1.0 - rate_cost(rate)
    return aiolimiter.AsyncLimiter(1, rate.per / rate.n / (1.0 - 3.0 * discount))
