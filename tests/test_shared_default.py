"""``shared="auto"``, the default: a PostgreSQL run is shared; memory and SQLite runs are not.

A run whose job or options cannot reach other processes is still shared,
worked by the coordinator alone; a worker refuses to join it, saying why.
An item that cannot reach them keeps its chunk in the coordinator.
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
        default = build_options(store="postgresql://u@h/db")  # the default: "auto"
        assert (default.shared, default.shared_auto) == (ab.SharedRun(), True)
    assert build_options(shared=False, store="postgresql://u@h/db").shared is None
    chunked = build_options(store="postgresql://u@h/db", batch_size=10)
    assert chunked.shared is None  # chunked calls are not shared (yet): one process
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


async def test_a_key_a_chunk_holds_twice_is_refused_and_the_first_runs(pg_url: str) -> None:
    # k3 at input positions 3 and 7, in one chunk: the run hung once (the second reached
    # the engine's admission, which refused it, and the chunk never finished). Now the
    # coordinator refuses the second while it enqueues, as one process would.
    items: list[dict[str, Any]] = [{"id": f"k{i}", "n": i} for i in range(1000)]
    items[7] = {"id": "k3", "n": -1}
    with anyio.fail_after(30), pytest.raises(ab.DuplicateKey, match=r"'k3'.*position 3"):
        await ab.run_batch(
            _n, items, key=_id, concurrency=4, store=pg_url, run_id="twice-here", shared=True
        )
    async with ab.open_store(pg_url) as store:
        assert (await store.get_run("twice-here")).status == "interrupted"
        assert [j for j in await store.jobs("twice-here") if j.result == -1] == []


async def _n(item: dict[str, Any]) -> int:
    return int(item["n"])


class _Here:
    """A class of a test's own: pickle cannot name it, so it cannot travel."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self) -> Any:
        raise TypeError("only here")


async def test_a_chunk_with_an_item_that_cannot_travel_is_claimed_by_its_coordinator_only(
    pg_url: str,
) -> None:
    from asyncbatch._store import RunInfo
    from asyncbatch._store._chunk_items import Unsendable
    from asyncbatch._store._postgres import PostgresStore
    from asyncbatch._store._postgres_shared import SharedBoard

    odd = [0, _Here(1), 2]
    async with await PostgresStore.open(pg_url) as store:
        await store.begin_run(RunInfo(run_id="r"))
        coordinator = SharedBoard(store, lease=30)
        chunk = (0, ["0", "1", "2"], [0, 1, 2], odd)
        with pytest.raises(Unsendable, match="neither JSON nor pickled"):
            await coordinator.enqueue("r", [chunk], lookup=False)
        await coordinator.enqueue("r", [chunk], lookup=False, pin=True)
        await coordinator.enqueue("r", [(3, ["3"], [3], [3])], lookup=False, pin=True)
        elsewhere = SharedBoard(store, lease=30)  # a worker: it never holds those items
        assert [c.no for c in await elsewhere.claim("r", "w", 10, ["succeeded"])] == [3]
        (mine,) = await coordinator.claim("r", "c", 10, ["succeeded"])
        assert mine.no == 0
        assert mine.items is odd  # the very objects, from memory


async def _n_of(item: Any) -> int:
    return item.n if isinstance(item, _Here) else int(item)


async def test_a_default_run_with_items_that_cannot_travel_completes_and_resumes(
    pg_url: str,
) -> None:
    items: list[Any] = [*range(5), _Here(5), *range(6, 12)]
    first = await ab.run_batch(_n_of, items, store=pg_url, run_id="odd", concurrency=3)
    assert [o.result for o in first.outcomes] == list(range(12))
    again = await ab.run_batch(_n_of, items, store=pg_url, run_id="odd")
    assert again.counts[ab.JobStatus.SKIPPED] == 12
    assert [o.result for o in again.outcomes] == list(range(12))


async def test_a_resume_reports_skipped_only_the_items_of_its_own_input(pg_url: str) -> None:
    # The run finished 0..99; this invocation's input is 0..9 and 200..204: ten
    # SKIPPED (with their results and positions here), five new, nothing else.
    await ab.run_batch(_n, [{"n": i} for i in range(100)], key=_by_n, store=pg_url, run_id="sub")
    items = [{"n": i} for i in [*range(10), *range(200, 205)]]
    result = await ab.run_batch(_n, items, key=_by_n, store=pg_url, run_id="sub")
    assert result.counts[ab.JobStatus.SKIPPED] == 10
    assert result.counts[ab.JobStatus.SUCCEEDED] == 5
    assert [(o.key, o.index, o.result) for o in result.outcomes[:10]] == [
        (str(i), i, i) for i in range(10)
    ]
    assert [o.index for o in result.outcomes] == list(range(15))
    batch = ab.Batch(_n, key=_by_n, store=pg_url, run_id="sub")
    async with batch.stream(items) as outcomes:
        seen = [o async for o in outcomes]
    assert sorted(o.key for o in seen) == sorted(str(i["n"]) for i in items)
    assert {o.status for o in seen} == {ab.JobStatus.SKIPPED}
    assert outcomes.result is not None
    assert outcomes.result.counts[ab.JobStatus.SKIPPED] == 15


def _by_n(item: dict[str, Any]) -> str:
    return str(item["n"])


class _Meter:
    def __init__(self) -> None:
        self.in_flight = 0
        self.started = 0
        self.peak_after_resize = 0
        self.resized = False

    async def job(self, item: int) -> int:
        self.in_flight += 1
        self.started += 1
        if self.resized:
            self.peak_after_resize = max(self.peak_after_resize, self.in_flight)
        try:
            await anyio.sleep(0.02)
        finally:
            self.in_flight -= 1
        return item


async def _until(check: Any) -> None:
    with anyio.fail_after(20):
        while not check():  # noqa: ASYNC110  (a state of the job meter: polled is plainer)
            await anyio.sleep(0.005)


async def test_a_shared_run_is_paused_resumed_resized_and_tells_its_progress(
    pg_url: str,
) -> None:
    meter = _Meter()
    batch = ab.Batch(meter.job, concurrency=6, store=pg_url, run_id="steer")
    assert batch.options.shared is not None  # the default: shared

    async def steer() -> None:
        await _until(lambda: meter.started >= 20)
        batch.pause()
        await _until(lambda: meter.in_flight == 0)
        held = meter.started
        await anyio.sleep(0.2)
        assert meter.started == held, "nothing starts while paused"
        now = batch.progress()
        assert (now.paused, now.total, now.run_id) == (True, 120, "steer")
        assert now.done >= 20
        batch.resize(2)
        meter.resized = True
        batch.resume()
        await _until(lambda: meter.started >= held + 20)
        assert batch.progress().concurrency == 2

    async with anyio.create_task_group() as tg:
        tg.start_soon(steer)
        result = await batch.run(range(120))
    assert result.counts[ab.JobStatus.SUCCEEDED] == 120
    assert meter.peak_after_resize <= 2
    with pytest.raises(ab.AsyncBatchError, match="needs a running batch"):
        batch.progress()
