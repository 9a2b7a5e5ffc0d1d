"""Run identity: how a run's keys were made and which job it ran, checked on resume.

A resume trusts the stored outcomes by key. If the keys are made another way
this time (``--key id`` first, positions next), every stored key means a
different item, and the run re-runs or merges work silently; if the job is
another one, its stored results are not this job's. So a run stores both
(in its config) and a resume that differs is refused with one line naming
both, unless ``force_resume=True`` says the user knows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from asyncbatch._errors import ConfigError

__all__ = ["callable_name", "check_identity", "key_spec"]


def callable_name(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a function, method or callable object (wrappers unwrapped)."""
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    target: Any = fn if hasattr(fn, "__qualname__") else type(fn)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}:{getattr(target, '__qualname__', repr(target))}"


def key_spec(key: Callable[[Any], Any] | None) -> str:
    """How a run's keys are made: ``"position"``, a declared spec, or the key function's name.

    A key callable may declare its own spec with an ``__asyncbatch_key__``
    string attribute (the CLI's ``--key FIELD`` says ``"field 'FIELD'"``).
    """
    if key is None:
        return "position"
    declared = getattr(key, "__asyncbatch_key__", None)
    if isinstance(declared, str):
        return declared
    return callable_name(key)


def check_identity(run_id: str, stored: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuse a resume whose key spec or job differs from the stored run's.

    Runs stored before identities were recorded have neither field and pass.

    Raises:
        ConfigError: naming what differs, both values, and the override.
    """
    for field in ("key", "job"):
        before, after = stored.get(field), now.get(field)
        if before is None or after is None or before == after:
            continue
        what = "keys are made" if field == "key" else "job is"
        raise ConfigError(
            f"run {run_id!r} was started with {field} {before}, this resume's {what} "
            f"{after}: its stored outcomes would be matched to the wrong items; resume "
            f"with the same {field}, use a new run_id, or pass force_resume=True "
            f"(CLI: --force-resume) if they are the same"
        )
    _check_chunking(run_id, stored, now)


def _check_chunking(run_id: str, stored: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuse a resume that switches between chunked calls (``batch_size=``) and single items.

    The job of a chunked run takes lists: called with single items (or the
    other way round) every job would fail. A different ``batch_size`` is fine.
    """
    if "batch_size" not in stored or "batch_size" not in now:
        return  # a run stored before chunked calls existed
    before, after = stored["batch_size"], now["batch_size"]
    if (before is None) == (after is None):
        return
    if before is not None:
        was, fix = f"batch_size={before} (a job taking lists)", "pass batch_size= again (any size)"
    else:
        was, fix = "one item per call", "drop batch_size="
    raise ConfigError(
        f"run {run_id!r} was started with {was} and this resume has batch_size={after}: the "
        f"job would get the wrong arguments; {fix}, or use a new run_id"
    )
