"""The run's lease: one process runs a run at a time.

`Store.begin_run` takes the lease for this engine's owner (``host:pid:token``)
in the same transaction that marks the run running, or raises `RunOwned`;
`Lease.run` renews it every third of its duration from a service task, so it
beats even while every job is parked or waiting on a slow dependency; the
engine releases it with `Store.end_run`. A process that dies stops beating:
another process takes the run over once the lease is stale, or at once when
the owner was a process of the same host that no longer exists.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import anyio

from asyncbatch._errors import RunOwned, StoreError
from asyncbatch._store import DEFAULT_LEASE, RunInfo, RunStatus, Store, owning_here

__all__ = ["LEASE", "Lease"]

LEASE = DEFAULT_LEASE
"""Seconds without a heartbeat after which another process may take the run."""


class Lease:
    """This engine's ownership of its run.

    Attributes:
        owner: ``host:pid:token``, unique per engine (two engines of one
            process are two owners).
        duration: the lease in seconds; renewed every ``duration / 3``.
        lost: the `RunOwned` error when another owner took the run over.
    """

    def __init__(self, store: Store, run_id: str, *, duration: float | None = None) -> None:
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.duration = LEASE if duration is None else duration
        self.lost: RunOwned | None = None
        self._store = store
        self._run_id = run_id
        self._scope = anyio.CancelScope()

    async def begin(self, run: RunInfo) -> RunInfo | None:
        """`Store.begin_run` taking the lease; returns the run as it was (None if new).

        Raises:
            RunOwned: another process (or engine) runs the run.
        """
        owning_here(self.owner, True)  # before: a concurrent engine must see us alive
        try:
            return await self._store.begin_run(run, owner=self.owner, lease=self.duration)
        except BaseException:
            owning_here(self.owner, False)
            raise

    async def run(self) -> None:
        """Renew the lease until `stop`; raises `RunOwned` if it was lost.

        A renewal the store fails to write (disk full, database locked) is
        retried at the next beat: the commit path reports a broken store
        with the error that matters, and one missed beat still leaves the
        lease two thirds of its duration.
        """
        with self._scope:
            while True:
                await anyio.sleep(self.duration / 3)
                try:
                    await self._store.heartbeat(self._run_id, self.owner)
                except RunOwned as exc:
                    self.lost = exc
                    raise
                except StoreError:
                    continue

    def stop(self) -> None:
        """Stop renewing (before the lease is released)."""
        self._scope.cancel()

    async def end(
        self, status: RunStatus, counts: dict[str, int], report: dict[str, Any] | None
    ) -> None:
        """`Store.end_run` releasing the lease (unless it was lost to another owner)."""
        try:
            if self.lost is None:
                await self._store.end_run(self._run_id, status, counts, report, owner=self.owner)
        finally:
            owning_here(self.owner, False)
