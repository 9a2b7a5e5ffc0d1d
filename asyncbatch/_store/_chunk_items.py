"""A shared run's chunk of input items as stored text: JSON when it says exactly the same.

Workers receive the items a coordinator enqueued through the database, so a
job must get what it would get in one process. JSON is used when it gives
the items back equal (ints, strs, dicts with str keys, lists); anything it
would change or cannot hold (a tuple becoming a list, int dict keys, sets,
datetimes, objects) is pickled instead, like the run's stored policy: only
join runs of a database you trust.
"""

from __future__ import annotations

import base64
import json
import pickle
from typing import Any

from ._encoding import encode

__all__ = ["LOCAL", "Unsendable", "items_of", "items_text"]

_PICKLE = "pickle:"  # JSON text of a list starts with "[": the two never meet
LOCAL = "local:"
"""The text of a chunk whose items stay with the coordinator (they cannot travel)."""


class Unsendable(TypeError):
    """An item can be neither JSON nor pickled, so no other process could run it."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"a shared run sends its input to other processes through the database, and "
            f"{reason}; HINT: pass JSON-safe items, or objects of classes defined at module "
            "level (or leave shared= at its default: the coordinator then runs such items)"
        )


def items_text(items: list[Any]) -> str:
    """``items`` as text a PostgreSQL ``text`` column holds.

    Raises:
        Unsendable: an item can be neither JSON nor pickled (a local class,
            a lock), so no other process could run it.
    """
    text = encode(items)
    if text is not None:
        try:
            if json.loads(text) == items:
                return text
        except (ValueError, RecursionError):
            pass
    try:
        data = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise Unsendable(
            f"an item can be neither JSON nor pickled ({type(exc).__name__}: {exc})"
        ) from None
    return _PICKLE + base64.b64encode(data).decode("ascii")


def items_of(text: str) -> list[Any]:
    """The items `items_text` wrote."""
    if text.startswith(_PICKLE):
        items: list[Any] = pickle.loads(base64.b64decode(text[len(_PICKLE) :]))
        return items
    decoded: list[Any] = json.loads(text)
    return decoded
