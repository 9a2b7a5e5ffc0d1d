"""An ETL job that rolls itself back: ``compensate=`` undoes loaded rows on abort.

Extract orders, transform them, load each into a warehouse table. Halfway
through, the warehouse rejects a write with an error that means nothing
else will work either (the table was dropped under us): a FATAL error. The
batch aborts, and every order that had been loaded is deleted again, newest
first, by the compensation function, so the warehouse is left as it was.
Run it: ``python examples/etl_compensation.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncbatch as ab


class SchemaChanged(ab.FatalError):
    """The target table is gone: retrying or going on would be pointless."""


class Warehouse:
    """A stand-in for a real warehouse: rows by id, with a little latency."""

    def __init__(self, breaks_after: int) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.writes = 0
        self.breaks_after = breaks_after

    async def insert(self, row: dict[str, Any]) -> str:
        await asyncio.sleep(0.002)
        self.writes += 1
        if self.writes > self.breaks_after:
            raise SchemaChanged("table analytics.orders does not exist")
        row_id: str = row["id"]
        self.rows[row_id] = row
        return row_id

    async def delete(self, row_id: str) -> None:
        await asyncio.sleep(0.001)
        self.rows.pop(row_id, None)  # idempotent: a crash may replay it


def extract(n: int) -> list[dict[str, Any]]:
    return [{"order": i, "cents": 1999 + i, "currency": "EUR"} for i in range(n)]


async def main() -> None:
    warehouse = Warehouse(breaks_after=60)

    async def load(order: dict[str, Any]) -> str:
        row = {"id": f"order-{order['order']}", "amount": order["cents"] / 100}  # transform
        return await warehouse.insert(row)  # load

    async def unload(order: dict[str, Any], row_id: str) -> None:
        await warehouse.delete(row_id)

    orders = extract(200)
    try:
        await ab.run_batch(
            load,
            orders,
            key=lambda order: f"order-{order['order']}",
            concurrency=8,
            compensate=unload,
        )
    except ab.BatchAborted as aborted:
        counts = aborted.result.counts
        print(f"aborted: {aborted.cause}")
        print(
            f"{counts[ab.JobStatus.COMPENSATED]} loaded rows rolled back, "
            f"{counts[ab.JobStatus.FAILED]} failed, {counts[ab.JobStatus.CANCELLED]} cancelled "
            f"in flight, {len(orders) - sum(counts.values())} never started"
        )
    else:
        raise SystemExit("expected the batch to abort")
    print(f"rows left in the warehouse: {len(warehouse.rows)}")
    assert not warehouse.rows


if __name__ == "__main__":
    asyncio.run(main())
