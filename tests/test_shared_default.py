"""``shared="auto"``: a PostgreSQL run is shared; memory and SQLite runs are not.

A run whose job or options cannot reach other processes is still shared,
worked by the coordinator alone; a worker refuses to join it, saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_shared import _env

import asyncbatch as ab
from asyncbatch._run._options import build_options

pytestmark = pytest.mark.timeout(120)


def test_auto_shares_postgresql_runs_only(tmp_path: Path) -> None:
    pg = build_options(shared="auto", store="postgresql://u@h/db")
    assert pg.shared == ab.SharedRun()
    assert pg.shared_auto
    for store in ("memory://", f"sqlite:///{tmp_path / 'r.db'}", None):
        assert build_options(shared="auto", store=store).shared is None
    if not os.environ.get("ASYNCBATCH_TEST_SHARED"):  # (that switch changes the default)
        assert build_options(store="postgresql://u@h/db").shared is None  # the default: False
    explicit = build_options(shared=True, store="postgresql://u@h/db")
    assert explicit.shared == ab.SharedRun()
    assert not explicit.shared_auto
    with pytest.raises(ab.ConfigError, match='shared must be "auto", True, False'):
        build_options(shared="yes")  # type: ignore[arg-type]


async def test_an_auto_shared_run_of_a_closure_is_worked_here_and_refuses_workers(
    pg_url: str,
) -> None:
    async def local(x: int) -> int:
        return x * 3

    result = await ab.run_batch(
        local, range(20), store=pg_url, run_id="alone", shared="auto",
        classify=ab.Classifier([ab.Rule(ValueError, kind="transient", when=lambda e: True)]),
    )  # fmt: skip
    assert [o.result for o in result.outcomes] == [3 * i for i in range(20)]
    async with ab.open_store(pg_url) as store:
        run = await store.get_run("alone")
        assert run.config["shared"]["policy"] is None  # a lambda: workers could not apply it
        # An open PostgreSQL store is shared by "auto" too (its URL, password and all).
        again = await ab.run_batch(local, range(25), store=store, run_id="alone", shared="auto")
    assert again.counts[ab.JobStatus.SKIPPED] == 20
    assert again.counts[ab.JobStatus.SUCCEEDED] == 5
    done = await anyio.to_thread.run_sync(_join, pg_url, "alone")
    assert done.returncode != 0
    assert done.stderr.startswith("error: run 'alone' cannot be joined")


def _join(url: str, run_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncbatch", "worker", "shared_job:job", "--db", url,
         "--run-id", run_id],
        capture_output=True, text=True, env=_env(Path("/dev/null")), timeout=60,
    )  # fmt: skip


def test_a_workers_budget_is_judged_as_its_jobs_finish_with_the_others_counts() -> None:
    from asyncbatch._run._shared_budget import RunWideTracker

    tracker = RunWideTracker(ab.ErrorBudget(max_failures=5))
    failed = ab.JobOutcome(key="k", status=ab.JobStatus.DEAD_LETTERED, kind=ab.ErrorKind.PERMANENT)
    for _ in range(3):
        assert tracker.record_job(failed) is None
    # The last beat read 7 failures in all, 2 of them this worker's (as it wrote them).
    tracker.seen({"jobs": 7, "failures": 7, "retries": 0}, {"jobs": 2, "failures": 2})
    verdict = tracker.record_job(failed)  # 4 here + 5 elsewhere = 9 > 5
    assert verdict is not None
    assert "9 failed jobs exceed max_failures=5" in str(verdict)
    assert tracker.totals()["failures"] == 4, "it still writes only its own counts"


def _id(item: dict[str, Any]) -> str:
    return str(item["id"])


async def test_a_key_a_chunk_holds_twice_is_one_job_and_the_run_finishes(pg_url: str) -> None:
    # k3 at input positions 3 and 7, in one chunk: the run hung (the second reached
    # the engine's admission, which refused it, and the chunk never finished).
    items: list[dict[str, Any]] = [{"id": f"k{i}", "n": i} for i in range(1000)]
    items[7] = {"id": "k3", "n": -1}
    with anyio.fail_after(30):
        result = await ab.run_batch(
            _n, items, key=_id, concurrency=4, store=pg_url, run_id="twice-here", shared=True
        )
    assert len(result.outcomes) == 999
    assert {o.key: o.result for o in result.outcomes}["k3"] == 3  # the first one ran


async def _n(item: dict[str, Any]) -> int:
    return int(item["n"])
