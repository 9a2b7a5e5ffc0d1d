"""Checkpoint stores: where runs, finished jobs and dead letters are kept.

``open_store(url)`` picks the store from a URL; ``as_store`` turns a batch's
``store=`` option into a store for the length of a run. A store persists
values it is handed (runs, job records, dead letters) and answers queries
over them; it knows nothing of workers, retries or policies. May import only
the value types at the bottom (`asyncbatch._errors`, `_result`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any, Literal

from asyncbatch._errors import ConfigError, StoreError

from ._common import check_durability, owning_here, safe_repr, storable_key, storable_text
from ._memory import MemoryDeadLetterQueue, MemoryStore
from ._protocol import (
    DEFAULT_GROUP,
    DEFAULT_LEASE,
    DeadLetterQueue,
    FinishedJob,
    JobRecord,
    RunInfo,
    RunStatus,
    Store,
)

if TYPE_CHECKING:
    from ._postgres_url import PostgresTarget
    from ._sqlite import SQLiteStore
    from ._sqlite_dlq import SQLiteDeadLetterQueue

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_LEASE",
    "DeadLetterQueue",
    "FinishedJob",
    "JobRecord",
    "MemoryDeadLetterQueue",
    "MemoryStore",
    "RunInfo",
    "RunStatus",
    "SQLiteDeadLetterQueue",
    "SQLiteStore",
    "Store",
    "as_store",
    "open_store",
    "owning_here",
    "safe_repr",
    "storable_key",
    "storable_text",
]

def __getattr__(name: str) -> object:
    # The SQLite store on first use: `import asyncbatch` does not load aiosqlite.
    if name == "SQLiteStore":
        from ._sqlite import SQLiteStore

        return SQLiteStore
    if name == "SQLiteDeadLetterQueue":
        from ._sqlite_dlq import SQLiteDeadLetterQueue

        return SQLiteDeadLetterQueue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_FORMS = (
    "use 'memory://', 'sqlite:///relative/path.db', 'sqlite:////absolute/path.db', "
    "a file path such as ./asyncbatch.db, or 'postgresql://user@host:5432/db'"
)
_POSTGRES = ("postgresql:", "postgres:", "postgresql+")


def _sqlite_target(url: str) -> tuple[str, dict[str, str]]:
    """``(path, query options)`` of a SQLite URL or path, SQLAlchemy's way.

    ``sqlite:///runs.db`` is relative, ``sqlite:////var/runs.db`` absolute,
    ``sqlite://`` an in-memory database.
    """
    if not url.startswith("sqlite:"):
        return os.path.expanduser(url), {}
    if not url.startswith("sqlite://"):
        raise ConfigError(f"malformed SQLite URL {url!r}: {_FORMS}")
    rest, _, query = url[len("sqlite://") :].partition("?")
    if rest and not rest.startswith("/"):
        raise ConfigError(
            f"SQLite URL {url!r} names a host; {_FORMS} (three slashes before a relative path)"
        )
    try:
        from urllib.parse import parse_qsl

        options = dict(parse_qsl(query, strict_parsing=True)) if query else {}
    except ValueError:
        raise ConfigError(f"malformed query in store URL {url!r}") from None
    return rest[1:] or ":memory:", options


class _OpenStore(contextlib.AbstractAsyncContextManager[Store]):
    """What `open_store` returns: ``async with`` it, or ``await`` it and close the store."""

    def __init__(self, url: str, durability: Literal["normal", "full"], busy_timeout: float | None):
        self.url = url
        self._durability = durability
        self._sqlite: tuple[str, float] | None = None
        self._postgres: PostgresTarget | None = None
        self._store: Store | None = None
        if url == "memory://":
            return
        if url.startswith(_POSTGRES):
            if busy_timeout is not None:
                raise ConfigError("busy_timeout= is a SQLite option; PostgreSQL waits for locks")
            from ._postgres_url import parse_postgres_url  # urllib: only for these URLs

            self._postgres = parse_postgres_url(url)
            return
        if not url or ("://" in url and not url.startswith("sqlite:")):
            raise ConfigError(f"unsupported store URL {url!r}: {_FORMS}")
        path, options = _sqlite_target(url)
        unknown = sorted(set(options) - {"busy_timeout"})
        if unknown:
            raise ConfigError(
                f"unknown store URL option(s) {unknown} in {url!r}; known: busy_timeout"
            )
        if busy_timeout is None:
            try:
                busy_timeout = float(options.get("busy_timeout", 5.0))
            except ValueError:
                raise ConfigError(f"busy_timeout in {url!r} must be seconds") from None
        self._sqlite = (path, busy_timeout)

    async def _open(self) -> Store:
        if self._postgres is not None:
            return await _open_postgres(self.url, self._durability)
        if self._sqlite is None:
            return MemoryStore()
        path, busy_timeout = self._sqlite
        from ._sqlite import SQLiteStore

        return await SQLiteStore.open(path, durability=self._durability, busy_timeout=busy_timeout)

    def __await__(self) -> Generator[Any, None, Store]:
        return self._open().__await__()

    async def __aenter__(self) -> Store:
        self._store = await self._open()
        return self._store

    async def __aexit__(self, *exc_info: object) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.aclose()


async def _open_postgres(url: str, durability: Literal["normal", "full"]) -> Store:
    """The PostgreSQL store; asyncpg is imported only now (``import asyncbatch`` stays light)."""
    try:
        from ._postgres import PostgresStore
    except ModuleNotFoundError as exc:
        if exc.name != "asyncpg":
            raise
        raise StoreError(
            "the PostgreSQL store needs asyncpg: pip install 'asyncbatch[postgres]'"
        ) from None
    return await PostgresStore.open(url, durability=durability)


def open_store(
    url: str | os.PathLike[str],
    *,
    durability: Literal["normal", "full"] = "normal",
    busy_timeout: float | None = None,
) -> _OpenStore:
    """Open the store at ``url``: ``async with ab.open_store(url) as store: ...``.

    Args:
        url: ``"memory://"``; ``"sqlite:///relative.db"`` or
            ``"sqlite:////absolute/path.db"`` (optionally ``?busy_timeout=SECONDS``);
            or a plain file path, which is a SQLite database; or
            ``"postgresql://user[:password]@host[:port]/database"`` (also
            ``postgres://``), optionally ``?schema=NAME`` (default
            ``asyncbatch``) and ``?retry_timeout=SECONDS`` (how long a lost
            database is waited for, default 30); needs ``asyncbatch[postgres]``.
        durability: the store's default ``"normal"`` (survives a process
            crash) or ``"full"`` (fsync per commit, survives power loss).
        busy_timeout: SQLite: seconds to wait for another writer (default 5, or the URL's).

    Returns:
        An async context manager yielding the `Store` and closing it at exit.
        ``store = await ab.open_store(url)`` also works; then call ``await store.aclose()``.

    Raises:
        ConfigError: the URL is not one of the accepted forms.
        StoreError: the store cannot be opened (on entering): unreachable, a
            wrong password, an unknown database, not an asyncbatch store, or
            written by a newer asyncbatch; or asyncpg is not installed.
    """
    return _OpenStore(os.fspath(url), check_durability(durability), busy_timeout)


def as_store(
    store: Store | str | os.PathLike[str] | None,
    *,
    durability: Literal["normal", "full"] = "normal",
) -> contextlib.AbstractAsyncContextManager[Store]:
    """The store a batch's ``store=`` option names, for the length of a run.

    ``None`` gives a fresh `MemoryStore`; a URL or path is opened with
    `open_store`; both are closed at exit. A `Store` instance is used as is
    and left open: whoever created it closes it.

    Raises:
        ConfigError: ``store`` is none of these.
    """
    if store is None:
        return _closing(MemoryStore())
    if isinstance(store, str | os.PathLike):
        return open_store(store, durability=durability)
    if isinstance(store, Store):
        return contextlib.nullcontext(store)
    raise ConfigError(
        f"store= must be None (in memory), a URL or path ({_FORMS}), or a Store; got {store!r}"
    )


@contextlib.asynccontextmanager
async def _closing(store: Store) -> AsyncIterator[Store]:
    try:
        yield store
    finally:
        await store.aclose()
