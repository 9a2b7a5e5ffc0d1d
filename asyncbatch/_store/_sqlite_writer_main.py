"""The SQLite writer process: commits the groups `_sqlite_writer.WriterProcess` sends it.

Run as a script (``python -I -S this_file PATH BUSY_TIMEOUT PARENT_PID``)
and standard library only, so it starts in milliseconds. It has its own
interpreter, so its binding and SQLite's inserts never wait for the event
loop's GIL, and they run on another core beside the jobs.

Once connected it writes ``b"R"`` (ready): until then its parent commits
through its own thread. Messages on stdin: a 4-byte little-endian length, then ``marshal`` of
``(synchronous level, [(sql, parameter rows), ...])``: one write transaction,
committed as a whole or rolled back. Each gets one reply on stdout: ``b"\\0"``
(committed) or ``b"\\1"``, a 4-byte length and ``marshal`` of the sqlite3
error's ``(class name, message)`` (rolled back). After a rollback it skips
every transaction (reply ``b"\\2"``) until the empty message (length 0),
which its parent sends once it has read the failure: the transactions it
sent meanwhile, behind the one that failed, are not committed either.

It ignores SIGINT (a Ctrl-C meant for the run must not stop the commits the
run still makes) and ends with its parent: stdin closes when the store
closes or the parent dies (even by kill -9), and before every COMMIT it
checks that the parent is still there, so a transaction the parent can no
longer acknowledge is rolled back, as if a thread had died with its process.

It checkpoints the WAL itself (once `CHECKPOINT_BYTES` of messages came in
since the last one), not inside a COMMIT as SQLite's automatic checkpoint
does, and on a thread of its own with its own connection (`Checkpoints`): the
copying and syncing (10-20 ms every few dozen commits, measured) overlaps the
next commits instead of delaying their answers. Done after answering, on the
writing thread, each checkpoint held the run back: the next group's answer
came 10-20 ms late, the backlog filled and every worker waited.
"""

from __future__ import annotations

import marshal
import os
import signal
import sqlite3
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, repeat

TYPE_CHECKING = False  # what mypy reads, without importing typing (14 ms at start)
if TYPE_CHECKING:
    import threading
    from typing import Any

CHECKPOINT_BYTES = 1_000_000
"""Message bytes between WAL checkpoints: a group of 4,096 plain successes (by column)
is a ~150 kB message and adds ~100 pages to the WAL. At 4 MB the WAL grew so far
between checkpoints that the run's last transaction, on its own connection,
spent 35 ms in SQLite's automatic checkpoint (7-14 ms at 1 MB, measured)."""


def _read(fd: int, n: int) -> bytes:
    parts = []
    while n:
        part = os.read(fd, n)
        if not part:
            return b""
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the pipe ``fd`` (a blocking one: in as many turns as it takes)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


WIDTH = 9
"""Parameters of one plain success's row, in `_schema.job_successes`'s order."""

SUCCESS_COLUMNS = "success columns"
"""What a write of plain successes given column by column starts with, instead of its
SQL: ``(SUCCESS_COLUMNS, plan, columns)``, turned into rows by `statements`.

A busy run's groups come this way: the event loop sends each column as it
has it and this process makes the rows and the result texts (measured: half
the loop's work per row for the group and its message)."""

Plan = Sequence[tuple[str, int, int]]
"""How rows are cut into statements: ``(sql, rows a statement, statements)`` in turn."""


def cut(plan: Plan, params: Sequence[object]) -> list[tuple[str, list[Sequence[object]]]]:
    """``params`` (`WIDTH` a row, end to end) as each statement's parameter rows."""
    writes = []
    start = 0
    for sql, rows, statements in plan:
        step = rows * WIDTH
        end = start + statements * step
        writes.append((sql, [params[i : i + step] for i in range(start, end, step)]))
        start = end
    return writes


