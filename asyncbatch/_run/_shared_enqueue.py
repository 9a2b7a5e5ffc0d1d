"""A shared run's input written as chunks: keys checked, earlier jobs skipped, odd items kept.

The coordinator reads its input once and writes it as chunk rows
(`SharedBoard.enqueue`), ``chunk_size`` items each, the last ones an eighth
of that so one straggler does not hold the run. On the way it does for the
whole input what a single-process run's admission does per item:

* **Duplicate keys** (``key=``): the second item with a key is refused with
  `DuplicateKey` before its chunk is written, so it never runs. The keys seen
  are kept as 64-bit hashes (a million keys cost ~60 MB, not the keys); a
  hash met twice is confirmed against the keys themselves (the chunks not
  written yet, then the run's chunk rows) before anything is refused.
* **Resumed runs**: the keys an earlier invocation finished are looked up
  (one query per written stretch) and reported SKIPPED at their position in
  this input (`on_skip`), as a single-process resume reports them; the
  claims skip them too. Jobs of the run that are not in this input are not
  this invocation's.
* **Items that cannot travel** (neither JSON nor pickle holds them: a local
  class, a structure nested too deeply): with ``shared="auto"`` (the
  default for PostgreSQL) their chunk stays in this process
  (`SharedBoard.local`): only the coordinator claims it, with the items
  from memory, and the run goes on as a single-process run would. An
  explicit ``shared=`` raises instead (`Unsendable`), saying what broke.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio.lowlevel

from asyncbatch._errors import DuplicateKey
from asyncbatch._result import JobOutcome, JobStatus
from asyncbatch._store import storable_key
from asyncbatch._store._codec import stored_result

from ._options import Options
from ._shared import finished_statuses
from ._shared_run import SharedRun

if TYPE_CHECKING:
    from asyncbatch._store._postgres_shared import SharedBoard

__all__ = ["Skipped", "enqueue"]

_FLUSH_CHUNKS = 32  # chunks written per round trip while enqueueing

Skipped = Callable[[JobOutcome[Any]], Awaitable[None]]
"""Takes the SKIPPED outcome of an input item an earlier invocation finished."""


async def enqueue(
    board: SharedBoard,
    run_id: str,
    items: Iterable[Any] | AsyncIterable[Any],
    opts: Options,
    shared: SharedRun,
    *,
    seq0: int | None,
    on_skip: Skipped | None = None,
) -> None:
    """Write the input as chunks (``chunk_size`` items; the last ones an eighth of it).

    Chunks are named by their first input position and cut the same way from
    the same input, so a coordinator that crashed while enqueueing writes the
    same chunks again on resume (existing ones stay).

    Args:
        seq0: the run's last seq when this invocation began (None: a new
            run, nothing to look up).
        on_skip: called with each SKIPPED outcome (resumed runs).

    Raises:
        DuplicateKey: two items of the input have one key (nothing from the
            second one's chunk on is written).
        TypeError: an item cannot be sent to other processes and the run was
            shared explicitly.
    """
    writer = _Writer(board, run_id, opts, seq0=seq0, on_skip=on_skip)
    size = shared.chunk_size
    buffer = writer.buffer
    index = 0
    if isinstance(items, AsyncIterable):
        async for item in items:
            writer.add(index, item)
            index += 1
            if len(buffer) >= 2 * size:  # keep a tail back: the last chunks are cut smaller
                await writer.cut(size)
    else:
        for item in items:
            writer.add(index, item)
            index += 1
            if len(buffer) >= 2 * size:
                await writer.cut(size)
            elif index % 4096 == 0:
                await anyio.lowlevel.checkpoint()  # a long list must not hold the loop
    small = max(1, size // 8)
    while buffer:
        await writer.cut(small)
    await writer.flush(force=True)


class _Writer:
    """The buffered input, the keys seen so far, and the chunks not written yet."""

    def __init__(
        self,
        board: SharedBoard,
        run_id: str,
        opts: Options,
        *,
        seq0: int | None,
        on_skip: Skipped | None,
    ) -> None:
        self.board = board
        self.run_id = run_id
        self.keyfn = opts.key
        self.seq0 = seq0
        self.on_skip = on_skip
        self.skip = set(finished_statuses(opts.retry_dead))
        self.codec = opts.result_codec
        self.pin = opts.shared_auto  # items that cannot travel stay here (else: raise)
        self.buffer: list[tuple[int, str, Any]] = []
        self.out: list[tuple[int, list[str], list[int], list[Any]]] = []
        self.seen: set[int] | None = set() if opts.key is not None else None
        self.suspects: dict[int, str] = {}
        """Positions whose key's hash was seen before, but not among the unwritten items."""
        self.flushed = time.monotonic()

    def add(self, index: int, item: Any) -> None:
        keyfn = self.keyfn
        if keyfn is None:  # positions never collide
            self.buffer.append((index, str(index), item))
            return
        k = keyfn(item)
        key = storable_key(k if isinstance(k, str) else str(k))
        seen = self.seen
        assert seen is not None
        h = hash(key)
        if h in seen:
            first = self._first(key)
            if first is not None:
                raise DuplicateKey(key, first, index)
            self.suspects[index] = key  # checked against the written chunks before its own
        seen.add(h)
        self.buffer.append((index, key, item))

    def _first(self, key: str) -> int | None:
        """The position of ``key`` among the items not written yet (None: not there)."""
        for index, k, _ in self.buffer:
            if k == key:
                return index
        for _, keys, idxs, _ in self.out:
            for k, index in zip(keys, idxs, strict=True):
                if k == key:
                    return index
        return None

    async def cut(self, size: int, *, force: bool = False) -> None:
        part, self.buffer[:size] = self.buffer[:size], []
        await self._confirm(part)
        self.out.append(
            (part[0][0], [k for _, k, _ in part], [i for i, _, _ in part], [x for _, _, x in part])
        )
        await self.flush(force)

    async def _confirm(self, part: list[tuple[int, str, Any]]) -> None:
        """Refuse a key of ``part`` that a written chunk holds (its hash was met before)."""
        if not self.suspects:
            return
        mine = [(i, self.suspects.pop(i)) for i, _, _ in part if i in self.suspects]
        if not mine:
            return
        found = await self.board.positions_of(self.run_id, [k for _, k in mine])
        for index, key in mine:
            first = found.get(key)
            if first is not None and first < index:
                raise DuplicateKey(key, first, index)

    async def flush(self, force: bool = False) -> None:
        # Many chunks per round trip, but a slow (live) input's chunks wait at most 50 ms.
        out = self.out
        if not out or not (
            force or len(out) >= _FLUSH_CHUNKS or time.monotonic() - self.flushed > 0.05
        ):
            return
        await self.board.enqueue(self.run_id, out, lookup=self.seq0 is not None, pin=self.pin)
        if self.seq0 is not None and self.on_skip is not None:
            await self._skipped(out)
        out.clear()
        self.flushed = time.monotonic()

    async def _skipped(self, out: list[tuple[int, list[str], list[int], list[Any]]]) -> None:
        """Report the keys of ``out`` an earlier invocation finished, SKIPPED."""
        assert self.seq0 is not None
        assert self.on_skip is not None
        keys = [k for _, ks, _, _ in out for k in ks]
        found = await self.board.store.lookup(self.run_id, keys)
        if not found:
            return
        codec = self.codec
        for _, ks, idxs, _ in out:
            for key, index in zip(ks, idxs, strict=True):
                done = found.get(key)
                if done is None or done.seq > self.seq0 or done.status.value not in self.skip:
                    continue
                await self.on_skip(
                    JobOutcome(
                        key=key, status=JobStatus.SKIPPED, result=stored_result(done, codec),
                        attempts=done.attempts, index=index,
                    )
                )  # fmt: skip
