"""Chunked calls (``batch_size=``): one call for many items, one outcome per item.

Per-item outcomes, checkpoints and DLQ entries on every store; whole-chunk
failures (retried as a chunk, or bisected when PERMANENT); ``ab.ItemError``;
results as a mapping; bad result shapes; the stream API, budgets, timeouts,
spans; redrive and resume (a real process killed with SIGKILL).
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from stores import STORES, store_url

import asyncbatch as ab

S = ab.JobStatus
NO_WAIT = ab.Retry(attempts=4, backoff=ab.Backoff.constant(0.0))


class Calls:
    """A chunked job that records the chunks it was called with."""

    def __init__(self) -> None:
        self.chunks: list[list[Any]] = []

    def __len__(self) -> int:
        return len(self.chunks)

    def sizes(self) -> list[int]:
        return [len(c) for c in self.chunks]


# ------------------------------------------------------------ per-item outcomes


@pytest.mark.parametrize("kind", STORES)
async def test_each_item_keeps_its_own_status_checkpoint_and_dlq_entry(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    url = store_url(request, tmp_path, kind)
    calls = Calls()

    async def job(items: list[int]) -> list[Any]:
        calls.chunks.append(items)
        return [ab.ItemError(ValueError(f"bad {x}")) if x % 10 == 3 else x * 2 for x in items]

    async with ab.open_store(url) as store:
        result = await ab.run_batch(job, range(50), batch_size=20, store=store, run_id="chunks")
        assert calls.sizes() == [20, 20, 10]
        assert result.counts[S.SUCCEEDED] == 45
        assert result.counts[S.DEAD_LETTERED] == 5
        by_key = {o.key: o for o in result.outcomes}
        assert by_key["4"].result == 8
        assert by_key["4"].attempts == 1
        assert by_key["13"].status is S.DEAD_LETTERED
        assert isinstance(by_key["13"].error, ValueError)
        dead = await store.dlq.list(run_id="chunks")
        assert sorted(d.key for d in dead) == ["13", "23", "3", "33", "43"]
        (entry,) = [d for d in dead if d.key == "23"]
        assert entry.payload == 23
        assert entry.message == "bad 23"
        assert entry.kind == "permanent"
        assert len(entry.attempts) == 1
        report = result.report.to_dict()
        assert report["dead_lettered"] == 5

        # The same run again: every item is finished, nothing is called, results come back.
        calls.chunks.clear()
        again = await ab.run_batch(job, range(50), batch_size=20, store=store, run_id="chunks")
        assert len(calls) == 0
        assert again.counts[S.SKIPPED] == 50
        assert [o.result for o in again.outcomes][:5] == [0, 2, 4, None, 8]


async def test_results_may_be_a_mapping_by_job_key() -> None:
    async def job(items: list[dict[str, Any]]) -> dict[str, Any]:
        # A bulk API answering by id, in its own order.
        return {str(it["id"]): it["id"] + 1000 for it in reversed(items)}

    items = [{"id": i} for i in range(30)]
    result = await ab.run_batch(job, items, key=lambda it: str(it["id"]), batch_size=7)
    assert [o.result for o in result.outcomes] == [i + 1000 for i in range(30)]
    assert result.ok


async def test_batch_size_1_calls_the_job_with_a_list_of_one() -> None:
    calls = Calls()

    async def job(items: list[int]) -> list[int]:
        calls.chunks.append(items)
        return items

    result = await ab.run_batch(job, range(5), batch_size=1)
    assert calls.chunks == [[0], [1], [2], [3], [4]]
    assert [o.result for o in result.outcomes] == [0, 1, 2, 3, 4]


async def test_concurrency_counts_calls_not_items() -> None:
    in_flight = most = 0
    sizes: list[int] = []

    async def job(items: list[int]) -> list[int]:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        sizes.append(len(items))
        await asyncio.sleep(0.001)
        in_flight -= 1
        return items

    result = await ab.run_batch(job, range(200), batch_size=10, concurrency=3)
    assert result.ok
    assert most == 3
    assert sizes == [10] * 20


@pytest.mark.looptime
async def test_rates_count_calls_not_items() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def job(items: list[int]) -> list[int]:
        starts.append(loop.time())
        return items

    t0 = loop.time()
    result = await ab.run_batch(
        job,
        range(100),
        batch_size=10,
        rates={"api": ab.Rate(2, per=1.0)},
        uses=["api"],
    )
    assert result.ok
    assert len(starts) == 10
    # 10 calls at 2 per second: about 4-5 s of virtual time (100 items would take ~50 s).
    assert 3.0 <= loop.time() - t0 <= 6.0


# ------------------------------------------------------------ whole-chunk failures


@pytest.mark.looptime
async def test_a_whole_chunk_transient_failure_is_retried_as_one_chunk() -> None:
    calls = Calls()

    async def job(items: list[int]) -> list[int]:
        calls.chunks.append(items)
        if len(calls) == 1:
            raise ConnectionError("bulk endpoint reset the connection")
        return items

    # Full jitter: each item draws its own delay, yet the chunk comes back together.
    retry = ab.Retry(attempts=3, backoff=ab.Backoff.exponential(initial=1.0, jitter="full"))
    result = await ab.run_batch(job, range(100), batch_size=100, retry=retry)
    assert result.ok
    assert calls.sizes() == [100, 100]  # two calls, not 1 + 100
    assert all(o.attempts == 2 for o in result.outcomes)
    assert result.report.to_dict()["retries"] == 100  # one failed attempt per item


@pytest.mark.looptime
async def test_an_item_error_retries_that_item_alone() -> None:
    calls = Calls()
    failed_once: set[int] = set()

    async def job(items: list[int]) -> list[Any]:
        calls.chunks.append(items)
        out: list[Any] = []
        for x in items:
            if x in (5, 6) and x not in failed_once:
                failed_once.add(x)
                out.append(ab.ItemError(TimeoutError(f"item {x} timed out upstream")))
            else:
                out.append(x)
        return out

    result = await ab.run_batch(job, range(10), batch_size=10, retry=NO_WAIT)
    assert result.ok
    assert calls.sizes() == [10, 2]  # the two failed items came back as one later chunk
    assert sorted(calls.chunks[1]) == [5, 6]
    attempts = {o.key: o.attempts for o in result.outcomes}
    assert attempts["5"] == attempts["6"] == 2
    assert attempts["0"] == 1


def _poison_calls(poison: int, n: int = 100) -> tuple[int, int, ab.BatchResult[Any]]:
    """(calls until the poison was dead-lettered, calls in all, result) for one poison item."""
    calls = 0
    isolated_at = 0

    async def job(items: list[int]) -> list[int]:
        nonlocal calls, isolated_at
        calls += 1
        if items == [poison]:
            isolated_at = calls  # its own call: it is dead-lettered with this error
        if poison in items:
            raise ab.PermanentError(f"item {poison} breaks the whole request")
        return items

    result = asyncio.run(ab.run_batch(job, range(n), batch_size=n))
    return isolated_at, calls, result


def test_a_poison_item_among_100_is_isolated_in_log2_plus_1_extra_calls() -> None:
    bound = math.ceil(math.log2(100)) + 1
    worst_isolation = worst_total = 0
    for poison in range(100):
        isolated_at, calls, result = _poison_calls(poison)
        assert result.counts[S.DEAD_LETTERED] == 1, poison
        assert result.counts[S.SUCCEEDED] == 99, poison  # its neighbours are not dead-lettered
        dead = result.outcomes[poison]
        assert dead.status is S.DEAD_LETTERED
        assert dead.attempts == 1
        assert str(dead.error) == f"item {poison} breaks the whole request"
        worst_isolation = max(worst_isolation, isolated_at - 1)
        worst_total = max(worst_total, calls - 1)
    assert worst_isolation <= bound
    assert worst_total <= bound + 1  # the neighbours set aside: at most one more call


async def test_two_poison_items_are_both_isolated_and_the_rest_succeed() -> None:
    async def job(items: list[int]) -> list[int]:
        if 10 in items or 77 in items:
            raise ValueError("malformed record")
        return items

    result = await ab.run_batch(job, range(100), batch_size=100)
    dead = [o.key for o in result.outcomes if o.status is S.DEAD_LETTERED]
    assert dead == ["10", "77"]
    assert result.counts[S.SUCCEEDED] == 98


async def test_a_chunk_failing_only_as_a_whole_dead_letters_nothing() -> None:
    # Too large a request: fails for 4+ items whatever they are, never for fewer.
    async def job(items: list[int]) -> list[int]:
        if len(items) > 3:
            raise ab.PermanentError("413 request entity too large")
        return items

    result = await ab.run_batch(job, range(16), batch_size=16)
    assert result.ok
    assert result.counts[S.SUCCEEDED] == 16


async def test_a_fatal_chunk_failure_aborts_the_batch() -> None:
    async def job(items: list[int]) -> list[int]:
        raise ab.FatalError("credentials revoked")

    with pytest.raises(ab.BatchAborted) as caught:
        await ab.run_batch(job, range(10), batch_size=5, concurrency=1)
    assert isinstance(caught.value.cause, ab.FatalError)
    assert caught.value.result.counts[S.FAILED] == 5


@pytest.mark.parametrize(
    ("returned", "says"),
    [
        (lambda items: items[:-1], "returned 3 result(s)"),
        (lambda items: {"0": 1}, "missing key(s)"),
        (lambda items: None, "returned NoneType, not a list"),
        (lambda items: "abcd", "returned str, not a list"),
    ],
)
async def test_results_that_do_not_match_the_items_abort_with_a_clear_error(
    returned: Any, says: str
) -> None:
    async def job(items: list[int]) -> Any:
        return returned(items)

    with pytest.raises(ab.BatchAborted) as caught:
        await ab.run_batch(job, range(4), batch_size=4)
    cause = caught.value.cause
    assert isinstance(cause, ab.ChunkResultError)
    assert isinstance(cause, TypeError)
    assert says in str(cause)
    assert "got 4 item(s)" in str(cause)
    assert "\n" not in str(cause)


@pytest.mark.looptime
async def test_timeout_is_per_call_and_a_timed_out_chunk_retries_together() -> None:
    calls = Calls()

    async def job(items: list[int]) -> list[int]:
        calls.chunks.append(items)
        if len(calls) == 1:
            await asyncio.sleep(10)
        await asyncio.sleep(0.5)  # 50 items: 0.5 s for the call, well within 1 s
        return items

    result = await ab.run_batch(job, range(50), batch_size=50, timeout=1.0, retry=NO_WAIT)
    assert result.ok
    assert calls.sizes() == [50, 50]


# ------------------------------------------------------------ forming chunks


@pytest.mark.looptime
async def test_batch_wait_fills_a_chunk_from_a_slow_input() -> None:
    calls = Calls()

    async def trickle() -> AsyncIterator[int]:
        for i in range(20):
            await asyncio.sleep(0.01)
            yield i

    async def job(items: list[int]) -> list[int]:
        calls.chunks.append(items)
        return items

    result = await ab.run_batch(job, trickle(), batch_size=10, batch_wait=1.0, concurrency=1)
    assert result.ok
    assert calls.sizes() == [10, 10]

    calls.chunks.clear()
    await ab.run_batch(job, trickle(), batch_size=10, concurrency=1)  # batch_wait=0: no waiting
    assert len(calls) > 2


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"batch_size": True}, "batch_size must be a positive int, got True"),
        ({"batch_size": "100"}, "batch_size must be a positive int"),
        ({"batch_size": 10, "batch_wait": -1}, "batch_wait must not be negative"),
        ({"batch_size": 10, "batch_wait": "1s"}, "batch_wait must be seconds"),
        ({"batch_wait": 0.5}, "batch_wait= needs batch_size="),
        ({"batch_size": 10, "shared": True}, "batch_size= cannot be combined with shared="),
    ],
)
def test_bad_chunk_options_are_one_line_config_errors(options: dict[str, Any], says: str) -> None:
    async def job(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ab.ConfigError, match=says) as caught:
        ab.Batch(job, **options)
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------ with the rest of the run


async def test_stream_yields_one_outcome_per_item() -> None:
    async def job(items: list[int]) -> list[Any]:
        return [ab.ItemError(KeyError(x)) if x == 42 else -x for x in items]

    batch = ab.Batch(job, batch_size=25, concurrency=2)
    seen: dict[str, ab.JobOutcome[Any]] = {}
    async with batch.stream(range(100)) as outcomes:
        async for outcome in outcomes:
            seen[outcome.key] = outcome
    assert len(seen) == 100
    assert seen["42"].status is S.DEAD_LETTERED
    assert seen["41"].result == -41


async def test_an_error_budget_counts_items_and_aborts() -> None:
    calls = Calls()

    async def job(items: list[int]) -> list[Any]:
        calls.chunks.append(items)
        return [ab.ItemError(ValueError("bad")) if x % 2 else x for x in items]

    budget = ab.ErrorBudget(max_failure_rate=0.2, min_jobs=20)
    with pytest.raises(ab.BatchAborted) as caught:
        await ab.run_batch(job, range(1000), batch_size=10, concurrency=1, budget=budget)
    assert isinstance(caught.value.cause, ab.BudgetExceeded)
    assert len(calls) < 10  # stopped after a few chunks, not 100


async def test_one_attempt_span_per_call_with_the_chunk_size_and_item_events() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def job(items: list[int]) -> list[Any]:
        return [ab.ItemError(ValueError("bad")) if x == 3 else x for x in items]

    await ab.run_batch(job, range(10), batch_size=5, concurrency=1, tracer_provider=provider)
    spans = [s for s in exporter.get_finished_spans() if s.name == "asyncbatch.attempt"]
    assert len(spans) == 2
    assert [s.attributes["asyncbatch.chunk.size"] for s in spans] == [5, 5]  # type: ignore[index]
    first = spans[0]
    items = [e for e in first.events if e.name == "asyncbatch.item"]
    assert [e.attributes["asyncbatch.job.key"] for e in items] == ["0", "1", "2", "3", "4"]  # type: ignore[index]
    bad = items[3].attributes
    assert bad is not None
    assert bad["asyncbatch.attempt.outcome"] == "failure"
    assert bad["asyncbatch.error.kind"] == "permanent"
    assert first.attributes["asyncbatch.chunk.failed"] == 1  # type: ignore[index]


@pytest.mark.parametrize("kind", STORES)
async def test_redrive_sends_dead_items_back_as_chunks(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    url = store_url(request, tmp_path, kind)

    async def flaky(items: list[int]) -> list[Any]:
        return [ab.ItemError(ab.PermanentError("down")) if x % 3 == 0 else x for x in items]

    calls = Calls()

    async def fixed(items: list[int]) -> list[int]:
        calls.chunks.append(items)
        return items

    async with ab.open_store(url) as store:
        first = await ab.run_batch(flaky, range(30), batch_size=10, store=store, run_id="rd")
        assert first.counts[S.DEAD_LETTERED] == 10
        dead = (await store.dlq.list(run_id="rd"))[0]
        one = await ab.redrive(fixed, store=store, run_id="rd", ids=[dead.id], batch_size=4)
        assert one.counts[S.SUCCEEDED] == 1
        assert calls.chunks == [[dead.payload]]
        # Without batch_size=: the run's own (10), since its job takes lists.
        rest = await ab.redrive(fixed, store=store, run_id="rd")
        assert rest.counts[S.SUCCEEDED] == 9
        assert calls.sizes() == [1, 9]
        assert await store.dlq.list(run_id="rd") == []


# ------------------------------------------------------------ resume after SIGKILL

SCRIPT = Path(__file__).with_name("chunk_crash_job.py")
N, BATCH = 3000, 50


def _committed(db: Path) -> set[str]:
    if not db.exists():
        return set()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    try:
        rows = con.execute("SELECT key FROM jobs WHERE run_id = 'chunked'").fetchall()
    except sqlite3.OperationalError:
        return set()
    finally:
        con.close()
    return {k for (k,) in rows}


def _ledger(log: Path) -> list[list[str]]:
    """The calls the job made (one line per call: its items' keys)."""
    if not log.exists():
        return []
    return [line.split(",") for line in log.read_text().splitlines() if line]


@pytest.mark.slow
def test_resume_after_sigkill_reforms_chunks_from_unfinished_items_only(tmp_path: Path) -> None:
    db, log = tmp_path / "chunks.db", tmp_path / "calls.log"
    argv = [sys.executable, str(SCRIPT), str(db), str(log), str(N), str(BATCH)]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    try:
        while len(_committed(db)) < 800:
            if proc.poll() is not None:
                pytest.fail(f"the run ended before the kill: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    acked = _committed(db)
    calls_before = len(_ledger(log))
    assert 800 <= len(acked) < N

    resumed = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    counts = json.loads(resumed.stdout.splitlines()[-1])
    assert counts["skipped"] == len(acked)
    assert counts["succeeded"] + counts["dead_lettered"] == N - len(acked)

    after = _ledger(log)[calls_before:]
    ran_after = Counter(k for call in after for k in call)
    assert not acked & set(ran_after), "a committed item ran again"
    # Every unfinished item ran on resume; chunks were re-formed from them (full ones).
    assert set(ran_after) == {str(i) for i in range(N)} - acked
    sizes = [len(call) for call in after]
    assert max(sizes) == BATCH
    unfinished = N - len(acked)
    poisons = sum(1 for i in range(0, N, 97) if i % 2 == 0 and str(i) not in acked)
    # One call per chunk of unfinished items, plus the bisection of each poisoned chunk.
    assert len(after) <= math.ceil(unfinished / BATCH) + poisons * (math.ceil(math.log2(BATCH)) + 2)
    assert sizes.count(BATCH) >= unfinished // BATCH - poisons

    # Every item ends as a clean run would leave it.
    con = sqlite3.connect(db)
    try:
        final = dict(con.execute("SELECT key, status FROM jobs WHERE run_id = 'chunked'"))
    finally:
        con.close()
    assert set(final) == {str(i) for i in range(N)}
    dead = {k for k, s in final.items() if s == "dead_lettered"}
    assert dead == {str(i) for i in range(N) if i % 97 == 0}


# ------------------------------------------------------------ CLI

CLI_JOBS = """
import asyncbatch as ab

CHUNKS = []


async def double(items):
    CHUNKS.append(len(items))
    return [ab.ItemError(ValueError("odd one")) if it["n"] == 7 else 2 * it["n"] for it in items]


async def fixed(items):
    CHUNKS.append(len(items))
    return [2 * it["n"] for it in items]
"""


def test_cli_run_batch_size_calls_the_job_with_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from asyncbatch._cli._main import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    (tmp_path / "chunk_cli_jobs.py").write_text(CLI_JOBS)
    items = "".join(json.dumps({"id": f"k{i}", "n": i}) + "\n" for i in range(25))
    (tmp_path / "items.jsonl").write_text(items)
    args = ["run", "chunk_cli_jobs:double", "--input", "items.jsonl", "--key", "id"]
    try:
        result = CliRunner().invoke(
            cli,
            [*args, "--db", "t.db", "--batch-size", "10", "--run-id", "r", "--output", "out.jsonl"],
        )
        assert result.exit_code == 3, result.output  # one item dead-lettered
        assert sys.modules["chunk_cli_jobs"].CHUNKS == [10, 10, 5]
        lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        by_key = {line["key"]: line for line in lines}
        assert by_key["k3"]["result"] == 6
        assert by_key["k7"]["status"] == "dead_lettered"

        # The run's dead letters go back as chunks (the run's own batch size).
        redriven = CliRunner().invoke(
            cli, ["dlq", "redrive", "--run-id", "r", "chunk_cli_jobs:fixed", "--db", "t.db"]
        )
        assert redriven.exit_code == 0, redriven.output
        assert "1 resolved, 0 dead again" in redriven.output
        assert sys.modules["chunk_cli_jobs"].CHUNKS == [10, 10, 5, 1]

        bad = CliRunner().invoke(cli, [*args, "--db", "u.db", "--batch-wait", "1"])
        assert bad.exit_code not in (0, None)
        assert bad.stderr.strip().splitlines() == [
            "error: batch_wait= needs batch_size=; HINT: batch_size=100, batch_wait=0.05"
        ]
    finally:
        sys.modules.pop("chunk_cli_jobs", None)


def test_the_readme_chunked_calls_example_runs_and_resumes(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("## Chunked calls")
    block = readme[start:].split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "chunks_example.py"
    script.write_text(block)
    run = [sys.executable, str(script)]
    first = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "1000 embedded\n1 dead-lettered\n"
    again = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "0 embedded\n0 dead-lettered\n"  # resumed: all finished, skipped


@pytest.mark.looptime
async def test_an_open_breaker_parks_whole_chunks_without_spending_attempts() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    calls = Calls()

    async def job(items: list[int]) -> list[int]:
        calls.chunks.append(items)
        if loop.time() - t0 < 5:
            raise ConnectionError("bulk endpoint down")
        return items

    result = await ab.run_batch(
        job,
        range(40),
        batch_size=10,
        concurrency=2,
        uses=["bulk"],
        breakers={"bulk": ab.Breaker(fail_max=2, reset_timeout=2)},
        retry=ab.Retry(attempts=10, backoff=ab.Backoff.constant(0.5)),
    )
    assert result.ok
    # Only the calls made before the circuit opened (and its probes) failed: far fewer
    # than the 40 items' worth, and every item kept attempts in hand.
    assert len(calls) < 20
    assert max(o.attempts for o in result.outcomes) <= 4
    assert result.report.to_dict()["breakers"]["bulk"]["trips"] >= 1


async def test_adaptive_concurrency_works_with_chunks() -> None:
    async def job(items: list[int]) -> list[int]:
        await asyncio.sleep(0.001)
        return items

    result = await ab.run_batch(
        job, range(300), batch_size=10, concurrency=ab.Adaptive(min=1, max=8, initial=2)
    )
    assert result.ok
    assert [o.result for o in result.outcomes] == list(range(300))


@pytest.mark.looptime
async def test_deadline_ends_only_the_items_that_run_out_of_time() -> None:
    calls = Calls()

    async def job(items: list[int]) -> list[Any]:
        calls.chunks.append(items)
        # Items 0-4 keep failing; the others succeed.
        return [ab.ItemError(ConnectionError("flaky")) if x < 5 else x for x in items]

    result = await ab.run_batch(
        job,
        range(10),
        batch_size=10,
        deadline=3.0,
        retry=ab.Retry(attempts=100, backoff=ab.Backoff.constant(1.0)),
    )
    statuses = Counter(o.status for o in result.outcomes)
    assert statuses == {S.SUCCEEDED: 5, S.DEAD_LETTERED: 5}
    # Attempts at 0, 1 and 2 s; a retry at 3 s would be past the deadline: dead-lettered.
    assert [o.attempts for o in result.outcomes[:5]] == [3] * 5
    assert calls.sizes() == [10, 5, 5]  # the failing five came back together each time


@pytest.mark.parametrize("kind", STORES)
async def test_a_resume_may_not_switch_between_chunks_and_single_items(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    url = store_url(request, tmp_path, kind)

    async def job(items: list[int]) -> list[Any]:
        return [ab.ItemError(ConnectionError("later")) if x == 3 else x for x in items]

    retry = ab.Retry(attempts=1)
    async with ab.open_store(url) as store:
        await ab.run_batch(job, range(5), batch_size=5, store=store, run_id="sw", retry=retry)
        with pytest.raises(ab.ConfigError, match=r"batch_size=5 \(a job taking lists\)"):
            await ab.run_batch(job, range(5), store=store, run_id="sw")  # batch_size forgotten
        # Another size is fine: the dead item runs again in a chunk of its own.
        again = await ab.run_batch(
            job, range(5), batch_size=2, store=store, run_id="sw", retry_dead=True
        )
        assert again.counts[S.SKIPPED] == 4
        await ab.run_batch(job, [], store=store, run_id="plain")
        with pytest.raises(ab.ConfigError, match="one item per call"):
            await ab.run_batch(job, range(2), batch_size=2, store=store, run_id="plain")


# ------------------------------------------------ property: nothing lost, nothing repeated

# Per item: "ok", "bad" (an ItemError, PERMANENT), "flaky" (an ItemError, TRANSIENT once),
# "poison" (the whole call raises PERMANENT while it is in it), "reset" (the whole call
# raises TRANSIENT the first time it is in one).
behaviours = st.lists(st.sampled_from(["ok", "ok", "ok", "bad", "flaky", "poison", "reset"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=behaviours.filter(lambda p: len(p) > 0),
    batch_size=st.integers(1, 12),
    concurrency=st.integers(1, 4),
)
def test_every_item_ends_as_its_own_behaviour_says_and_no_success_runs_twice(
    plan: list[str], batch_size: int, concurrency: int
) -> None:
    succeeded_calls: Counter[int] = Counter()
    tripped: set[int] = set()

    async def job(items: list[int]) -> list[Any]:
        await asyncio.sleep(0)
        if any(plan[i] == "poison" for i in items):
            raise ab.PermanentError("poison in the request")
        fresh = [i for i in items if plan[i] == "reset" and i not in tripped]
        if fresh:
            tripped.update(fresh)
            raise ConnectionError("connection reset")
        out: list[Any] = []
        for i in items:
            if plan[i] == "bad":
                out.append(ab.ItemError(ValueError(f"bad {i}")))
            elif plan[i] == "flaky" and i not in tripped:
                tripped.add(i)
                out.append(ab.ItemError(TimeoutError(f"flaky {i}")))
            else:
                succeeded_calls[i] += 1
                out.append(i)
        return out

    result = asyncio.run(
        ab.run_batch(job, range(len(plan)), batch_size=batch_size, concurrency=concurrency,
                     retry=NO_WAIT)
    )  # fmt: skip
    expected = [S.DEAD_LETTERED if b in ("bad", "poison") else S.SUCCEEDED for b in plan]
    assert [o.status for o in result.outcomes] == expected
    assert [o.result for o in result.outcomes if o.status is S.SUCCEEDED] == [
        i for i, b in enumerate(plan) if b not in ("bad", "poison")
    ]
    assert all(n == 1 for n in succeeded_calls.values())  # a success is never run again
