"""Shared runs: many worker processes, one run, on the real PostgreSQL server.

Every scenario uses real processes (the coordinator, ``asyncbatch worker``s)
and real signals, and ends with the invariant check: every key has exactly
one finished row, the DLQ is exactly the dead-lettered jobs, what the
coordinator acknowledged is what the database holds, and re-executions
(counted from the side-effect ledger tests/shared_job.py writes outside the
database) stay within what the faults could cause. Leases are short (1.5 s)
so takeovers are quick; no test sleeps past what its fault needs.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import asyncbatch as ab
from asyncbatch._store._postgres import GROUP_SIZE as GROUP  # a commit group's most records

HERE = Path(__file__).parent
LEASE = 1.5
pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------ processes


def _env(ledger: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(HERE), "SHARED_LEDGER": str(ledger)}
    env.update(extra)
    return env


def coordinator(
    url: str, run_id: str, n: int, chunk: int, ledger: Path, *flags: str, **env: str
) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(HERE / "shared_job.py"), url, run_id, str(n), str(chunk), str(LEASE)]
    return subprocess.Popen(
        [*cmd, *flags], env=_env(ledger, **env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def worker(url: str, run_id: str, ledger: Path, **env: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "asyncbatch", "worker", "shared_job:job", "--db", url]
    return subprocess.Popen(
        [*cmd, "--run-id", run_id, "--concurrency", "20"], env=_env(ledger, **env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Reaped here, with what it said: a hung process must neither leak into
        # the next test nor fail without a word.
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{proc.args[1:3]} still ran after {timeout:g} s; its stderr: {err[-3000:]}")
    assert proc.returncode == 0, err[-2000:]
    return out


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL, then reap it (and close its pipes)."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def ledger_lines(ledger: Path) -> list[tuple[str, int, int, float]]:
    """``(kind, key, pid, time)`` per line: kind is start, done, undo or held."""
    if not ledger.exists():
        return []
    rows = []
    for line in ledger.read_text().splitlines():
        kind, key, pid, t = line.split()
        rows.append((kind, int(key), int(pid), float(t)))
    return rows


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def ledger_count(ledger: Path) -> int:
    return ledger.read_bytes().count(b"\n") if ledger.exists() else 0


def started_by(ledger: Path, pid: int) -> int:
    return sum(1 for kind, _, p, _ in ledger_lines(ledger) if kind == "start" and p == pid)


# ------------------------------------------------------------------ the database


def _server_and_schema(url: str) -> tuple[str, str]:
    base, _, query = url.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if p)
    return base, params.get("schema", "asyncbatch")


async def db_rows(url: str, sql: str, *args: Any) -> list[Any]:
    import asyncpg

    base, schema = _server_and_schema(url)
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def check_invariants(
    url: str, run_id: str, n: int, ledger: Path, *, max_reexecuted: int, acked: dict[str, int]
) -> dict[str, Any]:
    """The invariant check every scenario ends with; returns what it measured."""
    rows = await db_rows(url, "SELECT key, status FROM jobs WHERE run_id = $1", run_id)
    by_key = collections.Counter(r["key"] for r in rows)
    assert set(by_key) == {str(i) for i in range(n)}, "every key has a finished row"
    assert max(by_key.values()) == 1, "exactly one row per key"
    statuses = {r["key"]: r["status"] for r in rows}
    assert set(statuses.values()) <= {"succeeded", "dead_lettered"}
    dead = {k for k, s in statuses.items() if s == "dead_lettered"}
    entries = await db_rows(
        url, "SELECT key FROM dlq WHERE run_id = $1 AND status = 'dead'", run_id
    )
    assert sorted(e["key"] for e in entries) == sorted(dead), "the DLQ is the dead letters"
    counts = collections.Counter(statuses.values())
    assert {k: v for k, v in acked.items() if v} == dict(counts), "acknowledged = stored"
    starts = collections.Counter(k for kind, k, _, _ in ledger_lines(ledger) if kind == "start")
    assert set(starts) == set(range(n)), "every job ran"
    reexecuted = sum(c - 1 for c in starts.values())
    assert reexecuted <= max_reexecuted, f"{reexecuted} re-executions"
    chunks = await db_rows(url, "SELECT count(*) AS n FROM chunks WHERE run_id = $1", run_id)
    assert chunks[0]["n"] == 0, "a finished run's chunks are deleted"
    runs = await db_rows(url, "SELECT status FROM runs WHERE id = $1", run_id)
    assert runs[0]["status"] == "finished"
    return {"reexecuted": reexecuted, "dead": len(dead)}


def coordinator_counts(out: str) -> dict[str, int]:
    line = out.strip().splitlines()[-1]
    return dict(json.loads(line))


def resumed_counts(out: str) -> dict[str, int]:
    """A resumed coordinator's counts of a run without failures, as stored.

    The resume reports the jobs an earlier invocation finished SKIPPED (as a
    single-process resume does); every one of them is stored as succeeded.
    """
    counts = coordinator_counts(out)
    counts["succeeded"] = counts.get("succeeded", 0) + counts.pop("skipped", 0)
    return counts


# ------------------------------------------------------------------ in-process coordinator


async def test_coordinator_with_two_workers_returns_the_whole_run(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "ledger"
    monkeypatch.setenv("SHARED_LEDGER", str(ledger))
    monkeypatch.setenv("SHARED_FAIL_EVERY", "97")
    monkeypatch.setenv("SHARED_SLEEP", "0.02")  # long enough for the workers to start up
    monkeypatch.syspath_prepend(str(HERE))
    import shared_job

    env = {"SHARED_FAIL_EVERY": "97", "SHARED_SLEEP": "0.02"}
    workers = [worker(pg_url, "w2", ledger, **env) for _ in range(2)]
    n = 3000
    result = await ab.run_batch(
        shared_job.job, range(n), store=pg_url, run_id="w2", concurrency=20,
        shared=ab.SharedRun(chunk_size=50, lease=LEASE),
    )  # fmt: skip
    outs = [finish(w) for w in workers]
    assert [o.index for o in result.outcomes] == list(range(n))
    dead = len(range(0, n, 97))
    assert result.counts[ab.JobStatus.SUCCEEDED] == n - dead
    assert result.counts[ab.JobStatus.DEAD_LETTERED] == dead
    assert result.outcomes[1].result == {"v": 2, "pid": result.outcomes[1].result["pid"]}
    pids = {o.result["pid"] for o in result.outcomes if o.status is ab.JobStatus.SUCCEEDED}
    assert len(pids) == 3, "the coordinator and both workers worked"
    assert all("this worker finished" in o for o in outs)
    assert result.report.dead_lettered == dead
    # Every worker's report is merged into the run's: each dead letter's failed attempt.
    assert sum(g.count for g in result.report.groups) == dead
    async with ab.open_store(pg_url) as store:
        run = await store.get_run("w2")
    assert run.status == "finished"
    assert run.counts["succeeded"] == n - dead
    await check_invariants(
        pg_url, "w2", n, ledger, max_reexecuted=0,
        acked={s.value: c for s, c in result.counts.items()},
    )  # fmt: skip


async def test_shared_options_that_cannot_work_fail_in_one_line(pg_url: str) -> None:
    async def local(x: int) -> int:
        return x

    with pytest.raises(ab.ConfigError, match="importable"):
        await ab.run_batch(local, [1], store=pg_url, shared=True)
    with pytest.raises(ab.ConfigError, match="PostgreSQL"):
        await ab.run_batch(_module_job, [1], store="memory://", shared=True)
    with pytest.raises(ab.ConfigError, match="pickled"):
        await ab.run_batch(
            _module_job, [1], store=pg_url, shared=True,
            classify=ab.Classifier([ab.Rule(ValueError, kind="transient", when=lambda e: True)]),
        )  # fmt: skip
    with pytest.raises(ab.ConfigError, match="chunk_size"):
        ab.SharedRun(chunk_size=0)


async def _module_job(x: int) -> int:
    return x


def test_worker_cli_errors_are_one_line(pg_url: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "asyncbatch", "worker", *args], capture_output=True,
            text=True, env=_env(Path("/dev/null")), timeout=60,
        )  # fmt: skip

    done = run("shared_job:job", "--db", pg_url)
    assert done.returncode != 0
    assert done.stderr.startswith("error: pass exactly one of")
    done = run("shared_job:job", "--db", "./x.db", "--all")
    assert done.stderr.startswith("error: a worker needs a PostgreSQL store URL")
    done = run("nope_module:job", "--db", pg_url, "--all")
    assert done.stderr.startswith("error: cannot import 'nope_module'")
    done = run("shared_job:job", "--db", pg_url, "--all")
    assert done.returncode == 0
    assert "no running shared run" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_worker_with_all_joins_open_runs_and_the_cli_shows_the_whole_run(
    pg_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    slow = {"SHARED_SLEEP": "0.01", "SHARED_FAIL_EVERY": "50"}
    coord = coordinator(pg_url, "every", 1000, 50, ledger, **slow, SHARED_CONCURRENCY="10")
    wait_for(lambda: ledger_count(ledger) >= 50)
    cmd = [sys.executable, "-m", "asyncbatch", "worker", "shared_job:job", "--db", pg_url]
    joined = subprocess.run(
        [*cmd, "--all"], env=_env(ledger, **slow), capture_output=True, text=True, timeout=60
    )
    assert joined.returncode == 0, joined.stderr
    assert joined.stdout.startswith("run every: done; this worker finished ")
    counts = coordinator_counts(finish(coord, 60))
    assert counts == {"succeeded": 980, "dead_lettered": 20}
    pids = {p for kind, _, p, _ in ledger_lines(ledger) if kind == "done"}
    assert len(pids) == 2, "both processes worked"

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "asyncbatch", *args, "--db", pg_url],
            capture_output=True, text=True, timeout=60, env=_env(ledger),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    report = json.loads(cli("report", "every", "--json"))
    assert report["counts"]["succeeded"] == 980
    assert report["counts"]["dead_lettered"] == 20
    assert "every" in cli("runs")


# ------------------------------------------------------------------ crashes


def test_kill_9_of_a_worker_repeated_loses_nothing(pg_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    n = 6000
    # At most 3,000 jobs/s (3 processes x 20 x 20 ms): the kills land mid-run.
    slow = {"SHARED_SLEEP": "0.02", "SHARED_FAIL_EVERY": "89"}
    coord = coordinator(pg_url, "k9", n, 100, ledger, **slow, SHARED_CONCURRENCY="20")
    workers = [worker(pg_url, "k9", ledger, **slow) for _ in range(2)]
    kills = 0
    for victim_no in (0, 1):
        victim = workers[victim_no]
        wait_for(lambda v=victim, k=kills: started_by(ledger, v.pid) >= 50 + 100 * k)
        kill(victim)
        kills += 1
        workers[victim_no] = worker(pg_url, "k9", ledger, **slow)
    counts = coordinator_counts(finish(coord, 90))
    for w in workers:
        finish(w)
    # What a killed worker can cost: its attempts in flight and its uncommitted jobs.
    measured = asyncio.run(
        check_invariants(
            pg_url, "k9", n, ledger, max_reexecuted=kills * (20 + 2 * GROUP), acked=counts
        )
    )
    assert measured["dead"] == len(range(0, n, 89))
    assert measured["reexecuted"] > 0, "the kills hit jobs in flight (their chunks were taken over)"


def test_kill_9_of_every_process_then_resume_by_run_id(pg_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    n = 4000
    slow = {"SHARED_SLEEP": "0.02"}  # at most 2,000 jobs/s: killed mid-run
    coord = coordinator(pg_url, "all9", n, 100, ledger, **slow, SHARED_CONCURRENCY="20")
    w = worker(pg_url, "all9", ledger, **slow)
    wait_for(lambda: ledger_count(ledger) >= 1500)
    for p in (coord, w):
        kill(p)
    before = len(ledger_lines(ledger))
    assert before < 2 * n, "killed mid-run"
    coord = coordinator(pg_url, "all9", n, 100, ledger, **slow, SHARED_CONCURRENCY="20")
    w = worker(pg_url, "all9", ledger, **slow)
    counts = resumed_counts(finish(coord, 90))
    finish(w)
    asyncio.run(
        check_invariants(
            pg_url, "all9", n, ledger, max_reexecuted=2 * (20 + 2 * GROUP), acked=counts
        )
    )


def test_a_coordinator_killed_while_it_enqueues_resumes_by_run_id(
    pg_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    n = 3000  # read at 2,500 items/s: the input takes over a second to enqueue
    coord = coordinator(pg_url, "enq", n, 100, ledger, "slowinput", SHARED_CONCURRENCY="20")
    w = worker(pg_url, "enq", ledger)
    wait_for(lambda: ledger_count(ledger) >= 400)
    kill(coord)
    state = asyncio.run(db_rows(pg_url, "SELECT input_done FROM runs WHERE id = 'enq'"))
    assert state[0]["input_done"] is False, "killed while it was enqueueing"
    coord = coordinator(pg_url, "enq", n, 100, ledger, SHARED_CONCURRENCY="20")
    counts = resumed_counts(finish(coord, 90))
    finish(w)
    asyncio.run(
        check_invariants(pg_url, "enq", n, ledger, max_reexecuted=20 + 2 * GROUP, acked=counts)
    )


def test_a_sigstopped_worker_writes_nothing_when_it_wakes_past_its_lease(
    pg_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    n = 3000
    slow = {"SHARED_SLEEP": "0.01"}
    coord = coordinator(pg_url, "zombie", n, 50, ledger, **slow, SHARED_CONCURRENCY="20")
    zombie = worker(pg_url, "zombie", ledger, **slow)
    wait_for(lambda: started_by(ledger, zombie.pid) >= 60)
    zombie.send_signal(signal.SIGSTOP)
    t_stop = time.time()
    held = {k for kind, k, p, _ in ledger_lines(ledger) if kind == "start" and p == zombie.pid}
    time.sleep(LEASE + 1.0)  # past its lease: the coordinator takes its chunks over
    t_cont = time.time()
    zombie.send_signal(signal.SIGCONT)
    counts = coordinator_counts(finish(coord, 90))
    finish(zombie)
    again = {
        k for kind, k, p, t in ledger_lines(ledger) if kind == "start" and p == zombie.pid
        and t >= t_cont
    }  # fmt: skip
    rows = asyncio.run(
        db_rows(pg_url, "SELECT key, result, updated_at FROM jobs WHERE run_id = 'zombie'")
    )
    late = [
        r["key"] for r in rows
        if int(r["key"]) in held - again and r["updated_at"] >= t_cont
        and json.loads(r["result"] or "{}").get("pid") == zombie.pid
    ]  # fmt: skip
    assert late == [], "the zombie's writes after its lease ran out were fenced off"
    assert t_cont - t_stop > LEASE
    asyncio.run(
        check_invariants(pg_url, "zombie", n, ledger, max_reexecuted=20 + 2 * GROUP, acked=counts)
    )


def test_a_budget_abort_stops_three_workers_within_a_second_and_compensates_once(
    pg_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    gate = tmp_path / "gate"
    n = 8000
    env = {"SHARED_SLEEP": "0.002", "SHARED_FAIL_FROM": "1000", "SHARED_FAIL_GATE": str(gate)}
    coord = coordinator(
        pg_url, "budget", n, 50, ledger, "budget", "compensate", **env, SHARED_CONCURRENCY="20"
    )
    workers = [worker(pg_url, "budget", ledger, **env) for _ in range(2)]
    # The failures begin once all three processes work on the run (a worker
    # process takes longer to start than the first 1,000 jobs take to run).
    wait_for(lambda: len({p for _, _, p, _ in ledger_lines(ledger)}) == 3)
    gate.touch()
    out = finish(coord, 90)
    for w in workers:
        finish(w)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["aborted"] is True
    lines = ledger_lines(ledger)
    failing = sorted(t for kind, k, _, t in lines if kind == "start" and k >= 1000)
    t_abort = failing[5]  # max_failures=5: the sixth failure exhausts the budget
    late = [(k, p) for kind, k, p, t in lines if kind == "start" and t > t_abort + 1.0]
    assert late == [], f"{len(late)} attempts started more than 1 s after the abort"
    pids = {p for kind, _, p, _ in lines if kind == "start"}
    assert len(pids) == 3
    undone = collections.Counter(k for kind, k, _, _ in lines if kind == "undo")
    assert undone, "succeeded jobs were compensated"
    assert max(undone.values()) == 1, "every undo ran once"
    rows = asyncio.run(db_rows(pg_url, "SELECT key, status FROM jobs WHERE run_id = 'budget'"))
    statuses = collections.Counter(r["status"] for r in rows)
    assert "succeeded" not in statuses, "every succeeded job was compensated"
    assert {int(r["key"]) for r in rows if r["status"] == "compensated"} == set(undone)
    assert summary["counts"]["compensated"] == len(undone)
    run = asyncio.run(db_rows(pg_url, "SELECT status FROM runs WHERE id = 'budget'"))
    assert run[0]["status"] == "aborted"


# ------------------------------------------------------------------ the database goes away


def test_a_database_restart_mid_run_stops_no_worker(pg_temp_server: Any, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    url = pg_temp_server.url + "?schema=restart&retry_timeout=30"
    # At most 3,000 jobs/s (3 processes x 20 x 20 ms): the run lasts 10 s past the restart.
    n = 40000
    slow = {"SHARED_SLEEP": "0.02"}
    coord = coordinator(url, "restart", n, 100, ledger, **slow, SHARED_CONCURRENCY="20")
    workers = [worker(url, "restart", ledger, **slow) for _ in range(2)]
    wait_for(lambda: ledger_count(ledger) >= 8000)
    now = time.time()
    before = _rate(ledger_lines(ledger), now - 1.0, now)
    t_restart = time.time()
    pg_temp_server.restart()
    back = time.time()
    counts = coordinator_counts(finish(coord, 90))
    for w in workers:
        finish(w)  # no worker exited over the restart: each finished its work
    lines = ledger_lines(ledger)
    last = max(t for kind, _, _, t in lines if kind == "done")
    assert last > back + 3, ("the run went on after the restart", t_restart, back, last)
    # >= 90% of the throughput is back within 10 s (a full second's rate, the
    # jobs wait on I/O: the machine's other load hardly moves it).
    starts = [back + i / 2 for i in range(19)]
    after = max(_rate(lines, t, t + 1.0) for t in starts if t + 1.0 <= last)
    histogram = [round(_rate(lines, back + i / 2, back + i / 2 + 0.5)) for i in range(-4, 20)]
    assert after >= 0.9 * before, (before, after, histogram)
    asyncio.run(
        check_invariants(
            url, "restart", n, ledger, max_reexecuted=3 * (20 + 2 * GROUP), acked=counts
        )
    )


def _rate(lines: list[tuple[str, int, int, float]], start: float, end: float) -> float:
    done = sum(1 for kind, _, _, t in lines if kind == "done" and start <= t < end)
    return done / (end - start)


class Blackhole:
    """A TCP proxy on 127.0.0.1 (its own thread and loop) that can stop passing bytes.

    While blackholed it keeps every connection open and silently holds what
    arrives (a partition, not a refused connection); healed, it passes it on.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._stop = asyncio.Event()
        self._open = asyncio.Event()
        self._open.set()
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._open.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._open.wait()
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))

    def cut(self) -> None:
        """Blackhole: hold every byte, refuse nothing."""
        self._loop.call_soon_threadsafe(self._open.clear)

    def heal(self) -> None:
        self._loop.call_soon_threadsafe(self._open.set)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def blackhole(pg_server: str) -> Iterator[Blackhole]:
    port = int(pg_server.rsplit(":", 1)[1].split("/")[0])
    proxy = Blackhole(port)
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_partitioned_worker_fences_itself(
    pg_url: str, tmp_path: Path, blackhole: Blackhole
) -> None:
    ledger = tmp_path / "ledger"
    n = 4000
    # Big chunks of slow jobs: the cut-off worker still has a chunk's worth of
    # work in hand when its lease runs out, so only self-fencing stops it.
    slow = {"SHARED_SLEEP": "0.05"}
    base, schema = _server_and_schema(pg_url)
    host = base.rsplit(":", 1)[0]
    database = base.rsplit("/", 1)[1]
    proxied = f"{host}:{blackhole.port}/{database}?schema={schema}&retry_timeout=3"
    coord = coordinator(pg_url, "part", n, 1000, ledger, **slow, SHARED_CONCURRENCY="50")
    cut_off = worker(proxied, "part", ledger, **slow)
    wait_for(lambda: started_by(ledger, cut_off.pid) >= 60)
    blackhole.cut()
    t_cut = time.time()
    time.sleep(LEASE + 1.5)
    t_heal = time.time()
    blackhole.heal()
    counts = coordinator_counts(finish(coord, 90))
    finish(cut_off, 60)  # it did not exit over the partition: it rejoined, then found the run done
    fenced_window = [
        k for kind, k, p, t in ledger_lines(ledger)
        if kind == "start" and p == cut_off.pid and t_cut + LEASE + 0.5 < t < t_heal
    ]  # fmt: skip
    assert fenced_window == [], "no attempt started once its lease had run out"
    asyncio.run(
        check_invariants(pg_url, "part", n, ledger, max_reexecuted=20 + 2 * GROUP, acked=counts)
    )


