"""The SQLite writer process: commits the groups `_sqlite_writer.WriterProcess` sends it.

Run as a script (``python -I -S this_file PATH BUSY_TIMEOUT PARENT_PID``)
and standard library only, so it starts in milliseconds. It has its own
interpreter, so its binding and SQLite's inserts never wait for the event
loop's GIL, and they run on another core beside the jobs.

Messages on stdin: a 4-byte little-endian length, then ``marshal`` of
``(synchronous level, [(sql, parameter rows), ...])``: one write transaction,
committed as a whole or rolled back. Each gets one reply on stdout: ``b"\\0"``
(committed) or ``b"\\1"``, a 4-byte length and ``marshal`` of the sqlite3
error's ``(class name, message)`` (rolled back).

It ignores SIGINT (a Ctrl-C meant for the run must not stop the commits the
run still makes) and ends with its parent: stdin closes when the store
closes or the parent dies (even by kill -9), and before every COMMIT it
checks that the parent is still there, so a transaction the parent can no
longer acknowledge is rolled back, as if a thread had died with its process.
"""

import marshal
import os
import signal
import sqlite3
import struct
import sys


def _read(fd: int, n: int) -> bytes:
    parts = []
    while n:
        part = os.read(fd, n)
        if not part:
            return b""
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _commit(
    conn: sqlite3.Connection, writes: list[tuple[str, list[list[object]]]], parent: int
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in writes:
            conn.executemany(sql, params)
        if os.getppid() != parent:
            raise SystemExit(0)  # the run is gone: nothing it did not acknowledge is kept
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    path, busy_timeout, parent = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    if os.getppid() != parent:  # the parent died while this process started
        return
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    conn.execute("PRAGMA foreign_keys=ON")
    level = ""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
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
            _commit(conn, writes, parent)
        except sqlite3.Error as exc:
            error = marshal.dumps((type(exc).__name__, str(exc)))
            _write(stdout, b"\1" + struct.pack("<I", len(error)) + error)
        else:
            _write(stdout, b"\0")
    conn.close()


if __name__ == "__main__":
    main()
