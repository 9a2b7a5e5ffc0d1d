"""Result codecs: how a job's return value is kept so that a resume returns it.

Stores keep results as JSON. The default codec, ``"json"``, stores a result
as it is when JSON can hold it; when it cannot (a set, a dataclass, an
object), the result is stored as null and the run warns once, naming the
job and the type, and how to keep it. ``"pickle"`` stores any picklable
result (as base64 text inside a JSON object), for runs whose results are
Python objects; only unpickle stores you trust. A `ResultCodec` (an object
with ``encode(value) -> JSON-safe`` and ``decode(stored) -> value``) does
anything else (msgpack, a Pydantic model, a reference to a blob store).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Protocol, runtime_checkable

from asyncbatch._errors import ConfigError

__all__ = [
    "CodecLike",
    "ResultCodec",
    "as_codec",
    "new_run_warnings",
    "stored_result",
    "warn_unstorable",
]

_PICKLED = "$asyncbatch.pickle"


@runtime_checkable
class ResultCodec(Protocol):
    """Turns results into JSON-safe values and back (``result_codec=`` on a batch)."""

    name: str

    def encode(self, value: Any) -> Any:
        """A JSON-safe form of ``value``."""
        ...

    def decode(self, stored: Any) -> Any:
        """The value ``encode`` was given."""
        ...


class _Pickle:
    name = "pickle"

    def encode(self, value: Any) -> Any:
        import base64
        import pickle

        return {_PICKLED: base64.b64encode(pickle.dumps(value)).decode("ascii")}

    def decode(self, stored: Any) -> Any:
        if isinstance(stored, dict) and set(stored) == {_PICKLED}:
            import base64
            import pickle

            return pickle.loads(base64.b64decode(stored[_PICKLED]))
        return stored  # stored before the run used this codec


CodecLike = Literal["json", "pickle"] | ResultCodec


def stored_result(job: Any, codec: ResultCodec | None) -> Any:
    """A stored job's result (a `FinishedJob`'s) as its job returned it: decoded by the
    run's codec when one is set and a result was stored."""
    return job.result if codec is None or not job.has_result else codec.decode(job.result)


def as_codec(codec: object) -> ResultCodec | None:
    """The ``result_codec=`` option: None for JSON (the fast path), else the codec."""
    if codec == "json" or codec is None:
        return None
    if codec == "pickle":
        return _Pickle()
    if isinstance(codec, ResultCodec):
        return codec
    raise ConfigError(
        f"result_codec must be 'json', 'pickle' or an object with name, encode() and "
        f"decode(), got {codec!r}"
    )


_warned: set[str] = set()


def new_run_warnings(run_id: str) -> None:
    """A run (or a resume of it) starts: its once-per-run warnings may be given again."""
    _warned.discard(run_id)


def warn_unstorable(run_id: str, key: str, value: Any) -> None:
    """Once per run: a result JSON cannot hold was stored as null."""
    if run_id in _warned:
        return
    if len(_warned) > 1000:
        _warned.clear()
    _warned.add(run_id)
    warnings.warn(
        f"asyncbatch: the result of job {key!r} in run {run_id!r} is a "
        f"{type(value).__name__}, which JSON cannot hold: it is stored as null and a "
        "resume will return None for it (and for any other such result of this run); "
        "pass result_codec='pickle' (or a codec) to keep such results",
        RuntimeWarning,
        stacklevel=2,
    )
