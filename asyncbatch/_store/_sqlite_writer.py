"""A SQLite store's writer process: large group commits, off the event loop's GIL.

A writer thread shares the GIL with the event loop: it binds parameters
holding it, and after every statement it must take it back, waiting up to
the switch interval (5 ms) while the loop runs jobs. A group commit of a
thousand rows needs about ten such hand-offs, so the writer could only make
progress while the loop had nothing to do, and a checkpointed run spent as
long waiting for each commit as committing it (measured: the loop idle for
the writer's whole time). A process has its own GIL: the commit runs on
another core while the jobs go on.

`WriterProcess.write` sends one transaction (``marshal``, a few hundred
nanoseconds a row) and waits for its reply on the pipe, through the event
loop's reader (no thread). The child (`_sqlite_writer_main`) ignores Ctrl-C
and ends with this process: after a kill, at most the COMMIT already under
way lands.
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
from collections.abc import Sequence
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: the store keeps its writer thread (`usable`)
    fcntl = None  # type: ignore[assignment]

from ._sqlite_writer_main import write_all

__all__ = ["WriterError", "WriterProcess", "usable"]

_CHILD = os.path.join(os.path.dirname(__file__), "_sqlite_writer_main.py")
_PIPE_SIZE = 1 << 20
"""Asked of the pipe to the child (Linux), so a group's message goes in one write."""


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
        self._reply: asyncio.Future[bytes] | None = None
        self._buffer = b""
        self._ready = False

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
    def encode(writes: Sequence[tuple[str, Sequence[Sequence[Any]]]], level: str) -> bytes:
        """The message for one transaction; `ValueError` when a value cannot be sent.

        Marshal version 2: no table of shared references to fill, a third
        cheaper per row than the default version for rows of fresh values.
        """
        body = marshal.dumps((level, writes), 2)  # type: ignore[arg-type]
        return struct.pack("<I", len(body)) + body

    async def write(self, message: bytes) -> None:
        """Commit one transaction (`encode`'s message); raises the child's sqlite3 error.

        A cancelled caller stops waiting, but the child still commits; the
        next write waits for that reply first, so replies never cross.
        """
        with contextlib.suppress(Exception):  # a cancelled caller's answer
            await self.settled()
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes] = loop.create_future()
        self._reply = reply
        try:
            loop.add_reader(self._out, self._readable, reply)
            write_all(self._in, message)
        except OSError as exc:
            loop.remove_reader(self._out)
            self._reply = None
            raise WriterError(f"the SQLite writer process is gone ({exc})") from exc
        answer = await asyncio.shield(reply)
        if answer:
            name, text = marshal.loads(answer)
            error = getattr(sqlite3, name, None)
            if not (isinstance(error, type) and issubclass(error, sqlite3.Error)):
                error = sqlite3.Error
            raise error(text)

    async def settled(self) -> None:
        """Wait for the answer to a write whose caller was cancelled, if one is due."""
        if self._reply is not None:
            await asyncio.shield(self._reply)

    def _readable(self, reply: asyncio.Future[bytes]) -> None:
        try:
            data = os.read(self._out, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._answer(reply, WriterError(f"the SQLite writer process exited ({self._exit()})"))
            return
        buf = self._buffer + data
        if buf[0] == 0:
            self._buffer = buf[1:]
            self._answer(reply, b"")
        elif len(buf) >= 5 and len(buf) >= 5 + (n := struct.unpack("<I", buf[1:5])[0]):
            self._buffer = buf[5 + n :]
            self._answer(reply, buf[5 : 5 + n])
        else:
            self._buffer = buf

    def _answer(self, reply: asyncio.Future[bytes], value: bytes | BaseException) -> None:
        asyncio.get_running_loop().remove_reader(self._out)
        self._reply = None
        if reply.done():
            return
        if isinstance(value, BaseException):
            reply.set_exception(value)
        else:
            reply.set_result(value)

    def _exit(self) -> str:
        code = self._proc.poll()
        return "still running" if code is None else f"exit status {code}"

    def close(self) -> None:
        """End the child: it finishes the transaction it has, then sees its input close."""
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
