"""What an open dashboard costs a running batch: ``asyncbatch ui`` polled during a SQLite run.

Run: ``python -m benchmarks.bench_ui [--jobs N] [--pages P] [--rounds R] [--quick]``.

A batch of N no-op jobs (default 100,000) with durable SQLite checkpoints
runs in this process, alone (the baseline) and again while ``asyncbatch ui
--read-only`` serves the same database from its own process and P pages
(default 4: the runs list and three tabs on the running run) poll it from
a third process exactly as the page's script does: ``/api/runs`` every 2 s,
``/api/runs/ID`` every 1 s and ``/api/runs/ID/charts`` every 10 s, the tabs'
timers offset. Rounds alternate baseline and dashboard on fresh databases;
the best of each is compared (target: the dashboard costs <= 5% of the
throughput, i.e. >= 0.95x); the median of each round's ratio is shown
too. Also shown: the CPU the dashboard's server (and, apart, the pages'
poller) used while the batch ran, and the batch's jobs per second of its own
CPU time (what a slower writer would show; other processes on a shared
machine move it much less than wall time).
The run is short at full speed, so ``--poll-scale S`` divides every interval
by S to press harder.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncbatch as ab

from ._util import row, table

_POLLER = r"""
import asyncio, sys
import aiohttp

base, run_id, pages, scale = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

async def every(session, path, interval, offset):
    await asyncio.sleep(offset)
    while True:
        async with session.get(base + path) as r:
            await r.read()
        await asyncio.sleep(interval)

async def main():
    async with aiohttp.ClientSession() as s:
        for path in ("api/info", "api/runs", "api/dlq", "api/runs/none"):  # a warm server
            async with s.get(base + path) as r:
                await r.read()
        print("ready", flush=True)
        tasks = []
        for p in range(pages):
            off = p / max(pages, 1) / scale
            if p == 0:
                tasks.append(every(s, "api/runs", 2.0 / scale, off))
            else:
                tasks.append(every(s, f"api/runs/{run_id}", 1.0 / scale, off))
                tasks.append(every(s, f"api/runs/{run_id}/charts", 10.0 / scale, off))
        await asyncio.gather(*tasks)

asyncio.run(main())
"""


async def _noop(item: int) -> int:
    return item


async def _run(db: Path, run_id: str, n: int) -> tuple[float, float]:
    """Jobs per second of wall time, and per second of this process's CPU time."""
    start, cpu = time.perf_counter(), time.process_time()
    result = await ab.run_batch(_noop, range(n), store=f"sqlite:///{db}", run_id=run_id)
    took, used = time.perf_counter() - start, time.process_time() - cpu
    assert result.ok
    return n / took, n / used


async def _create(db: Path) -> None:
    async with ab.open_store(f"sqlite:///{db}"):
        pass


def _dashboard(db: Path, run_id: str, pages: int, scale: float) -> list[subprocess.Popen[str]]:
    """``asyncbatch ui`` on the database and a poller process, both ready."""
    ui = subprocess.Popen(
        [sys.executable, "-m", "asyncbatch", "ui", "--db", str(db), "--port", "0", "--read-only"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert ui.stdout is not None
    line = ui.stdout.readline()
    found = re.search(r"http://\S+/", line)
    if not found:
        ui.kill()
        raise RuntimeError(f"asyncbatch ui did not start: {line!r}")
    poller = subprocess.Popen(
        [sys.executable, "-c", _POLLER, found.group(0), run_id, str(pages), str(scale)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert poller.stdout is not None
    if poller.stdout.readline().strip() != "ready":
        raise RuntimeError("the poller did not start")
    return [poller, ui]


def _cpu(procs: list[subprocess.Popen[str]]) -> float:
    """CPU seconds (user + system) the processes have used so far (Linux /proc)."""
    total = 0.0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=10)


def measure(n: int, pages: int, rounds: int, scale: float, tmp: str) -> dict[str, float]:
    """Best jobs/s of the batch alone and with the dashboard open, rounds interleaved."""
    best = {"alone": 0.0, "dashboard": 0.0, "alone_cpu": 0.0, "dashboard_cpu": 0.0}
    pairs: list[float] = []
    cpu: list[float] = []
    pages_cpu: list[float] = []
    for r in range(rounds):
        rates: dict[str, float] = {}
        for mode in ("alone", "dashboard") if r % 2 == 0 else ("dashboard", "alone"):
            db = Path(tmp) / f"{mode}-{r}.db"
            asyncio.run(_create(db))
            run_id = f"bench-ui-{mode}-{r}"
            procs = _dashboard(db, run_id, pages, scale) if mode == "dashboard" else []
            try:
                gc.collect()
                cpu0, pages0, t0 = _cpu(procs[1:]), _cpu(procs[:1]), time.perf_counter()
                rate, per_cpu = asyncio.run(_run(db, run_id, n))
                if procs:  # shares of one core the server and the pages used meanwhile
                    took = time.perf_counter() - t0
                    cpu.append((_cpu(procs[1:]) - cpu0) / took)
                    pages_cpu.append((_cpu(procs[:1]) - pages0) / took)
            finally:
                _stop(procs)
            best[mode] = max(best[mode], rate)
            best[f"{mode}_cpu"] = max(best[f"{mode}_cpu"], per_cpu)
            rates[mode] = rate
            os.unlink(db)
        pairs.append(rates["dashboard"] / rates["alone"])
    best["median_pair"] = statistics.median(pairs)
    best["cpu"] = statistics.median(cpu)
    best["pages_cpu"] = statistics.median(pages_cpu)
    return best


def main(argv: list[str] | None = None) -> None:
    """Print jobs/s alone and with the dashboard open, and their ratio."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=4, help="open pages polling")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each, interleaved")
    parser.add_argument("--poll-scale", type=float, default=1.0, help="poll S times as often")
    parser.add_argument("--quick", action="store_true", help="a tenth of the jobs, 2 rounds")
    args = parser.parse_args(argv)
    n = args.jobs // 10 if args.quick else args.jobs
    rounds = 2 if args.quick else args.rounds
    rows = []
    with tempfile.TemporaryDirectory(prefix="asyncbatch-bench-ui-") as tmp:
        for scale in sorted({1.0, args.poll_scale}):
            r = measure(n, args.pages, rounds, scale, tmp)
            ratio = r["dashboard"] / r["alone"]
            how = "the page's intervals" if scale == 1.0 else f"intervals / {scale:g}"
            rows += [
                row(f"{n:,} no-op jobs, SQLite checkpoints, alone", f"{r['alone']:,.0f} jobs/s"),
                row(
                    f"same, `asyncbatch ui` open, {args.pages} pages polling ({how})",
                    f"{r['dashboard']:,.0f} jobs/s = {ratio:.3f}x (median of the rounds' "
                    f"ratios: {r['median_pair']:.3f}x)",
                    ">= 0.95x" if scale == 1.0 else "",
                    ratio >= 0.95 if scale == 1.0 else None,
                ),
                row(
                    "the batch's own CPU: jobs per CPU-second, dashboard open vs alone",
                    f"{r['dashboard_cpu']:,.0f} vs {r['alone_cpu']:,.0f} = "
                    f"{r['dashboard_cpu'] / r['alone_cpu']:.3f}x",
                ),
                row(
                    "CPU `asyncbatch ui` used during the run (median round)",
                    f"{r['cpu']:.1%} of one core (the pages' poller: {r['pages_cpu']:.1%})",
                ),
            ]
    print(table(f"Dashboard load (python {sys.version.split()[0]})", rows))


if __name__ == "__main__":
    main()
