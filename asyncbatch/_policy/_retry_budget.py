"""`RetryBudget`: retries capped at a share of recent calls (Envoy / Finagle style).

A `RetryBudget` states the cap; a `RetryAllowance` (one per run) keeps the
sliding sums it is judged on. The engine asks `RetryAllowance.allows` when a
retry comes due and holds the retry parked (no worker, no slot) while the
budget is spent, so a dependency that is already failing is not sent a
second wave of load made of retries.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asyncbatch._errors import ConfigError

from ._retry import seconds

__all__ = ["BUCKETS", "RetryAllowance", "RetryBudget"]

BUCKETS = 20
"""Buckets of the sliding window (its resolution is ``window / BUCKETS``)."""


@dataclass(frozen=True, slots=True, init=False)
class RetryBudget:
    """Retries may be at most a share of recent calls: ``retry_budget=ab.RetryBudget(ratio=0.2)``.

    Over any sliding ``window`` (default 10 s of the loop clock), the retries
    let through are at most::

        ratio x (jobs started in the window) + min_per_second x window

    A *call* is a job's first attempt; a *retry* is any later attempt (the
    retry of a job woken from an open circuit included). A retry that comes
    due while the budget is spent is **held**: it stays parked, holding no
    worker and no concurrency slot, and goes as soon as the budget has room
    (new jobs start, or old retries leave the window), before retries that
    came due after it. ``min_per_second`` keeps retries flowing when few new
    jobs start (the end of a batch, or admission held back during an outage),
    so every job still reaches its end. Its deadline still applies while held.

    Args:
        ratio: retries per call allowed (> 0; 0.2 is one retry per five jobs).
        min_per_second: retries per second always allowed (> 0).
        window: the sliding window, seconds or ``timedelta`` (> 0).

    Raises:
        ConfigError: an option is out of range.
    """

    ratio: float
    min_per_second: float
    window: float

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window: float | timedelta = 10.0,
    ) -> None:
        for value, name in ((ratio, "ratio"), (min_per_second, "min_per_second")):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(
                    f"RetryBudget {name} must be a number > 0, got {value!r}; "
                    "HINT: RetryBudget(ratio=0.2, min_per_second=10)"
                )
        span = seconds(window, "RetryBudget window")
        if not span or math.isinf(span):
            raise ConfigError(f"RetryBudget window must be a positive duration, got {window!r}")
        object.__setattr__(self, "ratio", float(ratio))
        object.__setattr__(self, "min_per_second", float(min_per_second))
        object.__setattr__(self, "window", span)

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio:g}, min_per_second={self.min_per_second:g}, "
            f"window={self.window:g})"
        )


class RetryAllowance:
    """The sliding sums of one run's `RetryBudget`: calls and retries per bucket.

    Times are loop-clock seconds, passed in by the caller.
    """

    __slots__ = ("_buckets", "_reserve", "_width", "calls", "policy", "retries", "total")

    def __init__(self, policy: RetryBudget) -> None:
        self.policy = policy
        self._width = policy.window / BUCKETS
        # At least one retry per window, whatever min_per_second: a run with no new
        # calls left must still reach the end of its retries.
        self._reserve = max(1.0, policy.min_per_second * policy.window)
        self._buckets: deque[list[float]] = deque()  # [start, calls, retries]
        self.calls = 0
        """Calls (first attempts) in the window."""
        self.retries = 0
        """Retries let through in the window."""
        self.total: dict[str, int] = {"calls": 0, "retries": 0, "held": 0}
        """Whole-run counts: calls, retries let through, retries held at least once."""

    def called(self, now: float) -> None:
        """A job started its first attempt."""
        self._bucket(now)[1] += 1
        self.calls += 1
        self.total["calls"] += 1

    def allows(self, now: float) -> bool:
        """Whether one more retry fits in the budget now."""
        self._expire(now)
        return self.retries + 1 <= self.policy.ratio * self.calls + self._reserve

    def spend(self, now: float) -> None:
        """A retry goes."""
        self._bucket(now)[2] += 1
        self.retries += 1
        self.total["retries"] += 1

    def next_room(self, now: float) -> float:
        """Loop time at which old retries next leave the window (when to look again)."""
        if self._buckets:
            return max(now, self._buckets[0][0] + self._width + self.policy.window)
        return now + self._width

    def state(self) -> dict[str, Any]:
        """JSON-ready whole-run counts and the policy."""
        p = self.policy
        calls = self.total["calls"]
        return {
            "ratio": p.ratio,
            "min_per_second": p.min_per_second,
            "window": p.window,
            **self.total,
            "retry_ratio": self.total["retries"] / calls if calls else 0.0,
        }

    def _bucket(self, now: float) -> list[float]:
        self._expire(now)
        buckets = self._buckets
        if not buckets or now >= buckets[-1][0] + self._width:
            buckets.append([now, 0, 0])
        return buckets[-1]

    def _expire(self, now: float) -> None:
        buckets = self._buckets
        horizon = now - self.policy.window
        while buckets and buckets[0][0] + self._width <= horizon:
            _, calls, retries = buckets.popleft()
            self.calls -= int(calls)
            self.retries -= int(retries)
