"""Exact limits of shared runs on PostgreSQL: bulkhead slots and rate reservations.

With ``ab.SharedRun(exact_limits=...)`` a dependency's limits hold across
every worker process of the run, coordinated by the database alone:

- a bulkhead of N is N *slot* rows (`LimitBoard.claim`): one ``UPDATE ...
  FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT k)`` leases up to k free
  ones (or ones whose lease ran out: a dead worker's slots come back without
  a reaper), raising each one's epoch so that a late release by an earlier
  holder changes nothing. `LimitBoard.release` frees them when the calls end,
  `LimitBoard.renew` (the worker's heartbeat) keeps the leases of long calls.
- a rate is one row holding the next free start time (the generic cell rate
  algorithm): `LimitBoard.reserve` takes k starts ``spacing`` seconds apart in
  one ``UPDATE``, so starts reserved by every worker never come closer than
  ``per / n`` on the database clock, and nobody polls for a token.

Every statement (``sql/postgres_limits.sql``) is one short transaction on a
pooled connection: nothing is held open across a call. Times are the
database's (``now()``), unless the board is given a ``clock`` (tests).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._postgres_sql import load_named

if TYPE_CHECKING:
    import asyncpg

    from ._postgres import PostgresStore

__all__ = ["LimitBoard", "LimitQueries", "Slot"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitQueries:
    """The statements of ``postgres_limits.sql``, by name."""

    slots_make: str
    rate_make: str
    slots_claim: str
    slots_release: str
    slots_renew: str
    slots_drop: str
    rate_reserve: str
    limits_forget: str




L = load_named("postgres_limits.sql", LimitQueries)

YIELD = 0.05
"""Seconds a freed slot is left to other workers whose demand stands (they poll faster)."""
WANT = 0.2
"""Seconds a claimer's unmet demand stands (each unsatisfied claim renews it)."""

Slot = tuple[str, int, int]
"""A leased slot: ``(dependency, slot number, epoch)``."""


class LimitBoard:
    """The exact-limit statements over one open `PostgresStore`.

    Args:
        store: the open store (its pool; statements retried on a lost connection).
        lease: seconds a claim (or renewal) holds a slot.
        clock: epoch seconds to use instead of the database's ``now()`` (tests only).
    """

    def __init__(
        self, store: PostgresStore, *, lease: float, clock: Callable[[], float] | None = None
    ) -> None:
        self.store = store
        self.lease = float(lease)
        self._clock = clock

    def _now(self) -> float | None:
        return None if self._clock is None else self._clock()

    async def _do(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        # One statement, autocommitted: a transaction of its own, one round trip.
        async def body(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(await conn.fetch(sql, *args))

        return await self.store._db.read(body)

    async def make(self, run_id: str, *, slots: dict[str, int], spacing: dict[str, float]) -> None:
        """Create the run's slots (dependency → N) and rate rows (dependency → seconds apart)."""
        for dep, n in sorted(slots.items()):
            await self._do(L.slots_make, run_id, dep, n)
        for dep, s in sorted(spacing.items()):
            await self._do(L.rate_make, run_id, dep, s)

    async def claim(self, run_id: str, dependency: str, owner: str, n: int) -> list[Slot]:
        """Lease up to ``n`` free slots of ``dependency`` (none free: an empty list).

        Getting fewer than ``n`` records this owner's demand for `WANT` s; while
        another owner's demand stands, slots this owner freed within `YIELD` s
        are left to the others.
        """
        rows = await self._do(
            L.slots_claim, self._now(), run_id, dependency, owner, n, self.lease, YIELD, WANT
        )
        return [(dependency, int(r[0]), int(r[1])) for r in rows]

    async def release(self, run_id: str, owner: str, slots: Sequence[Slot]) -> None:
        """Free ``slots`` (where this owner still holds them at that epoch)."""
        if slots:
            deps, nos, epochs = zip(*slots, strict=True)
            await self._do(
                L.slots_release, run_id, owner, list(deps), list(nos), list(epochs), self._now()
            )

    async def renew(self, run_id: str, owner: str) -> set[Slot]:
        """Renew every slot ``owner`` holds under a live lease; returns them."""
        rows = await self._do(L.slots_renew, self._now(), run_id, owner, self.lease)
        return {(r[0], int(r[1]), int(r[2])) for r in rows}

    async def drop(self, run_id: str, owner: str) -> None:
        """Free every slot ``owner`` holds (its session ends)."""
        await self._do(L.slots_drop, run_id, owner)

    async def reserve(self, run_id: str, dependency: str, n: int) -> tuple[float, float, float]:
        """Reserve ``n`` starts: ``(the first, now, seconds between them)``, database time."""
        rows = await self._do(L.rate_reserve, self._now(), run_id, dependency, n)
        if not rows:
            raise LookupError(f"no rate row for {dependency!r} in run {run_id!r}")
        first, now, spacing = rows[0]
        return float(first), float(now), float(spacing)

    async def forget(self, run_id: str) -> None:
        """Delete the run's slots and rates (it finished)."""
        await self._do(L.limits_forget, run_id)
