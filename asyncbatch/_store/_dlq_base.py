"""The public DLQ API every store shares: validated filters, and an export that is atomic and paged.

A store's DLQ subclasses `DeadLetterQueueBase` and implements the queries
below it (select, page, delete, get, mark_redriven).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread

from asyncbatch._errors import ConfigError, ErrorKind
from asyncbatch._result import DeadLetter, DeadLetterStatus

from ._encoding import is_utf8

__all__ = [
    "DLQ_STATUSES",
    "EXPORT_PAGE",
    "DeadLetterFilter",
    "DeadLetterQueueBase",
    "export_jsonl",
]

DLQ_STATUSES: tuple[DeadLetterStatus, ...] = ("dead", "redriven", "resolved")


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
    if not is_utf8(text):  # a lone surrogate: escape it (json.loads gives it back exactly)
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
        import tempfile  # only exports write files: `import asyncbatch` leaves it out

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


