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
    # Imported on first use: aiolimiter reads package metadata at import,
    # which is a noticeable share of `import asyncbatch` for runs without rates.
    import aiolimiter

    return aiolimiter.AsyncLimiter(rate.n, rate.per)
