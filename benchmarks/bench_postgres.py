"""PostgreSQL store benchmarks: checkpointed no-op throughput against the database's own ceiling.

Run: ``python -m benchmarks.bench_postgres [--jobs N] [--url URL] [--quick]``
(URL default: ``ASYNCBATCH_BENCH_PG``, else ``ASYNCBATCH_TEST_PG``, else
postgresql://postgres@127.0.0.1:5432/test; skipped when nothing answers).
Every figure is a ratio to a baseline measured in the same run, each on a
fresh schema, ``synchronous_commit=on`` throughout:

1. ``run_batch`` of N no-op jobs checkpointed to PostgreSQL, vs
   (a) the same run checkpointed to SQLite, and
   (b) the ceiling: ONE ``INSERT ... SELECT`` of the same N rows into the
       same ``jobs`` table (same indexes, foreign key and sequence), the rows
       sent as arrays and unnested, in one transaction: what the server
       itself can take. Target: >= 0.5x the ceiling and >= 15k jobs/s.
2. The same insert from ``generate_series`` (no rows on the wire) for reference.
3. ``PostgresStore.commit`` one job per transaction: what grouping saves.
4. CPU per job, which moves far less with the machine's load than wall time:
   the client's (``time.process_time`` of this process over the jobs) and
   the server's (CPU time of the store's backend processes, read from
   ``/proc``: only when the server runs on this machine; WAL writer and
   checkpointer not counted), for the run (its store opened first, so the
   backends can be found) and for the ceiling. Their sums' ratio is what
   the wall ratio tends to when both compete for one core.

The last line repeats the wall ratio to the ceiling, with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncbatch as ab
from asyncbatch._store import JobRecord, RunInfo

from ._util import row, table

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
CONCURRENCY = 100

CEILING_UNNEST = """
INSERT INTO jobs (run_id, key, idx, status, attempts, duration, result, has_result, seq,
                  updated_at)
SELECT 'ceiling', u.key, u.idx, 'succeeded', 1, 0.0001, u.result, true, nextval('job_seq'), $3
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(key, result, idx)
"""
CEILING_SERIES = """
INSERT INTO jobs (run_id, key, idx, status, attempts, duration, result, has_result, seq,
                  updated_at)
SELECT 'ceiling', i::text, i, 'succeeded', 1, 0.0001, i::text, true, nextval('job_seq'), $2
FROM generate_series(1, $1) AS i
"""


async def noop(x: int) -> int:
    return x


def server_url(given: str | None) -> str:
    return (
        given
        or os.environ.get("ASYNCBATCH_BENCH_PG")
        or os.environ.get("ASYNCBATCH_TEST_PG")
        or DEFAULT_URL
    )


async def _answers(url: str) -> str | None:
    """None when the server answers, else why not."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[postgres]')"
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"no PostgreSQL at {url}: {type(exc).__name__}: {exc}"
    await conn.close()
    return None


