"""Shared fixtures.

Virtual time comes from looptime: mark a test ``@pytest.mark.looptime`` and its
event loop's clock only moves when every task waits, so backoffs of seconds
take no real time.

PostgreSQL: ``pg_url`` gives a test a store URL on a fresh schema of its own
(dropped afterwards) on the server ``ASYNCBATCH_TEST_PG`` names (default
postgresql://postgres@127.0.0.1:5432/test). Without a server those tests
skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _shared_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ASYNCBATCH_TEST_SHARED=0`` (or ``auto``): every run of this process takes that ``shared=``.

    So the whole suite can be run with PostgreSQL runs on the single-process
    path (``0``) as well as on the shared one (``auto``, the default; the
    ``postgresql-single`` store of the run suites covers the other path on
    every run); CLI tests' child processes keep the library's default.
    """
    value = os.environ.get("ASYNCBATCH_TEST_SHARED")
    if value:
        from asyncbatch._run import _options

        defaults = _options.build_options.__kwdefaults__
        assert defaults is not None
        monkeypatch.setitem(defaults, "shared", {"auto": "auto", "0": False}.get(value, value))


@pytest.fixture(autouse=True)
def _loop_for_sync_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """Give sync tests a loop that is closed afterwards.

    looptime's plugin asks the policy for the current loop even in sync tests,
    which creates one and leaves it unclosed (a ResourceWarning, an error here).
    """
    if inspect.iscoroutinefunction(request.function):
        yield
        return
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


# --------------------------------------------------------------- PostgreSQL

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
"""The server the PostgreSQL tests use unless ``ASYNCBATCH_TEST_PG`` names another."""


def run_coro(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to the end from sync code, on its own loop in its own thread.

    Sync fixtures may be set up while a test's event loop exists; a thread
    keeps the two loops apart.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server URL for tests: skip locally when none answers, FAIL in CI."""
    url = os.environ.get("ASYNCBATCH_TEST_PG", PG_DEFAULT)
    try:
        import asyncpg
    except ImportError:
        problem = "asyncpg is not installed (pip install -e '.[postgres,test]')"
    else:

        async def probe() -> None:
            conn = await asyncpg.connect(url, timeout=5)
            await conn.close()

        try:
            run_coro(probe)
            return url
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            problem = f"no PostgreSQL at {url} ({type(exc).__name__}: {exc})"
    message = f"{problem}; set ASYNCBATCH_TEST_PG=postgresql://... (.ci/run starts one)"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def drop_schema(server: str, schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(server, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    run_coro(drop)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A PostgreSQL store URL of a fresh schema of its own, dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        yield with_schema(pg_server, schema)
    finally:
        drop_schema(pg_server, schema)


@pytest.fixture(scope="module")
def pg_temp_server() -> Iterator[Any]:
    """A private PostgreSQL server (tests/pg_server.py) that a test may restart or stop."""
    from pg_server import TempServer, find_binaries

    bindir = find_binaries()
    if bindir is None:
        message = "PostgreSQL is not installed here (no initdb/pg_ctl): apt-get install postgresql"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    server = TempServer(bindir)
    try:
        yield server
    finally:
        server.close()
