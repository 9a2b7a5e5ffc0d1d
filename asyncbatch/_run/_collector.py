"""The cyclic garbage collector's young generation, given room while runs are active.

CPython collects its youngest generation after every 700 net allocations of
objects it tracks. A run keeps one such object per finished job (its
`JobOutcome`) and has several per job in flight (task, coroutine, future,
timer, entry), so with the default the collector walked every job in flight
once per 700 finished jobs: at concurrency 1,000 with 10 ms jobs that was 7%
of the instructions per job (callgrind), and it grew with the concurrency.

While at least one run is active, the young generation's threshold is raised
to ``max(current, 10,000, 20 x concurrency)`` and put back when the last run
ends, unless something else changed it meanwhile. Nothing else changes: the
collector stays enabled, the older generations keep their thresholds, and a
disabled collector is left alone. ``ASYNCBATCH_GC=leave`` in the environment
turns this off.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_tuned"]

FLOOR = 10_000
PER_SLOT = 20

_active = 0
_saved: tuple[int, int, int] | None = None
"""The thresholds before the first active run tuned them."""
_set: tuple[int, int, int] | None = None
"""The thresholds this module last set (restored only if they are still these)."""


@contextmanager
def collector_tuned(concurrency: int) -> Iterator[None]:
    """Give the young generation room for ``concurrency`` jobs in flight while inside."""
    global _active, _saved, _set
    if not gc.isenabled() or os.environ.get("ASYNCBATCH_GC") == "leave":
        yield
        return
    current = gc.get_threshold()
    if _active == 0:
        _saved, _set = current, None
    _active += 1
    young = max(current[0], FLOOR, PER_SLOT * concurrency)
    if young != current[0]:
        _set = (young, *current[1:])
        gc.set_threshold(*_set)
    try:
        yield
    finally:
        _active -= 1
        if _active == 0:
            if _set is not None and _saved is not None and gc.get_threshold() == _set:
                gc.set_threshold(*_saved)
            _saved = _set = None
