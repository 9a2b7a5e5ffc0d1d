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
error's ``(class name, message)`` (rolled back).

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

import marshal
import os
import signal
import sqlite3
import struct
import sys
import threading
from collections.abc import Iterable, Sequence

CHECKPOINT_BYTES = 4_000_000
"""Message bytes between WAL checkpoints: a group of 1,000 plain successes is a ~100 kB
message (marshal version 2) and adds ~24 pages to the WAL, so this comes near SQLite's
own checkpoint at 1,000 pages."""


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


def commit(
    conn: sqlite3.Connection,
    writes: Iterable[tuple[str, Iterable[Sequence[object]]]],
    parent: int = 0,
) -> None:
    """One write transaction: every statement with its parameter rows, committed or
    rolled back (the store's thread runs it too). With ``parent``, it is rolled back
    unless that process is still this one's parent when the COMMIT is due."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in writes:
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
        self._asked = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="wal-checkpoints", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._asked.set()

    def stop(self) -> None:
        """Let a checkpoint under way end, then close its connection."""
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
    while True:
        head = _read(stdin, 4)
        if not head:
            break
        body = _read(stdin, struct.unpack("<I", head)[0])
        if not body:
            break
        sync, writes = marshal.loads(body)
        try:
            if sync != level:
                conn.execute(f"PRAGMA synchronous={sync}")
                level = sync
            commit(conn, writes, parent)
        except sqlite3.Error as exc:
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