def success_params(
    run_id: str,
    now: float,
    first_seq: int,
    keys: Sequence[str],
    indexes: Iterable[object],
    attempts: Iterable[int],
    durations: Iterable[float],
    results: Sequence[object],
    ints: bool,
) -> list[object]:
    """The rows' parameters end to end, from their columns. ``results`` are the result
    texts (None: not stored), or with ``ints`` ints whose text is their ``str()``."""
    texts = list(map(str, results)) if ints else results
    has: Iterable[int] = repeat(1)
    if None in texts:
        has = [0 if text is None else 1 for text in texts]
    seqs = range(first_seq, first_seq + len(keys))
    rows = zip(repeat(run_id), keys, indexes, attempts, durations, texts, has, seqs, repeat(now))
    return list(chain.from_iterable(rows))


Write = Sequence["Any"]
"""A statement and its parameter rows, for ``executemany``; or plain successes by
column: ``(SUCCESS_COLUMNS, plan, columns)``."""


def statements(writes: Iterable[Write]) -> Iterator[tuple[str, Iterable[Sequence[object]]]]:
    """Every statement with its parameter rows, success columns made rows."""
    for write in writes:
        if write[0] == SUCCESS_COLUMNS:
            yield from cut(write[1], success_params(*write[2]))
        else:
            yield write[0], write[1]


def commit(conn: sqlite3.Connection, writes: Iterable[Write], parent: int = 0) -> None:
    """One write transaction: every statement with its parameter rows (`statements`),
    committed or rolled back (the store's thread runs it too). With ``parent``, it is
    rolled back unless that process is still this one's parent when the COMMIT is due."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in statements(writes):
            conn.executemany(sql, params)
        if parent and os.getppid() != parent:
            raise SystemExit(0)  # the run is gone: nothing it did not acknowledge is kept
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the error that got us here is the one to report
        raise


class Checkpoints:
    """WAL checkpoints on their own thread and connection, asked for with `request`.

    PASSIVE: it copies what no reader still needs and never waits for a lock,
    so the writing connection goes on committing meanwhile. A request made
    while one runs starts the next when it ends.
    """

    def __init__(self, path: str, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._stopping = False
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        if self._thread is None:  # the first time: `threading` costs a start 6 ms
            import threading

            self._asked = threading.Event()
            self._thread = threading.Thread(target=self._run, name="wal-checkpoints")
            self._thread.start()
        self._asked.set()

    def stop(self) -> None:
        """Let a checkpoint under way end, then close its connection."""
        if self._thread is not None:
            self._stopping = True
            self._asked.set()
            self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=self._busy_timeout)
        try:
            while True:
                self._asked.wait()
                self._asked.clear()
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # the next one, or the last connection's close, will do it
        finally:
            conn.close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Result ints come as ints: their parent checked that str() writes them under its
    # own digit limit (`_sqlite_commit._str_can_write`), which -I hides from here.
    sys.set_int_max_str_digits(0)
    path, busy_timeout, parent = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    if os.getppid() != parent:  # the parent died while this process started
        return
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    level = ""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    checkpoints = Checkpoints(path, busy_timeout)
    write_all(stdout, b"R")
    since_checkpoint = 0  # message bytes
    failed = False  # a transaction failed, its parent has not said it knows
    while True:
        head = _read(stdin, 4)
        if not head:
            break
        size = struct.unpack("<I", head)[0]
        if not size:
            failed = False
            continue
        body = _read(stdin, size)
        if not body:
            break
        if failed:
            write_all(stdout, b"\2")
            continue
        sync, writes = marshal.loads(body)
        try:
            if sync != level:
                conn.execute(f"PRAGMA synchronous={sync}")
                level = sync
            commit(conn, writes, parent)
        except sqlite3.Error as exc:
            failed = True
            error = marshal.dumps((type(exc).__name__, str(exc)))
            write_all(stdout, b"\1" + struct.pack("<I", len(error)) + error)
        else:
            write_all(stdout, b"\0")
            since_checkpoint += len(body)
            if since_checkpoint >= CHECKPOINT_BYTES:
                since_checkpoint = 0
                checkpoints.request()
    checkpoints.stop()
    conn.close()


if __name__ == "__main__":
    main()
