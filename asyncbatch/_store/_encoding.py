"""Values as stored text: JSON that never fails, text a database accepts, bounded reprs.

Stores keep results and payloads as JSON *text* and decode on every read, so a
caller can never mutate stored state through a value it got back, and the
in-memory store behaves exactly like SQLite (a tuple comes back as a list).
Nothing here raises for a value: what cannot be stored as it is is escaped
or replaced by a bounded repr, so one value never fails a commit group.
"""

from __future__ import annotations

import json
import reprlib
from typing import Any

from asyncbatch._result import AttemptRecord

__all__ = [
    "decode",
    "encode",
    "encode_history",
    "encode_payload",
    "is_utf8",
    "merge_history",
    "optional_text",
    "plain_text",
    "safe_repr",
    "storable_key",
    "storable_text",
]

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_dumps_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
_loads = json.loads
_short_repr = reprlib.Repr()
_short_repr.maxlevel = 4
_short_repr.maxstring = _short_repr.maxother = 200


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogates)."""
    if text.isascii():  # O(1) in CPython: the commonest case costs nothing
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode(value: Any) -> str | None:
    """``value`` as JSON text, or None when it cannot be (never raises).

    The executor already passes JSON-safe values; this only keeps a store
    from crashing on one that slipped through (a set, an object, a cycle,
    nesting deeper than the recursion limit, an int too long for `str`).
    Text holding a lone surrogate (what `os.fsdecode` makes of a non-UTF-8
    name) is not UTF-8 and a SQLite or PostgreSQL driver refuses it: such a
    value is written with ASCII escapes (``"\\udcff"``), which `decode`
    turns back into exactly the same string.
    """
    try:
        if type(value) is int:  # the commonest result; str() is its exact JSON form
            return str(value)
        text = _dumps(value)
    except (TypeError, ValueError, RecursionError):
        return None
    return text if text.isascii() or is_utf8(text) else _dumps_ascii(value)


def safe_repr(value: Any) -> str:
    """The repr of ``value``, made safe to store: never raises, never recurses without bound.

    Used for what cannot be stored as JSON. A value nested deeper than the
    recursion limit (which breaks `repr` as it breaks `json`) gets a
    `reprlib` summary of its first levels; one whose ``__repr__`` fails is
    named by its type. Lone surrogates are escaped (`storable_text`).
    """
    try:
        text = repr(value)
    except RecursionError:
        try:
            text = _short_repr.repr(value)
        except Exception:  # RecursionError too: a custom __repr__ deep inside
            text = f"<{type(value).__name__} too deep to store>"
    except Exception:
        text = f"<{type(value).__name__} (repr failed)>"
    return storable_text(text)


def plain_text(text: str) -> bool:
    """Whether every store can write ``text`` as it is (UTF-8, and no NUL for PostgreSQL)."""
    return "\x00" not in text and is_utf8(text)


def storable_text(text: str) -> str:
    """``text`` with lone surrogates and NULs written as ``\\udcff`` / ``\\x00`` escapes.

    For messages, tracebacks, error types and keys: readable, and applied on
    every write and every lookup, so the same text always maps to the same
    stored text (``storable_text(storable_text(t)) == storable_text(t)``).
    Lone surrogates are not UTF-8 (SQLite and PostgreSQL drivers refuse
    them) and PostgreSQL's ``text`` cannot hold a NUL character; every store
    escapes both, so a key is stored (and shown) alike everywhere.
    """
    if plain_text(text):
        return text
    if not is_utf8(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def storable_key(key: str) -> str:
    """The job key as stored and looked up: `storable_text` (a key is made once, then kept)."""
    return storable_text(key)


def optional_text(value: str | None) -> str | None:
    return None if value is None else storable_text(value)


def encode_payload(payload: Any, is_repr: bool) -> tuple[str | None, bool]:
    """A job's payload as JSON text; a safe repr when it is not JSON-serialisable."""
    if payload is None:
        return None, is_repr
    text = encode(payload)
    if text is None:
        return _dumps(safe_repr(payload)), True
    return text, is_repr


def decode(text: str | None) -> Any:
    """Inverse of `encode` (None for a missing value)."""
    if text is None:
        return None
    if text.isdigit():  # the commonest result, as `encode` wrote it (ASCII digits only)
        return int(text)
    return _loads(text)


def encode_history(history: tuple[AttemptRecord, ...] | list[dict[str, Any]]) -> str:
    """Attempt history as a JSON array."""
    text = encode([a if isinstance(a, dict) else a.to_dict() for a in history])
    return "[]" if text is None else text


def merge_history(old: str | None, new: tuple[AttemptRecord, ...]) -> str:
    """A redriven job failed again: keep the old attempts and add the new ones."""
    return encode_history([*(decode(old) or ()), *(a.to_dict() for a in new)])


