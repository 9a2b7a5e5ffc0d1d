"""Events a run emits, and the dispatcher that hands them to hooks.

Hooks are plain callables, sync or async, taking one `Event`. They run in a
dispatcher task of their own, in emission order: a slow hook delays only the
hooks, never the workers; a hook that raises is logged and the batch goes on.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

__all__ = [
    "BreakerClosed",
    "BreakerHalfOpen",
    "BreakerOpened",
    "BudgetExhausted",
    "ConcurrencyChanged",
    "Event",
    "EventDispatcher",
    "Hook",
    "JobDeadLettered",
    "JobsWaiting",
    "LoggingHook",
    "RetryScheduled",
    "RunAborted",
    "RunFinished",
    "RunStarted",
]

log = logging.getLogger("asyncbatch")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event. ``time`` is wall-clock epoch seconds."""

    run_id: str
    time: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        """The event's class name, e.g. ``"RetryScheduled"``."""
        return type(self).__name__

    def fields(self) -> dict[str, Any]:
        """The event's fields as a flat dict (for logs and alerts)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    """A run started (``resumed`` when the run id was already in the store)."""

    resumed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """A failed attempt will be retried after ``delay`` seconds."""

    key: str
    attempt: int
    delay: float
    kind: str
    error_type: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JobDeadLettered(Event):
    """A job failed for good and went to the dead-letter queue."""

    key: str
    attempts: int
    kind: str
    error_type: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerOpened(Event):
    """A dependency's circuit opened: calls are rejected for ``reset_timeout`` seconds.

    Attributes:
        dependency: the dependency.
        failures: consecutive failures counted when it opened.
        error_type: the type of the failure that tripped it ("" for a slow call).
        reason: the rule that opened it: ``"fail_max"`` (consecutive
            failures), ``"failure_rate"`` or ``"slow_rate"`` (its sliding
            window), ``"probe"`` (a failed half-open probe) or ``"probes
            failure_rate"`` / ``"probes slow_rate"`` (the judged probes of a
            rate breaker).
        failure_rate: the failure share that opened it (rate rules), else None.
        slow_rate: the slow share at that moment (rate rules), else None.
    """

    dependency: str
    failures: int = 0
    error_type: str = ""
    reason: str = "fail_max"
    failure_rate: float | None = None
    slow_rate: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConcurrencyChanged(Event):
    """An adaptive concurrency limit (``ab.Adaptive``) moved.

    Every decrease is reported; increases at most once a second (slow start
    raises the limit on every sample).

    Attributes:
        dependency: the dependency whose bulkhead it is, or ``""`` for the
            run's own ``concurrency=``.
        limit: the limit now.
        previous: the limit last reported.
        reason: ``"overload"`` (429/503, Retry-After, a timeout),
            ``"latency"`` (latency over its tolerance) or ``"grow"``.
    """

    dependency: str = ""
    limit: int
    previous: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerHalfOpen(Event):
    """A dependency's circuit lets probes through to test recovery."""

    dependency: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerClosed(Event):
    """A dependency recovered: its circuit is closed again."""

    dependency: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JobsWaiting(Event):
    """Jobs are parked behind a dependency's circuit (``on_open="park"``).

    Reported when the number changes (at most once a second), again every
    ``reset_timeout`` while it stays above zero, and once with
    ``waiting=0`` when the last of them was woken (or gave up). Each of
    them still ends at its ``deadline=``, if the run set one.

    Attributes:
        dependency: the dependency whose circuit they wait on.
        waiting: how many jobs wait on it now.
        state: its circuit: ``"open"``, ``"half_open"`` or ``"closed"``.
    """

    dependency: str
    waiting: int
    state: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetExhausted(Event):
    """The error budget is spent; ``action`` says whether the run aborts or alerts."""

    action: str
    reason: str
    failures: int = 0
    jobs: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunAborted(Event):
    """The run aborted (FATAL error or budget)."""

    error_type: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    """The run ended (also after an abort); ``counts`` by status value."""

    counts: dict[str, int]
    duration: float
    ok: bool


class Hook(Protocol):
    """Anything called with each event; may be sync or async."""

    def __call__(self, event: Event, /) -> Awaitable[None] | None: ...


HookLike = Callable[[Event], Any]


class LoggingHook:
    """A hook that writes each event as a structured stdlib `logging` record.

    The record's message names the event; ``extra`` carries ``event`` (the
    name) and every field of the event under ``asyncbatch_`` prefixes, ready
    for a JSON log formatter.

    Args:
        logger: the logger to write to (default ``logging.getLogger("asyncbatch")``).
        level: level for ordinary events; failures (dead letters, breaker
            opening, budget, aborts) and jobs waiting on an open circuit
            (`JobsWaiting` with ``waiting > 0``) are logged at WARNING or above.
    """

    _WARN = frozenset({"JobDeadLettered", "BreakerOpened", "BudgetExhausted"})

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger or log
        self.level = level

    def __call__(self, event: Event) -> None:
        name = event.name
        level = self.level
        if name in self._WARN or (isinstance(event, JobsWaiting) and event.waiting):
            level = max(level, logging.WARNING)
        elif name == "RunAborted":
            level = max(level, logging.ERROR)
        fields = event.fields()
        extra = {"event": name, **{f"asyncbatch_{k}": v for k, v in fields.items()}}
        detail = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("time",))
        self.logger.log(level, "%s %s", name, detail, extra=extra)


class EventDispatcher:
    """Queues events and delivers them, in order, to the hooks from one task."""

    def __init__(self, hooks: tuple[HookLike, ...]) -> None:
        # Validated (and a single hook made a tuple) with the other batch options.
        self.hooks = hooks
        self._queue: deque[Event] = deque()
        self._wake = anyio.Event()
        self._closed = False
        self._drain_timeout = 10.0
        self._scope: anyio.CancelScope | None = None

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def emit(self, event: Event) -> None:
        """Queue one event; never blocks."""
        if self.hooks and not self._closed:
            self._queue.append(event)
            self._wake.set()

    async def run(self) -> None:
        """Deliver events until `close` is called and the queue is drained."""
        with anyio.CancelScope() as self._scope:
            while True:
                while self._queue:
                    await self._deliver(self._queue.popleft())
                if self._closed:
                    return
                await self._wake.wait()
                self._wake = anyio.Event()
        if self._scope.cancelled_caught:
            log.warning(
                "asyncbatch: on_event hooks did not finish within %ss after the run ended; "
                "%d event(s) not delivered",
                self._drain_timeout,
                len(self._queue) + 1,
            )

    def close(self, drain_timeout: float = 10.0) -> None:
        """Stop once what is queued is delivered, or ``drain_timeout`` s from now.

        The bound keeps a hook that hangs (an alert endpoint that never
        answers) from holding the batch forever.
        """
        self._drain_timeout = drain_timeout
        self._closed = True
        self._wake.set()
        if self._scope is not None:
            self._scope.deadline = anyio.current_time() + drain_timeout

    async def _deliver(self, event: Event) -> None:
        for hook in self.hooks:
            try:
                ret = hook(event)
                if inspect.isawaitable(ret):
                    await ret
            except Exception:
                log.exception("asyncbatch: on_event hook %r raised on %s", hook, event.name)
