"""The one seam between the PostgreSQL store and asyncpg: a pool, retries, clear errors.

`Connector.write` runs a body in one transaction on a pooled connection,
`Connector.read` without one. When the connection is lost (the server
restarted, a network blip, an administrator terminated the backend) the
whole body is retried on a fresh connection, with capped exponential
backoff, for at most ``retry_timeout`` seconds since the first failure;
then it raises `StoreError`. Bodies must therefore be safe to run again:
the store makes its group commit exactly-once with a commit token.

Errors that retrying cannot fix (a wrong password, an unknown database, a
constraint or syntax error) become one-line `StoreError`s at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import asyncpg

from asyncbatch._errors import StoreError

from ._postgres_url import PostgresTarget

__all__ = ["Connector", "connect", "one_line"]

T = TypeVar("T")
Body = Callable[[asyncpg.Connection], Awaitable[T]]

_FIRST_DELAY, _MAX_DELAY = 0.05, 1.0

# Lost connections and a server that is restarting or shutting down (SQLSTATE
# classes 08 and 57, but not 57014, a cancelled statement), serialization
# failures and deadlocks (class 40). Everything else is a real error.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSIENT) and not isinstance(exc, asyncpg.QueryCanceledError)


def _closed(conn: asyncpg.Connection) -> bool:
    """Whether a body failed because its connection went away.

    A server that terminates its backends (a restart) can leave asyncpg's
    protocol mid-operation, so the failure surfaces as some other error
    (``InternalClientError``, "another operation is in progress"); the
    connection being closed says what it really was.
    """
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # the pool already released the dead connection
        return True


def _connect_error(target: PostgresTarget, exc: BaseException) -> StoreError:
    """Why a first connection failed, and what to do about it, in one line."""
    where = target.where
    text = one_line(exc)
    if isinstance(exc, asyncpg.InvalidPasswordError):
        hint = "check the password in the URL (or PGPASSWORD / ~/.pgpass)"
    elif isinstance(exc, asyncpg.InvalidCatalogNameError):
        hint = f"create it (createdb {target.url.rsplit('/', 1)[-1].split('?')[0]}) or fix the URL"
    elif isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        hint = "check the user name in the URL and the server's pg_hba.conf"
    elif isinstance(exc, OSError | TimeoutError):
        hint = "is the server running and accepting TCP connections there?"
        text = text if not isinstance(exc, TimeoutError) else "timed out"
    else:
        hint = "check the URL"
    return StoreError(f"cannot connect to PostgreSQL at {where}: {text} ({hint})")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond asyncpg's own rollback of a transaction.

    The default also runs ``RESET ALL; UNLISTEN *; ...``: a round trip per
    store call, for session state the store never changes (no SET, no LISTEN,
    only transaction-level advisory locks). Settings given at connect
    (search_path, synchronous_commit) are the session's defaults anyway.
    """


async def connect(
    target: PostgresTarget,
    *,
    max_size: int,
    server_settings: Mapping[str, str],
    command_timeout: float | None = None,
) -> asyncpg.Pool:
    """A pool of up to ``max_size`` connections; the first is opened now.

    ``command_timeout`` bounds every statement on the client side (a shared
    run's workers: a server behind a blackholing network must not hang them).

    Raises:
        StoreError: the server cannot be reached or refuses us (one line, with a hint).
    """
    try:
        pool = await asyncpg.create_pool(
            target.dsn,
            min_size=1,
            max_size=max_size,
            timeout=10.0,
            server_settings=dict(server_settings),
            reset=_keep_session,
            command_timeout=command_timeout,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _connect_error(target, exc) from exc
    except ValueError as exc:  # asyncpg's DSN parser: a bad port, an unknown sslmode, ...
        raise StoreError(f"bad PostgreSQL URL {target.url}: {one_line(exc)}") from exc
    return pool


class Connector:
    """Runs store bodies on a pool, retrying lost connections for a bounded time.

    Attributes:
        retries: how many times a body was retried (for tests and diagnostics).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        target: PostgresTarget,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._pool = pool
        self._target = target
        self._sleep = sleep
        self.retries = 0

    async def write(self, body: Body[T]) -> T:
        """``body`` in one transaction: committed as a whole or not at all."""

        async def in_transaction(conn: asyncpg.Connection) -> T:
            # Not `async with conn.transaction()`: when the connection died
            # mid-body its ROLLBACK fails with an error of its own, which would
            # hide the lost connection (the error that makes us retry).
            transaction = conn.transaction()
            await transaction.start()
            try:
                result = await body(conn)
            except BaseException:
                try:
                    await transaction.rollback()
                except Exception:
                    try:
                        conn.terminate()  # broken: the pool replaces it
                    except asyncpg.InterfaceError:
                        pass  # the pool has already let go of it
                raise
            await transaction.commit()
            return result

        return await self._retrying(in_transaction)

    async def read(self, body: Body[T]) -> T:
        """``body`` on a pooled connection, no explicit transaction."""
        return await self._retrying(body)

    async def _retrying(self, body: Body[T]) -> T:
        deadline: float | None = None
        delay = _FIRST_DELAY
        while True:
            lost = False
            try:
                async with self._pool.acquire() as conn:
                    try:
                        return await body(conn)
                    except Exception:
                        lost = _closed(conn)
                        raise
            except Exception as exc:
                if not (lost or _is_transient(exc)):
                    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
                        raise StoreError(
                            f"PostgreSQL store {self._target.url}: {one_line(exc)}"
                        ) from exc
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._target.retry_timeout
                if now >= deadline:
                    raise StoreError(
                        f"lost the PostgreSQL server at {self._target.where} and it did not "
                        f"come back within {self._target.retry_timeout:g}s ({one_line(exc)}); "
                        "what it acknowledged is stored; resume with the same run_id"
                    ) from exc
                self.retries += 1
                await self._sleep(min(delay, max(deadline - now, 0.0)))
                delay = min(delay * 2, _MAX_DELAY)

    async def aclose(self) -> None:
        """Close the pool; connections still busy are terminated after 10 s."""
        try:
            await asyncio.wait_for(self._pool.close(), 10.0)
        except TimeoutError:
            self._pool.terminate()
