"""Batch options: the keywords of `run_batch`/`Batch`, validated once."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from asyncbatch._errors import ConfigError
from asyncbatch._policy._classify import ClassifierLike, as_classifier
from asyncbatch._policy._retry import (
    Decision,
    Retry,
    RetryPolicy,
    as_policy,
    seconds,
)
from asyncbatch._store._codec import CodecLike, ResultCodec, as_codec

from ._shared_run import SharedRun

if TYPE_CHECKING:
    from asyncbatch._context import JobContext
    from asyncbatch._deps import Adaptive, Rate
    from asyncbatch._deps._breaker import Breaker
    from asyncbatch._observe._events import Event
    from asyncbatch._policy._budget import ErrorBudget
    from asyncbatch._policy._retry_budget import RetryBudget
    from asyncbatch._store import Store

    from ._hedge import Hedge

__all__ = ["BatchOptions", "Options", "RedriveOptions", "build_options"]

Durability = Literal["normal", "full"]
ErrorHandler = Callable[[BaseException, "JobContext"], "Decision | None"]


class RedriveOptions(TypedDict, total=False):
    """The keywords of `ab.redrive` besides its own: every batch option but ``key``,
    ``run_id`` and ``store`` (see the README's configuration reference)."""

    concurrency: int | Adaptive
    retry_dead: bool
    force_resume: bool
    durability: Durability
    classify: ClassifierLike | None
    retry: RetryPolicy | Retry | None
    on_error: ErrorHandler | None
    timeout: float | timedelta | None
    deadline: float | timedelta | None
    limits: Mapping[str, int | Adaptive] | None
    rates: Mapping[str, Rate] | None
    breakers: Mapping[str, Breaker] | None
    uses: Sequence[str] | str | None
    budget: ErrorBudget | None
    retry_budget: RetryBudget | None
    hedge: Hedge | None
    compensate: Callable[[Any, Any], Awaitable[Any]] | None
    compensate_retry: Retry | None
    on_event: Callable[[Event], Any] | Iterable[Callable[[Event], Any]] | None
    tracer_provider: Any
    meter_provider: Any
    result_codec: CodecLike
    batch_size: int | None
    batch_wait: float | timedelta


class BatchOptions(RedriveOptions, total=False):
    """The keywords of `ab.run_batch` and `ab.Batch`, for IDEs and type checkers.

    ``run_batch(job, items, **options: Unpack[BatchOptions])``: a misspelt
    keyword (``concurency=10``) is a type error, and every option completes.
    Build one to pass options around: ``opts: ab.BatchOptions = {"concurrency": 10}``.
    """

    key: Callable[[Any], str] | None
    run_id: str | None
    store: Store | str | None
    shared: bool | SharedRun | Literal["auto"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """Every batch option, normalised (durations in float seconds).

    ``concurrency`` is the initial number of workers; with
    ``concurrency=ab.Adaptive(...)`` it is the policy's ``initial`` and
    ``adaptive`` holds the policy.
    """

    concurrency: int
    adaptive: Adaptive | None
    key: Callable[[Any], str] | None
    run_id: str | None
    store: Store | str | None
    retry_dead: bool
    force_resume: bool
    durability: Durability
    classify: Callable[[BaseException], Any]
    retry: RetryPolicy
    on_error: ErrorHandler | None
    timeout: float | None
    deadline: float | None
    limits: Mapping[str, int | Adaptive] | None
    rates: Mapping[str, Rate] | None
    breakers: Mapping[str, Breaker] | None
    uses: tuple[str, ...]
    budget: ErrorBudget | None
    retry_budget: RetryBudget | None
    hedge: Hedge | None
    compensate: Callable[[Any, Any], Awaitable[Any]] | None
    compensate_retry: Retry
    on_event: tuple[Callable[[Event], Any], ...]
    tracer_provider: Any
    meter_provider: Any
    result_codec: ResultCodec | None
    # Not an option: extra JSON fields for the run's stored config. The CLI demo
    # keeps its settings there so that `asyncbatch demo --run-id` resumes the
    # same batch. Set with dataclasses.replace on a Batch's options.
    run_config: Mapping[str, Any] = field(default_factory=dict)
    shared: SharedRun | None = None
    """Many worker processes share the run (``shared=True`` or an `ab.SharedRun`)."""
    shared_auto: bool = False
    """``shared`` came from ``"auto"`` (a PostgreSQL store): a run whose job or
    options cannot be sent to other processes is worked by the coordinator alone."""
    batch_size: int | None = None
    """Items per call (``batch_size=``): the job takes a list; None = one item per call."""
    batch_wait: float = 0.0
    """Seconds a chunk waits for more ready items before it goes out short (0 = none)."""


def postgres_url(store: object) -> str | None:
    """The URL of a PostgreSQL store (a URL, or an open `PostgresStore`), else None."""
    if isinstance(store, str):
        return store if store.startswith(("postgresql:", "postgres:")) else None
    module = sys.modules.get("asyncbatch._store._postgres")  # loaded if one is open
    if module is not None and isinstance(store, module.PostgresStore):
        # Its own URL with the password (store.url has none): a shared run opens its own pools.
        t = store._target
        from urllib.parse import urlencode

        options = urlencode({"schema": t.schema, "retry_timeout": t.retry_timeout})
        return f"{t.dsn}{'&' if '?' in t.dsn else '?'}{options}"
    return None


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


def _hooks(on_event: object) -> tuple[Callable[[Event], Any], ...]:
    if on_event is None:
        return ()
    if callable(on_event):
        return (on_event,)
    if not isinstance(on_event, Iterable):
        raise ConfigError(f"on_event must be a callable or a list of callables, got {on_event!r}")
    hooks = tuple(on_event)
    for h in hooks:
        if not callable(h):
            raise ConfigError(f"on_event must be a callable or a list of callables, got {h!r}")
    return hooks


def build_options(
    *,
    concurrency: int | Adaptive = 100,
    key: Callable[[Any], str] | None = None,
    run_id: str | None = None,
    store: Store | str | None = None,
    retry_dead: bool = False,
    force_resume: bool = False,
    durability: Durability = "normal",
    classify: ClassifierLike | None = None,
    retry: RetryPolicy | Retry | None = None,
    on_error: ErrorHandler | None = None,
    timeout: float | timedelta | None = None,
    deadline: float | timedelta | None = None,
    limits: Mapping[str, int | Adaptive] | None = None,
    rates: Mapping[str, Rate] | None = None,
    breakers: Mapping[str, Breaker] | None = None,
    uses: Sequence[str] | str | None = None,
    budget: ErrorBudget | None = None,
    retry_budget: RetryBudget | None = None,
    hedge: Hedge | None = None,
    compensate: Callable[[Any, Any], Awaitable[Any]] | None = None,
    compensate_retry: Retry | None = None,
    on_event: Callable[[Event], Any] | Iterable[Callable[[Event], Any]] | None = None,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    result_codec: CodecLike = "json",
    shared: bool | SharedRun | Literal["auto"] = "auto",
    batch_size: int | None = None,
    batch_wait: float | timedelta = 0.0,
) -> Options:
    """Validate the keywords; raises `ConfigError` with a one-line fix."""
    auto = isinstance(shared, str) and shared == "auto"
    if auto:  # shared when the store is PostgreSQL (chunked calls are not shared yet)
        shared = postgres_url(store) is not None and batch_size is None
    if not isinstance(shared, bool | SharedRun):
        raise ConfigError(
            f'shared must be "auto", True, False or an ab.SharedRun, got {shared!r}'
        )
    if durability not in ("normal", "full"):
        raise ConfigError(f'durability must be "normal" or "full", got {durability!r}')
    if key is not None and not callable(key):
        raise ConfigError(f"key must be a callable item -> str, got {key!r}")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ConfigError(f"run_id must be a non-empty str, got {run_id!r}")
    if on_error is not None and not callable(on_error):
        raise ConfigError(
            f"on_error must be a callable(exc, job) -> ab.Decision | None, got {on_error!r}"
        )
    if compensate is not None and not callable(compensate):
        raise ConfigError(f"compensate must be an async def undo(item, result), got {compensate!r}")
    if isinstance(uses, str):
        uses = (uses,)
    uses_t = tuple(uses or ())
    for name in uses_t:
        if not isinstance(name, str):
            raise ConfigError(f"uses must name dependencies (str), got {name!r}")
    if budget is not None:
        from asyncbatch._policy._budget import ErrorBudget

        if not isinstance(budget, ErrorBudget):
            raise ConfigError(f"budget must be an ab.ErrorBudget, got {budget!r}")
    if retry_budget is not None:
        from asyncbatch._policy._retry_budget import RetryBudget

        if not isinstance(retry_budget, RetryBudget):
            raise ConfigError(
                f"retry_budget must be an ab.RetryBudget, got {retry_budget!r}; "
                "HINT: retry_budget=ab.RetryBudget(ratio=0.2, min_per_second=10)"
            )
    if hedge is not None:
        from ._hedge import Hedge

        if not isinstance(hedge, Hedge):
            raise ConfigError(
                f'hedge must be an ab.Hedge, got {hedge!r}; HINT: hedge=ab.Hedge(after="p95")'
            )
    wait = _chunking(batch_size, batch_wait, shared)
    adaptive = None
    if not isinstance(concurrency, int):
        from asyncbatch._deps import Adaptive

        if isinstance(concurrency, Adaptive):
            adaptive, concurrency = concurrency, concurrency.initial
    return Options(
        concurrency=_positive_int(concurrency, "concurrency"),
        adaptive=adaptive,
        key=key,
        run_id=run_id,
        store=store,
        retry_dead=bool(retry_dead),
        force_resume=bool(force_resume),
        durability=durability,
        classify=as_classifier(classify),
        retry=as_policy(retry),
        on_error=on_error,
        timeout=seconds(timeout, "timeout"),
        deadline=seconds(deadline, "deadline"),
        limits=limits,
        rates=rates,
        breakers=breakers,
        uses=uses_t,
        budget=budget,
        retry_budget=retry_budget,
        hedge=hedge,
        compensate=compensate,
        compensate_retry=compensate_retry or Retry(attempts=3),
        on_event=_hooks(on_event),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        result_codec=as_codec(result_codec),
        shared=SharedRun() if shared is True else (shared or None),
        shared_auto=auto and shared is True,
        batch_size=batch_size,
        batch_wait=wait,
    )


def _chunking(batch_size: object, batch_wait: object, shared: object) -> float:
    """Check ``batch_size=``/``batch_wait=``; returns the wait in seconds."""
    if batch_size is not None:
        _positive_int(batch_size, "batch_size")
        if shared:
            raise ConfigError(
                "batch_size= cannot be combined with shared= yet; run the chunked batch "
                "in one process (drop shared=), or call one item per job"
            )
    try:
        wait = seconds(batch_wait, "batch_wait")  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConfigError(f"{exc}; HINT: batch_wait=0.05 waits 50 ms to fill a chunk") from None
    if wait and batch_size is None:
        raise ConfigError(
            "batch_wait= needs batch_size=; HINT: batch_size=100, batch_wait=0.05"
        )
    return wait or 0.0
