"""`Window`: the sliding window of call outcomes a failure-rate breaker judges.

Two shapes, as in Resilience4j:

- **count-based** (``window=100``): the last ``n`` counted calls, a ring of
  outcomes with running sums (O(1) per call, ``n`` small ints of memory);
- **time-based** (``window=timedelta(seconds=30)``): the calls that ended in
  the last ``span`` seconds of the loop clock, kept in `BUCKETS` buckets of
  ``span / BUCKETS`` seconds each (memory bounded by the bucket count, not by
  the call rate). A bucket leaves the window whole once it is entirely older
  than ``span``, so the window covers between ``span`` and
  ``span * (1 + 1/BUCKETS)`` seconds.
"""

from __future__ import annotations

from collections import deque

__all__ = ["BUCKETS", "Window"]

BUCKETS = 20
"""Buckets of a time-based window (its resolution is ``span / BUCKETS``)."""

_FAILED = 1
_SLOW = 2


class Window:
    """Counted calls of the recent past: how many, how many failed, how many were slow.

    Args:
        size: the number of calls of a count-based window, or None.
        span: the seconds of a time-based window, or None (exactly one of the two).
    """

    __slots__ = ("_buckets", "_ring", "_size", "_span", "_width", "calls", "failures", "slows")

    def __init__(self, *, size: int | None = None, span: float | None = None) -> None:
        if (size is None) == (span is None):
            raise ValueError("a Window is either count-based (size) or time-based (span)")
        self._size = size
        self._span = span
        self._width = span / BUCKETS if span is not None else 0.0
        self._ring: deque[int] = deque()
        self._buckets: deque[list[float]] = deque()  # [start, calls, failures, slows]
        self.calls = 0
        self.failures = 0
        self.slows = 0

    def __repr__(self) -> str:
        shape = f"size={self._size}" if self._size is not None else f"span={self._span:g}"
        return f"<Window {shape} calls={self.calls} failures={self.failures} slows={self.slows}>"

    def add(self, *, failed: bool, slow: bool, now: float) -> None:
        """Count one call that ended at ``now`` (loop clock)."""
        if self._size is not None:
            ring = self._ring
            if len(ring) == self._size:
                old = ring.popleft()
                self.calls -= 1
                self.failures -= old & _FAILED
                self.slows -= (old & _SLOW) >> 1
            ring.append((_FAILED if failed else 0) | (_SLOW if slow else 0))
        else:
            self._expire(now)
            buckets = self._buckets
            if not buckets or now >= buckets[-1][0] + self._width:
                buckets.append([now, 0, 0, 0])
            bucket = buckets[-1]
            bucket[1] += 1
            bucket[2] += failed
            bucket[3] += slow
        self.calls += 1
        self.failures += failed
        self.slows += slow

    def clear(self) -> None:
        """Forget every call (the circuit changed state)."""
        self._ring.clear()
        self._buckets.clear()
        self.calls = self.failures = self.slows = 0

    def _expire(self, now: float) -> None:
        assert self._span is not None
        buckets = self._buckets
        horizon = now - self._span
        while buckets and buckets[0][0] + self._width <= horizon:
            _, calls, failures, slows = buckets.popleft()
            self.calls -= int(calls)
            self.failures -= int(failures)
            self.slows -= int(slows)
