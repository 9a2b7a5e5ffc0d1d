"""PLACEHOLDER — the executor is being written."""

from __future__ import annotations

from typing import Any

__all__ = ["Batch", "redrive", "run_batch"]


async def run_batch(job: Any, items: Any, **options: Any) -> Any:
    raise NotImplementedError


class Batch:
    def __init__(self, job: Any, **options: Any) -> None:
        raise NotImplementedError


async def redrive(job: Any, **options: Any) -> Any:
    raise NotImplementedError
