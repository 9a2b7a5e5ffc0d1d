"""Hedged attempts: a second call when the first is slow; the first success wins.

``hedge=ab.Hedge(after=0.5 | "p95", max_extra=1, budget=0.1)``. `Hedge` is
the policy; `Hedging` (one per run) keeps the latencies a ``"pNN"``
threshold is read from and the counts its budget is judged on, and runs a
hedged attempt (`Hedging.run`) in a task group of its own: the calls of one
attempt are its children, the first to succeed is the attempt's result,
and leaving the group cancels the others (the losers).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio

from asyncbatch._errors import ConfigError
from asyncbatch._policy._retry import seconds

if TYPE_CHECKING:
    from asyncbatch._observe._otel import AttemptScope

__all__ = ["Hedge", "Hedging"]

_PERCENTILE = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")
_SAMPLES = 1024  # successful latencies kept for a percentile threshold
_RECOMPUTE = 64  # samples between two recomputations of it


@dataclass(frozen=True, slots=True, init=False)
class Hedge:
    """Hedge slow attempts of idempotent jobs: ``hedge=ab.Hedge(after="p95")``.

    When an attempt has not finished ``after`` seconds in, a second call of
    the job with the same item starts next to it (up to ``max_extra`` extra
    calls, one more every ``after`` seconds). The first call to succeed is
    the attempt's result and the others are cancelled; when every call
    fails, the attempt fails with the first error. Extra calls run in the
    attempt's own slot (they add load only while the budget allows: at most
    ``budget`` extra calls per attempt made in the run) and pass the same
    guards, timeout and deadline. Only for jobs that may safely run twice.

    ``after="p95"`` (any ``"pNN"``) hedges the attempts slower than that
    percentile of the run's recent successful attempts (the last 1,024),
    so about 5% are hedged; no attempt is hedged before ``min_samples``
    successes are seen.

    Args:
        after: seconds (or ``timedelta``), or a percentile ``"p50"``..``"p99.9"``.
        max_extra: extra calls per attempt (>= 1).
        budget: extra calls allowed per attempt of the run, in (0, 1]
            (default 0.1: at most 10% more calls).
        min_samples: successes needed before a percentile applies (>= 1).

    Raises:
        ConfigError: an option is out of range.
    """

    after: float | str
    max_extra: int
    budget: float
    min_samples: int

    def __init__(
        self,
        *,
        after: float | timedelta | str = "p95",
        max_extra: int = 1,
        budget: float = 0.1,
        min_samples: int = 20,
    ) -> None:
        threshold: float | str
        if isinstance(after, str):
            m = _PERCENTILE.match(after)
            if m is None or not 0 < float(m[1]) < 100:
                raise ConfigError(
                    f'Hedge after must be seconds or a percentile such as "p95", got {after!r}'
                )
            threshold = after
        else:
            threshold = seconds(after, "Hedge after")  # type: ignore[assignment]
            if not threshold:
                raise ConfigError(f"Hedge after must be > 0 seconds, got {after!r}")
        for value, name in ((max_extra, "max_extra"), (min_samples, "min_samples")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Hedge {name} must be an int >= 1, got {value!r}")
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget <= 1:
            raise ConfigError(
                f"Hedge budget must be in (0, 1] (extra calls per call), got {budget!r}"
            )
        object.__setattr__(self, "after", threshold)
        object.__setattr__(self, "max_extra", max_extra)
        object.__setattr__(self, "budget", float(budget))
        object.__setattr__(self, "min_samples", min_samples)

    def __repr__(self) -> str:
        after = repr(self.after) if isinstance(self.after, str) else f"{self.after:g}"
        return f"Hedge(after={after}, max_extra={self.max_extra}, budget={self.budget:g})"


class Hedging:
    """One run's hedging: the threshold, the budget, the counts (see `Hedge`)."""

    __slots__ = (
        "_latencies",
        "_since",
        "_threshold",
        "attempts",
        "extra",
        "hedged",
        "policy",
        "won",
    )

    def __init__(self, policy: Hedge) -> None:
        self.policy = policy
        self._latencies: deque[float] = deque(maxlen=_SAMPLES)
        self._since = 0
        self._threshold: float | None = policy.after if isinstance(policy.after, float) else None
        self.attempts = 0
        """Attempts run through `run`."""
        self.extra = 0
        """Extra calls started."""
        self.hedged = 0
        """Attempts that started at least one extra call."""
        self.won = 0
        """Attempts whose result came from an extra call."""

    def threshold(self) -> float | None:
        """Seconds after which an attempt is hedged now, or None (not yet known)."""
        return self._threshold

    async def run(
        self,
        call: Callable[[], Awaitable[Any]],
        clock: Callable[[], float],
        scope: AttemptScope | None,
    ) -> Any:
        """One attempt: ``call()``, hedged with more ``call()`` s if it is slow."""
        self.attempts += 1
        after = self._threshold
        start = clock()
        if after is None:
            result = await call()
            self._succeeded(clock() - start)
            return result
        outcome: list[tuple[int, Any]] = []  # (call index, result) of the winner
        errors: list[Exception] = []
        finished = anyio.Event()
        running = [0]

        async def one(index: int) -> None:
            try:
                value = await call()
            except Exception as exc:
                errors.append(exc)
                running[0] -= 1
                if not running[0] and not outcome:
                    finished.set()
                return
            if not outcome:
                outcome.append((index, value))
                finished.set()

        async with anyio.create_task_group() as tg:
            running[0] += 1
            tg.start_soon(one, 0)
            extra = 0
            while not finished.is_set():
                can_hedge = extra < self.policy.max_extra and running[0] > 0
                with anyio.move_on_after(after if can_hedge else math.inf):
                    await finished.wait()
                if finished.is_set() or not self._affordable():
                    if not finished.is_set():
                        await finished.wait()  # no budget left: wait for the calls running
                    break
                extra += 1
                self.extra += 1
                if extra == 1:
                    self.hedged += 1
                running[0] += 1
                tg.start_soon(one, extra)
            tg.cancel_scope.cancel()  # the losers
        if scope is not None and extra:
            scope.hedged(extra, won=bool(outcome) and outcome[0][0] > 0)
        if not outcome:
            raise errors[0]
        index, value = outcome[0]
        if index:
            self.won += 1
        self._succeeded(clock() - start)
        return value

    def state(self) -> dict[str, Any]:
        """JSON-ready counts for the report."""
        p = self.policy
        return {
            "after": p.after,
            "max_extra": p.max_extra,
            "budget": p.budget,
            "attempts": self.attempts,
            "hedged": self.hedged,
            "extra_calls": self.extra,
            "won": self.won,
            "extra_ratio": self.extra / self.attempts if self.attempts else 0.0,
            "threshold": self._threshold,
        }

    def _affordable(self) -> bool:
        return self.extra + 1 <= self.policy.budget * self.attempts

    def _succeeded(self, latency: float) -> None:
        after = self.policy.after
        if not isinstance(after, str):
            return
        self._latencies.append(latency)
        self._since += 1
        n = len(self._latencies)
        if n >= self.policy.min_samples and (self._since >= _RECOMPUTE or self._threshold is None):
            self._since = 0
            ordered = sorted(self._latencies)
            q = float(after[1:]) / 100
            self._threshold = ordered[min(n - 1, int(q * n))]
