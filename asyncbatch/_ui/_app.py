"""The dashboard's aiohttp application: routes, safety checks, and serving it on a port.

Safety, by default: `serve` binds 127.0.0.1; a request whose ``Host`` is not
the address it was reached on is refused when bound to loopback (so a web
page elsewhere cannot read the dashboard through DNS rebinding); every
request that changes data (any method but GET/HEAD) must carry the token in
the `TOKEN_HEADER` header (a cross-site form cannot set a header), and is
refused outright when the app is read-only. Pages are served with a
content security policy that allows only the app's own scripts.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from asyncbatch._errors import AsyncBatchError, ConfigError, RunOwned, StoreError, UnknownRun
from asyncbatch._store import Store

from ._api import SETTINGS, JobLoader, Settings, routes

__all__ = ["TOKEN_HEADER", "make_app", "serve"]

TOKEN_HEADER = "X-Asyncbatch-Token"
"""The request header that carries the token for actions that change data."""

STATIC = Path(__file__).parent / "static"

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8000`` → ``::1``)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings: Settings = request.app[SETTINGS]
    if settings.loopback_only and not _is_loopback(_hostname(request.host)):
        return _error(403, f"refused: Host {request.host!r} is not this machine's loopback")
    if request.method not in _SAFE_METHODS:
        if settings.read_only:
            return _error(403, "the dashboard is read-only (started with --read-only)")
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            what = "wrong" if given else "missing"
            return _error(
                403, f"{what} token: actions need the token `asyncbatch ui` printed at start"
            )
    try:
        response = await handler(request)
    except web.HTTPException:
        raise
    except UnknownRun as exc:
        return _error(404, str(exc))
    except KeyError as exc:
        return _error(404, str(exc.args[0]) if exc.args else "not found")
    except RunOwned as exc:
        return _error(409, str(exc))
    except (ConfigError, ValueError, TypeError) as exc:
        return _error(400, str(exc))
    except StoreError as exc:
        return _error(503, str(exc))
    except AsyncBatchError as exc:
        return _error(500, str(exc))
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


def make_app(
    store: Store,
    *,
    token: str,
    read_only: bool = False,
    load_job: JobLoader | None = None,
    loopback_only: bool = True,
    refresh: float = 1.0,
) -> web.Application:
    """The dashboard over ``store`` (which the caller opens and closes).

    Args:
        store: an open SQLite, PostgreSQL or memory store.
        token: what actions that change data must send in `TOKEN_HEADER`.
        read_only: refuse every action that changes data.
        load_job: turns a run's stored job reference (``module:function``)
            into the job, for redrive; raises when it cannot. None: no redrive.
        loopback_only: refuse requests whose ``Host`` is not a loopback name.
        refresh: seconds a run's counts and the runs list are reused between
            requests (a running run's charts: ten times that), so that many
            open pages cost the store one query per interval; 0 reads afresh.
    """
    app = web.Application(middlewares=[_guard])
    app[SETTINGS] = Settings(
        store=store,
        token=token,
        read_only=read_only,
        load_job=load_job,
        loopback_only=loopback_only,
        refresh=refresh,
    )
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    app.router.add_routes(routes)
    return app


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    on_started: Callable[[str], Any],
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; ``on_started(base_url)`` once bound.

    Raises:
        OSError: the address cannot be bound (port in use, no such address).
    """
    import asyncio

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        on_started(f"http://{shown}:{bound_port}/")
        await asyncio.Event().wait()  # until cancelled (Ctrl-C, SIGTERM)
    finally:
        await runner.cleanup()
