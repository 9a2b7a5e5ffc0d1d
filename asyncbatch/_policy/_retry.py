"""Retry policies: how many attempts each `ErrorKind` gets and how long to wait.

The delay before retry ``n`` (n = 1 for the first retry) is::

    constant:     base = initial
    linear:       base = initial + increment * (n - 1)
    exponential:  base = initial * multiplier ** (n - 1)
    base = min(base, max)                       # overflow clamped to max

    jitter "none":          delay = base
    jitter "full":          delay = uniform(0, base)
    jitter "equal":         delay = base / 2 + uniform(0, base / 2)
    jitter "decorrelated":  delay = min(max, uniform(initial, 3 * previous_delay))

A ``retry_after`` on the exception raises the delay to at least that value
(it may exceed ``max``: the server said so).

With ``RetryPolicy(seed=...)`` each ``uniform`` draw comes from a source
derived from ``(seed, job key, attempt)``, so a job's delays are the same in
every run whatever order jobs fail in (for decorrelated jitter they also
depend on the job's own previous delay, itself reproducible). Unseeded runs
draw from one run-level `random.Random` (nothing is hashed per retry).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from asyncbatch._errors import ConfigError, ErrorKind

from ._classify import _as_kind

__all__ = [
    "NO_RETRY",
    "Backoff",
    "Decision",
    "Jitter",
    "Retry",
    "RetryPolicy",
    "as_policy",
    "next_delay",
    "seconds",
]

Jitter = Literal["none", "full", "equal", "decorrelated"]
_JITTERS = ("none", "full", "equal", "decorrelated")


def seconds(value: float | timedelta | None, name: str) -> float | None:
    """A duration option as float seconds (None stays None: no limit)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{name} must be seconds (a number or timedelta), got {value!r}")
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """A backoff schedule; build it with `constant`, `linear` or `exponential`."""

    strategy: Literal["constant", "linear", "exponential"]
    initial: float
    multiplier: float = 2.0
    increment: float = 0.0
    max: float = 30.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if self.jitter not in _JITTERS:
            raise ConfigError(f"jitter must be one of {', '.join(_JITTERS)}; got {self.jitter!r}")
        if self.multiplier < 1:
            raise ConfigError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if self.initial > self.max:
            raise ConfigError(f"initial ({self.initial}) must not exceed max ({self.max})")

    @classmethod
    def constant(cls, delay: float | timedelta = 0.1, *, jitter: Jitter = "none") -> Backoff:
        """The same delay before every retry."""
        d = seconds(delay, "delay") or 0.0
        return cls(strategy="constant", initial=d, max=d, jitter=jitter)

    @classmethod
    def linear(
        cls,
        initial: float | timedelta = 0.1,
        increment: float | timedelta = 0.1,
        *,
        max: float | timedelta = 30.0,
        jitter: Jitter = "full",
    ) -> Backoff:
        """``initial + increment * (n - 1)``, capped at ``max``."""
        return cls(
            strategy="linear",
            initial=seconds(initial, "initial") or 0.0,
            increment=seconds(increment, "increment") or 0.0,
            max=seconds(max, "max") or 0.0,
            jitter=jitter,
        )

    @classmethod
    def exponential(
        cls,
        initial: float | timedelta = 0.1,
        multiplier: float = 2.0,
        *,
        max: float | timedelta = 30.0,
        jitter: Jitter = "full",
    ) -> Backoff:
        """``initial * multiplier ** (n - 1)``, capped at ``max``."""
        return cls(
            strategy="exponential",
            initial=seconds(initial, "initial") or 0.0,
            multiplier=float(multiplier),
            max=seconds(max, "max") or 0.0,
            jitter=jitter,
        )

    def base(self, retry: int) -> float:
        """The un-jittered delay before retry number ``retry`` (1-based)."""
        n = max(retry, 1) - 1
        if self.strategy == "constant":
            return self.initial
        if self.strategy == "linear":
            return min(self.max, self.initial + self.increment * n)
        try:
            return min(self.max, self.initial * self.multiplier**n)
        except OverflowError:
            return self.max

    def delay(self, retry: int, previous: float, rng: random.Random) -> float:
        """The jittered delay before retry ``retry``; ``previous`` is the last delay."""
        if self.jitter == "decorrelated":
            low = self.initial
            high = max(low, 3 * (previous or low))
            return min(self.max, rng.uniform(low, high))
        base = self.base(retry)
        if self.jitter == "full":
            return rng.uniform(0.0, base)
        if self.jitter == "equal":
            return base / 2 + rng.uniform(0.0, base / 2)
        return base


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """How one kind of failure is retried.

    Args:
        attempts: total attempts including the first (1 = never retry).
        backoff: the delay schedule between attempts.
    """

    attempts: int = 5
    backoff: Backoff = field(default_factory=lambda: Backoff.exponential())

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigError(f"Retry(attempts=...) must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ConfigError(f"Retry(attempts=...) must be >= 1, got {self.attempts}")


NO_RETRY = Retry(attempts=1, backoff=Backoff.constant(0))

_DEFAULTS: dict[ErrorKind, Retry] = {
    ErrorKind.TRANSIENT: Retry(attempts=5, backoff=Backoff.exponential(0.05, 2, max=5)),
    ErrorKind.RECOVERABLE: Retry(attempts=5, backoff=Backoff.exponential(0.1, 2, max=30)),
    ErrorKind.PERMANENT: NO_RETRY,
    ErrorKind.FATAL: NO_RETRY,
}


class RetryPolicy:
    """One `Retry` per `ErrorKind`, with defaults for the kinds you leave out.

    Defaults: TRANSIENT 5 attempts, exponential from 50 ms to 5 s; RECOVERABLE
    5 attempts, exponential from 100 ms to 30 s; PERMANENT and FATAL never retry.

    Args:
        retries: ``{ErrorKind: Retry}`` overrides.
        seed: seeds the jitter so a run's delays are reproducible: the delay
            before a job's next attempt is a function of ``(seed, job key,
            attempt)`` (and, for decorrelated jitter, its previous delay),
            not of the order in which jobs fail.
    """

    __slots__ = ("_by_kind", "seed")

    def __init__(
        self, retries: Mapping[ErrorKind | str, Retry] | None = None, *, seed: int | None = None
    ) -> None:
        by_kind = dict(_DEFAULTS)
        for kind, retry in (retries or {}).items():
            if not isinstance(retry, Retry):
                raise ConfigError(f"RetryPolicy values must be ab.Retry, got {retry!r}")
            by_kind[_as_kind(kind)] = retry
        if by_kind[ErrorKind.FATAL].attempts != 1:
            raise ConfigError("FATAL errors abort the batch and cannot be retried")
        self._by_kind = by_kind
        self.seed = seed

    def __getitem__(self, kind: ErrorKind) -> Retry:
        return self._by_kind[kind]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k.name}: {v!r}" for k, v in self._by_kind.items())
        return f"RetryPolicy({{{inner}}}, seed={self.seed!r})"

    def rng(self) -> random.Random:
        """A fresh random source for one run (seeded when ``seed`` is set)."""
        return random.Random(self.seed)

    def rng_for(self, key: str, attempt: int, run_rng: random.Random) -> random.Random:
        """The jitter source for ``key``'s retry after ``attempt``.

        Seeded: a source derived from ``(seed, key, attempt)`` alone, so the
        delay does not depend on which job failed first. Unseeded: ``run_rng``.
        """
        if self.seed is None:
            return run_rng
        # A str seed is hashed with SHA-512 (not hash()): stable across processes.
        return random.Random(f"asyncbatch-jitter:{self.seed}:{key}:{attempt}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What an ``on_error`` handler decided for one failure (overrides the policy).

    Build one with `Decision.retry`, `Decision.dead_letter` or `Decision.abort`.
    """

    action: Literal["retry", "dead_letter", "abort"]
    after: float = 0.0

    @classmethod
    def retry(cls, after: float | timedelta = 0.0) -> Decision:
        """Retry after ``after`` seconds, even past the kind's attempt limit."""
        return cls(action="retry", after=seconds(after, "after") or 0.0)

    @classmethod
    def dead_letter(cls) -> Decision:
        """Stop retrying and dead-letter the job."""
        return cls(action="dead_letter")

    @classmethod
    def abort(cls) -> Decision:
        """Abort the whole batch as if the error were FATAL."""
        return cls(action="abort")


def next_delay(
    policy: RetryPolicy,
    kind: ErrorKind,
    attempt: int,
    previous: float,
    exc: BaseException,
    decision: Decision | None,
    rng: random.Random,
    testing: tuple[bool, int | None] = (False, None),
    *,
    key: str | None = None,
) -> float | None:
    """Seconds before attempt ``attempt + 1``, or None when there is none.

    An ``on_error`` decision overrides the policy; ``retry_after`` on the
    exception is a floor; ``testing`` (from `asyncbatch.testing`) zeroes every
    delay and may cap the attempts. With a seeded policy and ``key`` given,
    the jitter is a function of ``(seed, key, attempt)`` (see `RetryPolicy.rng_for`);
    otherwise it is drawn from ``rng``.
    """
    active, cap = testing
    if decision is not None:
        if decision.action != "retry":
            return None
        delay = decision.after
    else:
        if kind is ErrorKind.FATAL:
            return None
        retry = policy[kind]
        attempts = retry.attempts if cap is None else min(retry.attempts, cap)
        if attempt >= attempts:
            return None
        if key is not None and retry.backoff.jitter != "none":
            rng = policy.rng_for(key, attempt, rng)
        delay = retry.backoff.delay(attempt, previous, rng)
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
        delay = max(delay, float(retry_after))
    return 0.0 if active else delay


def as_policy(retry: RetryPolicy | Retry | None) -> RetryPolicy:
    """Normalise the ``retry=`` option (a single `Retry` applies to both retryable kinds)."""
    if retry is None:
        return RetryPolicy()
    if isinstance(retry, Retry):
        return RetryPolicy({ErrorKind.TRANSIENT: retry, ErrorKind.RECOVERABLE: retry})
    if isinstance(retry, RetryPolicy):
        return retry
    raise ConfigError(f"retry= must be an ab.RetryPolicy or ab.Retry, got {retry!r}")
