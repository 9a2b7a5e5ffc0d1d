"""What every store shares: JSON encoding, DLQ filters, row → value conversion.

Both stores keep results and payloads as JSON *text* and decode on every read,
so a caller can never mutate stored state through a value it got back, and the
in-memory store behaves exactly like SQLite (a tuple comes back as a list).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import reprlib
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import anyio
import anyio.to_thread

from asyncbatch._errors import ConfigError, ErrorKind, RunOwned
from asyncbatch._result import AttemptRecord, DeadLetter, DeadLetterStatus, JobStatus

from ._codec import warn_unstorable
from ._protocol import DEFAULT_LEASE, FinishedJob, JobRecord

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
    "job_row",
    "merge_history",
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

DLQ_STATUSES: tuple[DeadLetterStatus, ...] = ("dead", "redriven", "resolved")
FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED, JobStatus.COMPENSATED})

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_dumps_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
_loads = json.loads
_short_repr = reprlib.Repr()
_short_repr.maxlevel = 4
_short_repr.maxstring = _short_repr.maxother = 200


def _utf8(text: str) -> bool:
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
    return text if text.isascii() or _utf8(text) else _dumps_ascii(value)


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


def _plain(text: str) -> bool:
    """Whether every store can write ``text`` as it is (UTF-8, and no NUL for PostgreSQL)."""
    return "\x00" not in text and _utf8(text)


def storable_text(text: str) -> str:
    """``text`` with lone surrogates and NULs written as ``\\udcff`` / ``\\x00`` escapes.

    For messages, tracebacks, error types and keys: readable, and applied on
    every write and every lookup, so the same text always maps to the same
    stored text (``storable_text(storable_text(t)) == storable_text(t)``).
    Lone surrogates are not UTF-8 (SQLite and PostgreSQL drivers refuse
    them) and PostgreSQL's ``text`` cannot hold a NUL character; every store
    escapes both, so a key is stored (and shown) alike everywhere.
    """
    if _plain(text):
        return text
    if not _utf8(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def storable_key(key: str) -> str:
    """The job key as stored and looked up: `storable_text` (a key is made once, then kept)."""
    return storable_text(key)


def _text(value: str | None) -> str | None:
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


JobRow = tuple[Any, ...]
"""A job as stored: the columns of `JOB_COLUMNS`, in order."""

JOB_COLUMNS = (
    "run_id", "key", "idx", "status", "attempts", "duration", "result", "has_result",
    "payload", "payload_is_repr", "seq", "kind", "error_type", "message",
    "compensation_error", "updated_at",
)  # fmt: skip


def result_text(r: JobRecord) -> str | None:
    """A record's result as the JSON text every store writes (None: no result stored).

    A result JSON cannot hold is stored as None, with the run's one warning
    (`warn_unstorable`), on every store alike.
    """
    if not r.has_result:
        return None
    text = encode(r.result)
    if text is None:
        warn_unstorable(r.run_id, r.key, r.result)
    return text


def job_row(r: JobRecord, seq: int, now: float) -> JobRow:
    """The stored form of a job record (``seq``: its completion order)."""
    # The hot path of every commit: `_value_` skips Enum's `value` property.
    result = result_text(r)
    payload, is_repr = (
        (None, False) if r.payload is None else encode_payload(r.payload, r.payload_is_repr)
    )
    kind = r.kind
    return (
        r.run_id,
        r.key,
        r.index,
        r.status._value_,
        r.attempts,
        r.duration,
        result,
        result is not None,
        payload,
        is_repr,
        seq,
        None if kind is None else kind._value_,
        r.error_type,
        r.message,
        r.compensation_error,
        now,
    )


_STATUS = {s.value: s for s in JobStatus}


def finished_job(
    key: str,
    status: str,
    result: str | None,
    has_result: bool,
    attempts: int,
    seq: int,
    payload: str | None,
    index: int | None = None,
) -> FinishedJob:
    """A `FinishedJob` from stored columns (JSON decoded afresh)."""
    return FinishedJob(
        key=key,
        status=_STATUS[status],
        result=decode(result),
        has_result=bool(has_result),
        attempts=attempts,
        seq=seq,
        payload=decode(payload),
        index=index,
    )


def storable_record(r: JobRecord) -> JobRecord:
    """``r`` with its key and texts UTF-8 writable (`storable_text`); ``r`` itself when they are.

    Every store applies it to every record it commits, so a lone surrogate
    (or a NUL) in one job's key, message or traceback is stored escaped
    instead of failing the whole group's transaction. (Results and payloads
    are JSON: `encode` escapes them losslessly, a NUL as ``\\u0000``.)
    """
    m, tb, et, ce = r.message, r.traceback, r.error_type, r.compensation_error
    if (
        _plain(r.key)
        and (m is None or _plain(m))
        and (tb is None or _plain(tb))
        and (et is None or _plain(et))
        and (ce is None or _plain(ce))
    ):
        return r
    return replace(
        r,
        key=storable_key(r.key),
        message=_text(m),
        traceback=_text(tb),
        error_type=_text(et),
        compensation_error=_text(ce),
    )


def is_plain_success(r: JobRecord) -> bool:
    """A success with nothing but its result to store (see `JOB_SUCCESS`)."""
    return (
        r.status is JobStatus.SUCCEEDED
        and r.payload is None
        and r.compensation_error is None
        and r.error_type is None
        and r.message is None
        and r.kind is None
    )


def success_row(r: JobRecord, seq: int, now: float) -> JobRow:
    """The `JOB_SUCCESS` parameters of a plain success."""
    result = result_text(r)
    return (r.run_id, r.key, r.index, r.attempts, r.duration, result, result is not None, seq, now)


def is_compensation(r: JobRecord) -> bool:
    """Whether the record only reports how a compensation went.

    Such a record changes the job's status (COMPENSATED) or notes that its
    compensation failed for good (SUCCEEDED + ``compensation_error``); the
    job keeps its completion order, result and payload.
    """
    return r.status is JobStatus.COMPENSATED or r.compensation_error is not None


def zero_counts() -> dict[str, int]:
    """A counts dict with every status present."""
    return {s.value: 0 for s in JobStatus}


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


def _timestamp(value: float | datetime | None, name: str) -> float | None:
    if value is None or isinstance(value, float | int):
        return value
    if isinstance(value, datetime):
        return value.timestamp()
    raise ConfigError(f"{name}= must be epoch seconds or a datetime, got {value!r}")


def _kind(value: ErrorKind | str | None) -> str | None:
    if value is None or isinstance(value, ErrorKind):
        return None if value is None else value.value
    if isinstance(value, str):
        for kind in ErrorKind:
            if value.lower() in (kind.value, kind.name.lower()):
                return kind.value
    choices = ", ".join(k.value for k in ErrorKind)
    raise ConfigError(f"unknown error kind {value!r}; use one of {choices}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterFilter:
    """The filters of `DeadLetterQueue.list` / ``export`` / ``purge``, validated.

    ``error_type`` matches the qualified name exactly or by its last dotted
    parts (``"ConnectError"`` finds ``"httpx.ConnectError"``). ``since`` is
    inclusive, ``until`` exclusive, both against ``created_at``.
    """

    run_id: str | None = None
    kind: str | None = None
    error_type: str | None = None
    status: DeadLetterStatus | None = "dead"
    since: float | None = None
    until: float | None = None
    limit: int | None = None

    @classmethod
    def of(cls, where: str, filters: Mapping[str, Any]) -> DeadLetterFilter:
        """Build from keyword arguments, rejecting unknown names and bad values."""
        unknown = sorted(set(filters) - set(cls.__slots__))
        if unknown:
            accepted = ", ".join(cls.__slots__)
            raise TypeError(f"{where}() got unknown filter(s) {unknown}; accepted: {accepted}")
        status = filters.get("status", "dead")
        if status is not None and status not in DLQ_STATUSES:
            raise ConfigError(
                f"unknown dead-letter status {status!r}; use 'dead', 'redriven', "
                "'resolved' or None (any)"
            )
        limit = filters.get("limit")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ConfigError(f"limit= must be a non-negative int or None, got {limit!r}")
        return cls(
            run_id=filters.get("run_id"),
            kind=_kind(filters.get("kind")),
            error_type=filters.get("error_type"),
            status=status,
            since=_timestamp(filters.get("since"), "since"),
            until=_timestamp(filters.get("until"), "until"),
            limit=limit,
        )

    def matches(self, entry: DeadLetter) -> bool:
        """Whether ``entry`` passes every filter but ``limit``."""
        et = self.error_type
        return (
            (self.run_id is None or entry.run_id == self.run_id)
            and (self.kind is None or entry.kind.value == self.kind)
            and (et is None or entry.error_type == et or entry.error_type.endswith("." + et))
            and (self.status is None or entry.status == self.status)
            and (self.since is None or entry.created_at >= self.since)
            and (self.until is None or entry.created_at < self.until)
        )


EXPORT_PAGE = 500
"""Entries read per query while exporting: memory stays bounded by one page."""


def _jsonl_line(entry: DeadLetter) -> str:
    d = entry.to_dict()
    text = json.dumps(d, ensure_ascii=False)
    if not _utf8(text):  # a lone surrogate: escape it (json.loads gives it back exactly)
        text = json.dumps(d)
    return text + "\n"


def _umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


class _AtomicFile:
    """A temporary file beside ``target`` that replaces it only once complete and synced."""

    def __init__(self, target: str) -> None:
        self.target = target
        directory = os.path.dirname(os.path.abspath(target))
        fd, self.temp = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp"
        )
        try:
            try:
                mode = os.stat(target).st_mode & 0o777  # replacing a file keeps its mode
            except FileNotFoundError:
                mode = 0o666 & ~_umask()  # what open(target, "w") would have made
            os.fchmod(fd, mode)
            self.file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        except BaseException:
            os.close(fd)
            os.unlink(self.temp)
            raise

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temp, self.target)
        try:  # make the rename itself durable
            dir_fd = os.open(os.path.dirname(os.path.abspath(self.target)), os.O_RDONLY)
        except OSError:  # pragma: no cover - a platform without directory fds
            return
        try:
            os.fsync(dir_fd)
        except OSError:  # pragma: no cover - some filesystems refuse it
            pass
        finally:
            os.close(dir_fd)

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)


async def export_jsonl(
    pages: AsyncIterator[builtins.list[DeadLetter]], path: str | os.PathLike[str]
) -> int:
    """Write entries to ``path``, one `DeadLetter.to_dict` JSON object a line; returns how many.

    Atomic and bounded: the lines go to a temporary file in the target's
    directory, page by page as ``pages`` yields them, which is fsynced and
    renamed over ``path`` only when complete. An export that fails or is
    killed midway leaves ``path`` as it was (absent, or the previous export);
    a killed one also leaves its hidden ``.NAME.*.tmp`` file beside it.
    """
    out = await anyio.to_thread.run_sync(_AtomicFile, os.fspath(path))
    written = 0
    try:
        async for page in pages:
            text = "".join(_jsonl_line(d) for d in page)
            await anyio.to_thread.run_sync(out.file.write, text)
            written += len(page)
        await anyio.to_thread.run_sync(out.commit)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(out.discard)
        raise
    return written


class DeadLetterQueueBase:
    """The validated public DLQ API; a store implements the queries below it.

    ``get``, ``mark_redriven``, ``_select`` (every match, oldest first),
    ``_page`` (one page of matches after an id, for ``export``) and ``_delete``.
    """

    async def list(
        self,
        *,
        run_id: str | None = None,
        kind: ErrorKind | str | None = None,
        error_type: str | None = None,
        status: DeadLetterStatus | None = "dead",
        since: float | datetime | None = None,
        until: float | datetime | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Entries matching every given filter, oldest first.

        Args:
            run_id: only this run's entries.
            kind: only this `ErrorKind` (or its name).
            error_type: only this exception type, by qualified name or its
                last dotted parts (``"ConnectError"`` finds ``"httpx.ConnectError"``).
            status: ``"dead"`` (default), ``"redriven"``, ``"resolved"``, or None for any.
            since: only entries created at or after this time (epoch seconds or datetime).
            until: only entries created before this time.
            limit: at most this many (the oldest).
        """
        f = DeadLetterFilter.of(
            "list",
            {"run_id": run_id, "kind": kind, "error_type": error_type, "status": status,
             "since": since, "until": until, "limit": limit},
        )  # fmt: skip
        return await self._select(f)

    async def export(self, path: str | os.PathLike[str], **filters: Any) -> int:
        """Write matching entries (filters as for `list`) to ``path`` as JSONL.

        One `DeadLetter.to_dict` object a line. Returns how many were written.
        The file appears at ``path`` only complete (written to a temporary
        file beside it, fsynced, renamed into place), and entries are read
        `EXPORT_PAGE` at a time, so memory stays bounded however many there are.
        """
        f = DeadLetterFilter.of("export", filters)
        return await export_jsonl(self._pages(f), path)

    async def _pages(
        self, f: DeadLetterFilter, size: int = EXPORT_PAGE
    ) -> AsyncIterator[builtins.list[DeadLetter]]:
        """The entries `list` would return, in pages of ``size`` (keyset pagination by id)."""
        after: int | None = None
        remaining = f.limit
        while remaining is None or remaining > 0:
            n = size if remaining is None else min(size, remaining)
            page = await self._page(f, after, n)
            if page:
                yield page
            if len(page) < n:
                return
            after = page[-1].id
            if remaining is not None:
                remaining -= len(page)

    async def purge(self, *, run_id: str | None = None, **filters: Any) -> int:
        """Delete the entries `list` would return for these filters; returns how many.

        Like `list`, only ``"dead"`` entries unless ``status=`` says otherwise
        (``status=None`` purges every status).
        """
        return await self._delete(DeadLetterFilter.of("purge", {"run_id": run_id, **filters}))

    async def get(self, id: int) -> DeadLetter:
        """One entry; raises `KeyError` for an unknown id."""
        raise NotImplementedError

    async def mark_redriven(self, ids: Sequence[int]) -> None:
        """Set status ``"redriven"`` and bump ``redrive_count`` (unknown ids are ignored)."""
        raise NotImplementedError

    async def _select(self, f: DeadLetterFilter) -> builtins.list[DeadLetter]:
        raise NotImplementedError

    async def _page(
        self, f: DeadLetterFilter, after: int | None, size: int
    ) -> builtins.list[DeadLetter]:
        """Up to ``size`` entries matching ``f`` (but its ``limit``) with id > ``after``, by id."""
        raise NotImplementedError

    async def _delete(self, f: DeadLetterFilter) -> int:
        raise NotImplementedError