class Schemas:
    """Fresh schemas on the server, all dropped at the end."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.made: list[str] = []

    def new(self) -> str:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        self.made.append(schema)
        return f"{self.server}{'&' if '?' in self.server else '?'}schema={schema}"

    async def drop_all(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.server)
        try:
            for schema in self.made:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def timed(make: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await make()
    return time.perf_counter() - start


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of a local process, or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _backends(server: str, application: str) -> list[int]:
    import asyncpg

    conn = await asyncpg.connect(server)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application
        )
    finally:
        await conn.close()
    return [r[0] for r in rows]


async def run_cpu(url: str, server: str, n: int) -> tuple[float, float | None]:
    """Client CPU µs a job and server CPU µs a row of a checkpointed no-op run."""
    from asyncbatch._store._postgres import PostgresStore

    application = f"ab-bench-{uuid.uuid4().hex[:12]}"
    store = await PostgresStore.open(url, server_settings={"application_name": application})
    try:
        pids = await _backends(server, application)
        before = {pid: _cpu_seconds(pid) for pid in pids}
        start = time.process_time()
        await ab.run_batch(noop, range(n), concurrency=CONCURRENCY, store=store, run_id="b")
        client = time.process_time() - start
        pids = await _backends(server, application)  # the pool may have opened more
        after = {pid: _cpu_seconds(pid) for pid in pids}
    finally:
        await store.aclose()
    readable = all(v is not None for v in [*before.values(), *after.values()]) and after
    used = sum(t - (before.get(pid) or 0.0) for pid, t in after.items() if t is not None)
    return client / n * 1e6, used / n * 1e6 if readable else None


async def run_rate(url: str, n: int) -> float:
    """Jobs/s of a checkpointed no-op run (store opened by the run, as users do)."""
    async with ab.open_store(url):  # the schema (or file) exists before the clock starts
        pass
    elapsed = await timed(
        lambda: ab.run_batch(noop, range(n), concurrency=CONCURRENCY, store=url, run_id="b")
    )
    return n / elapsed


async def ceiling_rate(
    url: str, n: int, *, series: bool, cpu: list[float | None] | None = None
) -> float:
    """Rows/s of one INSERT ... SELECT of n job rows, in one transaction.

    ``cpu``, when given, gets the client's and the server's CPU µs a row.
    """
    from asyncbatch._store._postgres import PostgresStore

    async with await PostgresStore.open(url) as store:  # creates the schema
        await store.begin_run(RunInfo(run_id="ceiling"))

        async def insert(conn: Any) -> None:
            pid = conn.get_server_pid()
            server, client = _cpu_seconds(pid), time.process_time()
            if series:
                await conn.execute(CEILING_SERIES, n, time.time())
            else:
                keys = [str(i) for i in range(n)]
                await conn.execute(CEILING_UNNEST, keys, keys, time.time())
            client = time.process_time() - client
            after = _cpu_seconds(pid)
            if cpu is not None:
                used = None if server is None or after is None else after - server
                cpu[:] = [client / n * 1e6, None if used is None else used / n * 1e6]

        # Arrays are built inside the timed part: the store must build its own too.
        return n / await timed(lambda: store._write(insert))


async def single_rate(url: str, n: int) -> float:
    """Commits/s of one record per PostgresStore.commit."""
    from asyncbatch._store._postgres import PostgresStore

    records = [
        JobRecord(run_id="one", key=str(i), status=ab.JobStatus.SUCCEEDED, index=i, attempts=1,
                  result=i, has_result=True)
        for i in range(n)
    ]  # fmt: skip
    async with await PostgresStore.open(url) as store:
        await store.begin_run(RunInfo(run_id="one"))

        async def loop() -> None:
            for r in records:
                await store.commit([r])

        return n / await timed(loop)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known and len(known) == len(values) else None


async def measure(
    server: str, n: int, singles: int, repeat: int
) -> tuple[dict[str, float], dict[str, float | None]]:
    """The best rate of each variant over ``repeat`` rounds, and the median CPU figures."""
    schemas = Schemas(server)
    best: dict[str, float] = {}
    cpus: dict[str, list[float | None]] = {k: [] for k in ("run", "run_srv", "ceil", "ceil_srv")}
    tmpdir = tempfile.TemporaryDirectory(prefix="ab-bench-pg-")
    tmp = tmpdir.name
    try:
        for attempt in range(repeat):
            ceiling_cpu: list[float | None] = [None, None]
            rates = {
                "ceiling": await ceiling_rate(schemas.new(), n, series=False, cpu=ceiling_cpu),
                "series": await ceiling_rate(schemas.new(), n, series=True),
                "postgres": await run_rate(schemas.new(), n),
                "sqlite": await run_rate(os.path.join(tmp, f"b{attempt}.db"), n),
                "single": await single_rate(schemas.new(), singles),
            }
            for name, rate in rates.items():
                best[name] = max(best.get(name, 0.0), rate)
            run_client, run_server = await run_cpu(schemas.new(), server, n)
            for name, value in zip(cpus, [run_client, run_server, *ceiling_cpu], strict=True):
                cpus[name].append(value)
    finally:
        await schemas.drop_all()
        tmpdir.cleanup()
    return best, {name: _median(values) for name, values in cpus.items()}


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} µs"


def cpu_row(cpu: dict[str, float | None]) -> list[str]:
    """Client + server CPU a job of the run and a row of the ceiling, and their ratio."""
    run, run_srv, ceil, ceil_srv = cpu["run"], cpu["run_srv"], cpu["ceil"], cpu["ceil_srv"]
    text = (
        f"run {_us(run)} client + {_us(run_srv)} server a job; "
        f"ceiling {_us(ceil)} + {_us(ceil_srv)} a row"
    )
    if run is not None and run_srv is not None and ceil is not None and ceil_srv is not None:
        text += f"; CPU ratio {(ceil + ceil_srv) / (run + run_srv):.2f}x"
    return row("CPU (median; server: its backends' /proc times)", text)


def main(argv: list[str] | None = None) -> list[list[str]]:
    """Print jobs/s of each variant and the ratios between them."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="no-op jobs per run")
    parser.add_argument("--url", help="PostgreSQL server (default: see the module docstring)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    args, _ = parser.parse_known_args(argv)  # `python -m benchmarks` passes every flag on
    url = server_url(args.url)
    problem = asyncio.run(_answers(url))
    if problem is not None:
        print(f"\n### PostgreSQL store\n\nskipped: {problem}")
        return []
    scale = 10 if args.quick else 1
    n, singles = args.jobs // scale, 2_000 // scale
    r, cpu = asyncio.run(measure(url, n, singles, repeat=1 if args.quick else 3))
    vs_ceiling = r["postgres"] / r["ceiling"]
    rows = [
        row(
            f"ceiling: one INSERT ... SELECT FROM unnest of {n:,} job rows",
            f"{r['ceiling']:,.0f} rows/s",
        ),
        row("same FROM generate_series (no rows on the wire)", f"{r['series']:,.0f} rows/s"),
        row(
            f"{n:,} no-op jobs checkpointed to PostgreSQL (concurrency {CONCURRENCY})",
            f"{r['postgres']:,.0f} jobs/s = {vs_ceiling:.2f}x the ceiling",
            ">= 0.5x, >= 15k/s",
            vs_ceiling >= 0.5 and r["postgres"] >= 15_000,
        ),
        row(
            "same run checkpointed to SQLite",
            f"{r['sqlite']:,.0f} jobs/s; PostgreSQL is {r['postgres'] / r['sqlite']:.2f}x of it",
        ),
        row(
            "PostgresStore.commit, one job per transaction",
            f"{r['single']:,.0f} commits/s; grouping is {r['postgres'] / r['single']:.0f}x faster",
        ),
        cpu_row(cpu),
    ]
    print(
        table(
            f"PostgreSQL store (python {sys.version.split()[0]}, synchronous_commit=on, "
            f"{url.split('@')[-1]})",
            rows,
        )
    )
    print(
        f"\nPostgreSQL checkpointed run / ceiling: {vs_ceiling:.2f}x (target >= 0.50x), "
        f"{r['postgres']:,.0f} jobs/s; load average {os.getloadavg()[0]:.2f}"
    )
    return rows


if __name__ == "__main__":
    main()