async def test_a_resume_with_a_longer_input_runs_the_new_items_too(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHARED_LEDGER", str(tmp_path / "ledger"))
    monkeypatch.syspath_prepend(str(HERE))
    import shared_job

    shared = ab.SharedRun(chunk_size=40, lease=LEASE)
    first = await ab.run_batch(
        shared_job.job, range(50), store=pg_url, run_id="grow", shared=shared
    )
    assert first.counts[ab.JobStatus.SUCCEEDED] == 50
    # The finished run's chunks are gone: the resume enqueues every item again,
    # and claims look the keys up.
    second = await ab.run_batch(
        shared_job.job, range(90), store=pg_url, run_id="grow", shared=shared
    )
    assert second.counts[ab.JobStatus.SKIPPED] == 50  # finished by the first invocation
    assert second.counts[ab.JobStatus.SUCCEEDED] == 40
    starts = collections.Counter(
        k for kind, k, _, _ in ledger_lines(tmp_path / "ledger") if kind == "start"
    )
    assert set(starts) == set(range(90))
    assert max(starts.values()) == 1, "finished keys were skipped, not run again"


async def test_a_chunk_enqueued_again_with_more_keys_fences_its_old_holder(pg_url: str) -> None:
    from asyncbatch._store import JobRecord, RunInfo
    from asyncbatch._store._postgres import PostgresStore
    from asyncbatch._store._postgres_shared import SharedBoard

    async with await PostgresStore.open(pg_url) as store:
        await store.begin_run(RunInfo(run_id="r"))
        board = SharedBoard(store, lease=30)
        five = [str(i) for i in range(5)]
        await board.enqueue("r", [(0, five, list(range(5)), list(range(5)))], lookup=False)
        (old,) = await board.claim("r", "a", 10, ["succeeded"])
        assert (old.epoch, old.keys) == (1, five)
        ten = [str(i) for i in range(10)]
        await board.enqueue("r", [(0, ten, list(range(10)), list(range(10)))], lookup=True)
        await board.enqueue("r", [(0, five, list(range(5)), list(range(5)))], lookup=True)

        rec = JobRecord(run_id="r", key="0", status=ab.JobStatus.SUCCEEDED, index=0, attempts=1)
        kept = await board.commit(
            [rec], run_id="r", owner="a", fence={0: (1, False)}, chunk_of=lambda r: 0
        )
        assert kept == set(), "the old holder's epoch is fenced off"
        assert sum((await store.count_jobs("r")).values()) == 0, "nothing was written"
        (new,) = await board.claim("r", "b", 10, ["succeeded"])
        assert (new.epoch, new.keys) == (3, ten)


async def test_a_long_backoff_is_handed_back_to_the_run_as_a_due_at_row(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "ledger"
    monkeypatch.setenv("SHARED_LEDGER", str(ledger))
    monkeypatch.setenv("SHARED_RETRY_AFTER", "1.0")  # > half the lease: not a local timer
    monkeypatch.syspath_prepend(str(HERE))
    import asyncpg
    import shared_job

    shared = ab.SharedRun(chunk_size=50, lease=LEASE)
    run = asyncio.ensure_future(
        ab.run_batch(
            shared_job.flaky, range(200), store=pg_url, run_id="due", concurrency=20, shared=shared
        )
    )
    seen: list[Any] = []
    while not run.done():
        try:
            seen += await db_rows(
                pg_url,
                "SELECT no, keys, retry, due_at > now() AS later FROM chunks "
                "WHERE run_id = 'due' AND no < 0",
            )
        except asyncpg.UndefinedTableError:  # the store is not made yet
            pass
        await asyncio.sleep(0.05)
    result = await run
    assert result.counts[ab.JobStatus.SUCCEEDED] == 200
    assert {r["keys"][0] for r in seen} == {str(i) for i in range(0, 200, 10)}
    assert any(r["later"] for r in seen), "due in the future, on the database clock"
    assert all(json.loads(r["retry"])["attempt"] == 1 for r in seen)
    retried = [o for o in result.outcomes if o.index is not None and o.index % 10 == 0]
    assert {o.attempts for o in retried} == {2}, "the attempts so far came with the row"
    starts: dict[int, list[float]] = collections.defaultdict(list)
    for kind, k, _, t in ledger_lines(ledger):
        if kind == "start":
            starts[k].append(t)
    waits = [ts[1] - ts[0] for k, ts in starts.items() if k % 10 == 0]
    assert min(waits) >= 0.95, "claimed only once due"


def test_a_bulkhead_is_split_among_the_live_workers_of_a_shared_run(
    pg_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    slow = {"SHARED_SLEEP": "0.02"}
    coord = coordinator(pg_url, "split", 800, 10, ledger, "limited", **slow)
    wait_for(lambda: ledger_count(ledger) >= 20)
    joined = worker(pg_url, "split", ledger, **slow)
    counts = coordinator_counts(finish(coord, 60))
    finish(joined)
    assert counts == {"succeeded": 800}
    lines = ledger_lines(ledger)
    second = min(t for kind, _, p, t in lines if p == joined.pid)
    # Once a heartbeat has seen both (every quarter lease), each holds at most 4 / 2 slots.
    peaks = collections.Counter[int]()
    inside = collections.Counter[int]()
    for kind, _, pid, t in sorted(lines, key=lambda line: line[3]):
        if kind == "start":
            inside[pid] += 1
            if t > second + LEASE / 4 + 0.2:
                peaks[pid] = max(peaks[pid], inside[pid])
        elif kind == "done":
            inside[pid] -= 1
    assert peaks, "both worked after the split"
    assert max(peaks.values()) <= 2


# ------------------------------------------------------------------ limits split among workers


def _dependencies(**options: Any) -> Any:
    from asyncbatch._deps import Dependencies

    return Dependencies(
        run_id="r", limits=options.get("limits"), rates=options.get("rates"), breakers=None,
        classify=lambda exc: ab.ErrorKind.TRANSIENT, emit=lambda event: None,
    )  # fmt: skip


async def test_a_bulkhead_shared_among_workers_allows_each_its_share() -> None:
    deps = _dependencies(limits={"db": 5})
    deps.share(2)  # two live workers: ceil(5 / 2) = 3 each
    inside = peak = 0

    async def call() -> None:
        nonlocal inside, peak
        async with deps.guard("db"):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.002)
            inside -= 1

    await asyncio.gather(*(call() for _ in range(30)))
    assert peak == 3
    deps.share(1)  # the other worker left: the whole limit again
    peak = 0
    await asyncio.gather(*(call() for _ in range(30)))
    assert peak == 5


@pytest.mark.looptime
async def test_a_rate_shared_among_workers_allows_each_its_share() -> None:
    deps = _dependencies(rates={"api": ab.Rate(10, per=1)})
    deps.share(2)  # 5 calls a second here
    loop = asyncio.get_running_loop()
    start = loop.time()
    starts = []
    for _ in range(10):
        async with deps.guard("api"):
            starts.append(loop.time() - start)
    assert starts[-1] == pytest.approx(9 / 5, abs=0.02)


async def test_a_reclaimed_chunk_skips_keys_handed_back_as_retries(pg_url: str) -> None:
    from asyncbatch._store import RunInfo
    from asyncbatch._store._postgres import PostgresStore
    from asyncbatch._store._postgres_shared import Retry, SharedBoard

    async with await PostgresStore.open(pg_url) as store:
        await store.begin_run(RunInfo(run_id="r"))
        board = SharedBoard(store, lease=0.5)
        keys = [str(i) for i in range(3)]
        await board.enqueue("r", [(0, keys, [0, 1, 2], [0, 1, 2])], lookup=False)
        (chunk,) = await board.claim("r", "a", 1, ["succeeded"])
        state = {"attempt": 1, "history": [], "prev_delay": 60.0, "kind": None}
        handed = Retry(
            chunk=0, no=-((1 << 40) + 2), key="1", index=1, item=1, delay=60.0, state=state
        )
        kept = await board.commit(
            [], run_id="r", owner="a", fence={0: (chunk.epoch, False)},
            chunk_of=lambda r: 0, retries=[handed],
        )  # fmt: skip
        assert kept == {0}
        await asyncio.sleep(0.6)  # "a" dies: its lease runs out
        (again,) = await board.claim("r", "b", 1, ["succeeded"])
        assert again.no == 0
        assert again.done == {"1"}, "the retry row runs key 1, not the reclaimed chunk"
        assert await board.claim("r", "b", 5, ["succeeded"]) == [], "the retry is not due yet"


def _fifty(x: int) -> str:
    return str(x % 50)


async def test_a_key_the_input_holds_twice_is_refused_and_the_run_stays_resumable(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in one process: the second item with a key is refused, never merged into
    # the first one's job (it would be handed that job's result on resume).
    monkeypatch.setenv("SHARED_LEDGER", str(tmp_path / "ledger"))
    monkeypatch.syspath_prepend(str(HERE))
    import shared_job

    with anyio.fail_after(30), pytest.raises(ab.DuplicateKey) as caught:
        await ab.run_batch(
            shared_job.job, range(200), key=_fifty, store=pg_url, run_id="twice",
            shared=ab.SharedRun(chunk_size=40, lease=LEASE),
        )  # fmt: skip
    assert (caught.value.key, caught.value.first, caught.value.second) == ("0", 0, 50)
    async with ab.open_store(pg_url) as store:
        run = await store.get_run("twice")
        assert run.status == "interrupted"
        jobs = await store.jobs("twice")
    assert {j.key for j in jobs} <= {str(i) for i in range(50)}
    assert all(j.index is not None and j.index < 50 for j in jobs)  # nothing past position 49
