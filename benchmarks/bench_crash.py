"""How much a crash re-runs: SIGKILL a checkpointed run at random points, resume, count.

Run: ``python -m benchmarks.bench_crash [--quick]``. A real subprocess runs
10,000 jobs of 0.5-4 ms at concurrency 200 into SQLite (``tests/crash_job.py``)
and is killed at a random number of committed jobs; the resume then runs
what was not acknowledged. Jobs that run twice are those that had finished
(or were in flight) but were not committed at the kill: the bound is the
concurrency plus the group being committed, the one sent behind it (the
writer process takes two) and the one accumulating, each at most
``max(group_size, 2 x concurrency)`` records (SQLite's ``group_size``: 4,096).
Every kill is also checked: no acknowledged job ran again.
"""

from __future__ import annotations

import argparse
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from asyncbatch._store._sqlite import SQLiteStore

from ._util import row, table

SCRIPT = Path(__file__).parent.parent / "tests" / "crash_job.py"
N, CONCURRENCY = 10_000, 200
BOUND = CONCURRENCY + 3 * max(SQLiteStore.group_size, 2 * CONCURRENCY)


def _committed(db: Path) -> set[str]:
    if not db.exists():
        return set()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    try:
        return {k for (k,) in con.execute("SELECT key FROM jobs WHERE run_id = 'crash'")}
    except sqlite3.OperationalError:
        return set()
    finally:
        con.close()


def one_kill(seed: int) -> tuple[int, bool]:
    """(jobs run twice, whether an acknowledged job ran again) for one kill."""
    kill_at = random.Random(seed).randint(500, N - 2000)
    with tempfile.TemporaryDirectory() as tmp:
        db, log = Path(tmp) / "crash.db", Path(tmp) / "ran.log"
        argv = [sys.executable, str(SCRIPT), str(db), str(log), str(N), str(CONCURRENCY)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(_committed(db)) < kill_at and proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        acked = _committed(db)
        before = log.read_text().split() if log.exists() else []
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        after = log.read_text().split()[len(before) :]
        return len(set(before) & set(after)), bool(acked & set(after))


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 kills instead of 24")
    parser.add_argument("--kills", type=int, default=None)
    args = parser.parse_args(argv)
    kills = args.kills or (4 if args.quick else 24)
    twice, repeated = [], 0
    for i in range(kills):
        n, again = one_kill(1000 + i)
        twice.append(n)
        repeated += again
    rows = [
        row(
            f"{kills} SIGKILLs of {N:,} jobs at concurrency {CONCURRENCY}: acked jobs re-run",
            str(repeated),
            "0",
            repeated == 0,
        ),
        row(
            "jobs re-run after a kill (in flight or finished, not committed)",
            f"max {max(twice)}, median {statistics.median(twice):.0f}",
            f"<= {BOUND} (concurrency + 3 groups)",
            max(twice) <= BOUND,
        ),
    ]
    print(table("Crash re-runs (SQLite, durability normal)", rows))
    return rows


if __name__ == "__main__":
    main()