def dead_letter(
    *,
    id: int,
    run_id: str,
    key: str,
    payload: str | None,
    payload_is_repr: bool,
    kind: str | None,
    error_type: str | None,
    message: str | None,
    traceback: str | None,
    attempts: str | None,
    redrive_count: int,
    status: str,
    created_at: float,
) -> DeadLetter:
    """A `DeadLetter` from stored columns (JSON decoded afresh)."""
    return DeadLetter(
        id=id,
        run_id=run_id,
        key=key,
        payload=decode(payload),
        payload_is_repr=bool(payload_is_repr),
        kind=ErrorKind(kind) if kind else ErrorKind.PERMANENT,
        error_type=error_type or "",
        message=message or "",
        traceback=traceback or "",
        attempts=tuple(AttemptRecord.from_dict(a) for a in decode(attempts) or ()),
        redrive_count=redrive_count,
        status=status,  # type: ignore[arg-type]  # only DLQ_STATUSES are ever written
        created_at=created_at,
    )


_OWNERS_HERE: set[str] = set()
"""Owners of this process whose engine is still running (see `owning_here`)."""


def owning_here(owner: str, running: bool) -> None:
    """Note that an engine of THIS process starts (or stops) running as ``owner``.

    An owner of this process that is not running any more (its engine ended
    without releasing the lease: the store failed, say) is gone, exactly like
    a killed process, and its run is taken over at once.
    """
    if running:
        _OWNERS_HERE.add(owner)
    else:
        _OWNERS_HERE.discard(owner)


def owner_is_gone(owner: str) -> bool:
    """Whether ``owner`` (``host:pid:...``) is of THIS host and no longer runs.

    Such an owner (killed, crashed) is taken over at once rather than after
    its lease expires. An owner on another host, or whose pid answers (or
    belongs to another user), counts as alive; one of this very process
    as long as its engine runs (`owning_here`).
    """
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return owner not in _OWNERS_HERE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, someone else's
        return False
    return False


def check_lease(
    run_id: str,
    *,
    holder: str | None,
    since: float | None,
    heartbeat_at: float | None,
    owner: str,
    lease: float,
    now: float,
) -> None:
    """Raise `RunOwned` unless ``owner`` may take the run (the rule every store applies).

    The run may be taken when nobody holds it, ``owner`` already does, the
    holder's last heartbeat is older than ``lease`` seconds, or the holder is
    a process of this host that is gone (`owner_is_gone`).
    """
    if holder is None or holder == owner:
        return
    if heartbeat_at is None or heartbeat_at <= now - lease:
        return
    if owner_is_gone(holder):
        return
    raise RunOwned(run_id, holder, since)


def wall_clock() -> float:
    """The default clock: epoch seconds."""
    return time.time()
