"""Timing helpers shared by the benchmark modules."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator

__all__ = ["best_of", "interleaved", "row", "table"]


def best_of(make: Callable[[], Awaitable[object]], repeat: int = 3) -> float:
    """The fastest of ``repeat`` fresh runs, in seconds (each in its own event loop)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        asyncio.run(make())  # type: ignore[arg-type]
        best = min(best, time.perf_counter() - start)
    return best


def interleaved(
    variants: dict[str, Callable[[], Awaitable[object]]], rounds: int = 5
) -> dict[str, float]:
    """The median seconds of each variant over ``rounds`` rounds, run in turn each round.

    Interleaving spreads a noisy neighbour's bursts over every variant alike,
    so the ratios between them hold even when the absolute figures move.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, make in variants.items():
            gc.collect()
            start = time.perf_counter()
            asyncio.run(make())  # type: ignore[arg-type]
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def row(name: str, value: str, target: str = "", ok: bool | None = None) -> list[str]:
    """One result line: name, measured value, target, verdict."""
    verdict = "" if ok is None else ("PASS" if ok else "MISS")
    return [name, value, target, verdict]


def table(title: str, rows: list[list[str]]) -> str:
    """Rows as a Markdown table (pasted into the README as is)."""
    out = [f"\n### {title}\n", "| scenario | measured | target | |", "|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


@contextlib.contextmanager
def sqlite_writer(mode: str) -> Iterator[None]:
    """Inside: SQLite stores opened commit their large groups in the writer process
    (``"process"``) or every commit in the connection's thread (``"thread"``)."""
    before = os.environ.get("ASYNCBATCH_SQLITE_WRITER")
    os.environ["ASYNCBATCH_SQLITE_WRITER"] = mode
    try:
        yield
    finally:
        if before is None:
            del os.environ["ASYNCBATCH_SQLITE_WRITER"]
        else:
            os.environ["ASYNCBATCH_SQLITE_WRITER"] = before
