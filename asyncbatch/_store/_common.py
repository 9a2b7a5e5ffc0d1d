"""What every store shares, in one import: encoding, rows, DLQ base, ownership, durability.

The pieces live in `_encoding` (values as stored text), `_rows` (records ↔
rows ↔ values), `_dlq_base` (the public DLQ API, atomic paged export) and
`_ownership` (the lease rule); this module re-exports them for the stores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Literal

from asyncbatch._errors import ConfigError

from ._dlq_base import (
    DLQ_STATUSES,
    EXPORT_PAGE,
    DeadLetterFilter,
    DeadLetterQueueBase,
    export_jsonl,
)
from ._encoding import (
    decode,
    encode,
    encode_history,
    encode_payload,
    is_utf8,
    merge_history,
    safe_repr,
    storable_key,
    storable_text,
)
from ._ownership import check_lease, owner_is_gone, owning_here
from ._protocol import DEFAULT_LEASE
from ._rows import (
    FINISHED,
    JOB_COLUMNS,
    JobRow,
    as_records,
    dead_letter,
    finished_job,
    is_compensation,
    is_plain_success,
    job_row,
    outcome_record,
    result_text,
    storable_record,
    success_row,
    zero_counts,
)

__all__ = [
    "DEFAULT_LEASE",
    "DLQ_STATUSES",
    "EXPORT_PAGE",
    "FINISHED",
    "JOB_COLUMNS",
    "Clock",
    "DeadLetterFilter",
    "DeadLetterQueueBase",
    "Durability",
    "JobRow",
    "as_records",
    "check_durability",
    "check_lease",
    "dead_letter",
    "decode",
    "encode",
    "encode_history",
    "encode_payload",
    "export_jsonl",
    "finished_job",
    "is_compensation",
    "is_plain_success",
    "is_utf8",
    "job_row",
    "mark_seen",
    "merge_history",
    "outcome_record",
    "owner_is_gone",
    "owning_here",
    "result_text",
    "safe_repr",
    "storable_key",
    "storable_record",
    "storable_text",
    "success_row",
    "wall_clock",
    "zero_counts",
]

Clock = Callable[[], float]
Durability = Literal["normal", "full"]


def check_durability(durability: str) -> Durability:
    """Validate a ``durability=`` option."""
    if durability == "normal":
        return "normal"
    if durability == "full":
        return "full"
    raise ConfigError(
        f"durability must be 'normal' (survives a crash) or 'full' (fsync, survives "
        f"power loss), got {durability!r}"
    )




def wall_clock() -> float:
    """The default clock: epoch seconds."""
    return time.time()


def mark_seen(fut: asyncio.Future[Any]) -> None:
    """A done callback that marks a future's error as seen: nobody awaits it any more
    (its caller was cancelled, or an error before it ended the wait)."""
    if not fut.cancelled():
        fut.exception()
