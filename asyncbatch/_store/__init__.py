"""PLACEHOLDER — being replaced by the store helper. Interface only."""

from __future__ import annotations

from ._protocol import DeadLetterQueue, FinishedJob, JobRecord, RunInfo, Store

__all__ = ["DeadLetterQueue", "FinishedJob", "JobRecord", "RunInfo", "Store", "open_store"]


def open_store(url: str, *, durability: str = "normal") -> Any:  # type: ignore[name-defined]  # noqa: F821
    raise NotImplementedError
