"""Isolating the bad items of a chunk that failed as a whole with a PERMANENT error.

One poison item must not dead-letter its 99 neighbours, and finding it must
not cost a call per item. The suspects (a group known to fail) are split in
halves and only the first half is called:

- it fails: the poison is there (the group narrows to it); the second half
  is set aside, untested, and called as one chunk once the poison is found;
- it succeeds (its items are done): the poison is in the second half, which
  is not called as a whole but split at once (it is only *inferred* to fail).

Each halving costs one call, so one poison item among N is narrowed down in
ceil(log2 N) calls. An item is dead-lettered only after a call of that item
alone failed, with that call's own error: when the last step was an
inference, the item is called alone once more (+1). If that call succeeds
after all (the chunk failed as a whole, say too large a request, and no item
alone), it is simply a success. Hence one poison item among N is isolated and
dead-lettered in at most ceil(log2 N) + 1 extra calls (8 for N = 100), and
its neighbours set aside finish in at most one more call; further bad items
among those are isolated the same way. Nine extra calls in all is the least
any strategy can promise for N = 100 without dead-lettering an item that
never failed a call of its own (a search over every strategy that calls a
part of the suspects, with or without the items set aside, finds none
better); trusting the inference instead would save that call but
dead-letter an innocent item whenever a chunk fails only as a whole.

A call of a split that fails in any other way (a retryable error, FATAL, an
open circuit, per-item errors) is handled by the chunk path as usual: those
items leave the bisection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._entry import Entry

__all__ = ["Failure", "isolate"]

Failure = tuple[Exception, float]
"""A call that failed PERMANENT as a whole: its error and when it started (perf_counter)."""
Attempt = Callable[[list["Entry"]], Awaitable["Failure | None"]]
"""Call these entries as one chunk; a `Failure` when it failed PERMANENT as a whole
(nothing was settled), None when every entry was handed to the outcome path."""
DeadLetter = Callable[["Entry", Exception, float], None]


async def isolate(
    suspects: list[Entry], failure: Failure, attempt: Attempt, dead_letter: DeadLetter
) -> int:
    """Find and dead-letter the bad items of ``suspects`` (which failed with ``failure``).

    Args:
        suspects: the entries of the chunk that failed, at least one.
        failure: that call's error and start.
        attempt: calls a sub-chunk (see `Attempt`).
        dead_letter: dead-letters one entry with the error of its own solo call.

    Returns:
        The calls made.
    """
    calls = 0
    todo: list[tuple[list[Entry], Failure | None]] = [(suspects, failure)]
    while todo:
        group, known = todo.pop()
        if known is None:  # set aside untested: call it as one chunk first
            known = await attempt(group)
            calls += 1
            if known is None:
                continue
        verified = True  # `known` is the error of a call of exactly `group`
        aside: list[Entry] = []
        while len(group) > 1:
            half = (len(group) + 1) // 2
            first, rest = group[:half], group[half:]
            failed = await attempt(first)
            calls += 1
            if failed is None:
                group, verified = rest, False
            else:
                aside.extend(rest)
                group, known, verified = first, failed, True
        if verified:
            dead_letter(group[0], *known)
        else:
            alone = await attempt(group)
            calls += 1
            if alone is not None:
                dead_letter(group[0], *alone)
        if aside:
            todo.append((aside, None))
    return calls
