"""A SQLite store's writer process: large group commits, off the event loop's GIL.

A writer thread shares the GIL with the event loop: it binds parameters
holding it, and after every statement it must take it back, waiting up to
the switch interval (5 ms) while the loop runs jobs. A group commit of a
thousand rows needs about ten such hand-offs, so the writer could only make
progress while the loop had nothing to do, and a checkpointed run spent as
long waiting for each commit as committing it (measured: the loop idle for
the writer's whole time). A process has its own GIL: the commit runs on
another core while the jobs go on.

`WriterProcess.send` sends one transaction (``marshal``, a few hundred
nanoseconds a row) and returns the future of its answer, read from the pipe
through the event loop's reader (no thread). Answers come in the order
sent, so the store can send the next group while the child commits one
(the child never waits for the loop to read an answer). The child
(`_sqlite_writer_main`) ignores Ctrl-C and ends with this process: after a
kill, at most the COMMIT already under way lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import sqlite3
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Sequence

try:
    import fcntl
except ImportError:  # Windows: the store keeps its writer thread (`usable`)
    fcntl = None  # type: ignore[assignment]

from ._common import mark_seen
from ._sqlite_writer_main import Write, write_all

__all__ = ["Skipped", "WriterError", "WriterProcess", "usable"]

_CHILD = os.path.join(os.path.dirname(__file__), "_sqlite_writer_main.py")
_PIPE_SIZE = 1 << 20
"""Asked of the pipe to the child (Linux), so a group's message goes in one write."""
_MIN_PIPE = 1 << 12
"""What a pipe holds at least (POSIX's PIPE_BUF), where its size cannot be read."""
_RESET = struct.pack("<I", 0)
"""The empty message: the failure just read is known here, the child may commit again."""


def usable(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether a writer process can serve this event loop: POSIX, a loop with fd
    readers, and a second CPU to run on (on one, it would only add its messages)."""
    if fcntl is None or os.environ.get("ASYNCBATCH_SQLITE_WRITER") == "thread":
        return False
    if _cpus() < 2:
        return False
    return not isinstance(loop, getattr(asyncio, "ProactorEventLoop", ()))


def _cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class WriterError(Exception):
    """The writer process is gone (it exited or could not be reached)."""


class Skipped(Exception):
    """A transaction the writer process did not commit: one sent before it failed."""


class WriterProcess:
    """The child that commits a store's large groups; one per open store, started on demand."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", _CHILD, path, repr(busy_timeout), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its failures come back as answers, or as its exit
            close_fds=True,
        )
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._in = self._proc.stdin.fileno()
        self._out = self._proc.stdout.fileno()
        if fcntl is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
            try:
                fcntl.fcntl(self._in, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pass  # a lower system limit: the writes below just take more turns
        os.set_blocking(self._out, False)
        self._pipe_size = _MIN_PIPE
        if fcntl is not None and hasattr(fcntl, "F_GETPIPE_SZ"):
            with contextlib.suppress(OSError):
                self._pipe_size = fcntl.fcntl(self._in, fcntl.F_GETPIPE_SZ)
        self._replies: deque[asyncio.Future[bytes | None]] = deque()
        self._buffer = b""
        self._ready = False
        self._sent = False

    @property
    def up(self) -> bool:
        """Whether `ready` has seen the child connected."""
        return self._ready

    def ready(self) -> bool:
        """Whether the child has connected (its ``b"R"`` arrived); until then, the thread."""
        if not self._ready:
            try:
                self._ready = os.read(self._out, 1) == b"R"
            except BlockingIOError:
                return False
            if not self._ready:
                raise WriterError(f"the SQLite writer process did not start ({self._exit()})")
        return True

    @staticmethod
    def encode(writes: Sequence[Write], level: str) -> bytes:
        """The message for one transaction; `ValueError` when a value cannot be sent.

        Marshal version 2: no table of shared references to fill, a third
        cheaper per row than the default version for rows of fresh values.
        """
        body = marshal.dumps((level, writes), 2)  # type: ignore[arg-type]
        return struct.pack("<I", len(body)) + body

    def fits(self, message: bytes) -> bool:
        """Whether ``message`` fits in the pipe: sent while the child commits the one
        before, it then never blocks the event loop on a full pipe."""
        return len(message) <= self._pipe_size

    def send(self, message: bytes) -> asyncio.Future[bytes | None]:
        """Send one transaction (`encode`'s message); returns the future of its answer
        (`check` reads it). Answers come in the order sent, and the child commits
        each whether or not its answer is still awaited.

        After a failed transaction the child skips (answers None to) every one
        sent before this process read that failure: a transaction is committed
        only if every one sent before it was.
        """
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes | None] = loop.create_future()
        if not self._replies:
            loop.add_reader(self._out, self._readable)
        self._replies.append(reply)
        self._sent = True
        try:
            write_all(self._in, message)
        except OSError as exc:
            self._fail_all(WriterError(f"the SQLite writer process is gone ({exc})"))
            raise WriterError(f"the SQLite writer process is gone ({exc})") from exc
        return reply

    @staticmethod
    def check(answer: bytes | None) -> None:
        """Raise what an answer says went wrong: the child's sqlite3 error, or `Skipped`."""
        if answer is None:
            raise Skipped("not committed: a transaction sent before it failed")
        if answer:
            name, text = marshal.loads(answer)
            error = getattr(sqlite3, name, None)
            if not (isinstance(error, type) and issubclass(error, sqlite3.Error)):
                error = sqlite3.Error
            raise error(text)

    async def settled(self) -> None:
        """Wait for the answers to every transaction sent so far."""
        if self._replies:
            await asyncio.shield(self._replies[-1])

    def _readable(self) -> None:
        try:
            data = os.read(self._out, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._fail_all(WriterError(f"the SQLite writer process exited ({self._exit()})"))
            return
        buf = self._buffer + data
        while buf and self._replies:
            answer: bytes | None
            if buf[0] == 0:
                answer, buf = b"", buf[1:]
            elif buf[0] == 2:
                answer, buf = None, buf[1:]
            elif len(buf) >= 5 and len(buf) >= 5 + (n := struct.unpack("<I", buf[1:5])[0]):
                answer, buf = buf[5 : 5 + n], buf[5 + n :]
                try:
                    write_all(self._in, _RESET)  # what was sent before this is skipped
                except OSError:
                    pass  # the child is gone: its exit fails what is still awaited
            else:
                break
            reply = self._replies.popleft()
            if not reply.done():
                reply.set_result(answer)
        self._buffer = buf
        if not self._replies:
            asyncio.get_running_loop().remove_reader(self._out)

    def _fail_all(self, exc: WriterError) -> None:
        """The child is gone: every answer still awaited is this error."""
        asyncio.get_running_loop().remove_reader(self._out)
        replies, self._replies = self._replies, deque()
        for reply in replies:
            if not reply.done():
                reply.set_exception(exc)
                reply.add_done_callback(mark_seen)  # awaited or not: nobody must be warned

    def _exit(self) -> str:
        code = self._proc.poll()
        return "still running" if code is None else f"exit status {code}"

    def close(self) -> None:
        """End the child: it finishes the transaction it has, then sees its input close
        (one never sent anything is killed: a short run does not wait for its start)."""
        if not self._sent:
            self._proc.kill()
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
