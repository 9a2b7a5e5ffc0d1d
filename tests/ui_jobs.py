"""Jobs for the dashboard's tests (importable by reference, so the dashboard can redrive them)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncbatch as ab

ITEMS = [{"n": i, "fail": i % 5 == 0, "conn": i % 10 == 3} for i in range(40)]
"""A run's input: 8 permanent (0, 5, ... 35) and 4 transient (3, 13, 23, 33) dead letters."""

RETRY = ab.RetryPolicy(
    {ab.ErrorKind.TRANSIENT: ab.Retry(attempts=2, backoff=ab.Backoff.constant(0))}
)
"""Transient failures get one retry, at once."""

BROKEN = True
"""While True, items with ``"fail"`` set raise; tests set it False before a redrive."""

GATES: dict[str, asyncio.Event] = {}
"""Items with ``"gate": NAME`` wait for ``GATES[NAME]``: a live run the test lets go in steps."""


async def job(item: dict[str, Any]) -> int:
    if "gate" in item:
        await GATES[item["gate"]].wait()
    if BROKEN and item.get("fail"):
        raise ValueError(f"item {item['n']} is bad")  # PERMANENT: straight to the DLQ
    if BROKEN and item.get("conn"):
        raise ConnectionRefusedError(f"item {item['n']}: connection refused")
    return int(item["n"]) * 2
