"""Timing helpers shared by the benchmark modules."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable

__all__ = ["best_of", "row", "table"]


def best_of(make: Callable[[], Awaitable[object]], repeat: int = 3) -> float:
    """The fastest of ``repeat`` fresh runs, in seconds (each in its own event loop)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        asyncio.run(make())  # type: ignore[arg-type]
        best = min(best, time.perf_counter() - start)
    return best


def row(name: str, value: str, target: str = "", ok: bool | None = None) -> list[str]:
    """One result line: name, measured value, target, verdict."""
    verdict = "" if ok is None else ("PASS" if ok else "MISS")
    return [name, value, target, verdict]


def table(title: str, rows: list[list[str]]) -> str:
    """Rows as a Markdown table (pasted into the README as is)."""
    out = [f"\n### {title}\n", "| scenario | measured | target | |", "|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
