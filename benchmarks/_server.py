"""A benchmark's HTTP server in a process of its own (so it does not share the client's loop)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator

from aiohttp import web

__all__ = ["serve_app", "server_process"]


def serve_app(app: web.Application, *, backlog: int) -> None:
    """Serve ``app`` on a free port of 127.0.0.1, print the port, stop when stdin closes."""

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=backlog)
        await site.start()
        server = site._server  # the one place the chosen port is exposed
        assert isinstance(server, asyncio.Server)
        print(server.sockets[0].getsockname()[1], flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it
        await runner.cleanup()

    asyncio.run(main())


@contextlib.contextmanager
def server_process(*args: str) -> Iterator[str]:
    """``python -m <args>`` (a module that calls `serve_app`) in its own process; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
