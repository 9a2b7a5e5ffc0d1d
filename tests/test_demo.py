"""The demo: its flaky HTTP service, its client, and `asyncbatch demo` end to end."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import asyncbatch as ab
from asyncbatch._cli._demo import demo_service, outage_window
from asyncbatch._testing._service import (
    ClientError,
    FlakyService,
    ServiceUnavailable,
    TooManyRequests,
    get_json,
    http_request,
)
from asyncbatch.testing import FaultInjector


async def test_service_answers_items_and_the_client_maps_statuses_to_error_kinds() -> None:
    faults = FaultInjector(poison={"13"}, exceptions={})
    async with FlakyService(faults, stuck={"7"}) as service:
        assert await get_json(f"{service.url}/items/1") == {"id": "1", "value": 49}
        with pytest.raises(ClientError) as bad:
            await get_json(f"{service.url}/items/13")
        assert bad.value.status == 422
        with pytest.raises(ServiceUnavailable) as stuck:
            await get_json(f"{service.url}/items/7")
        assert stuck.value.retry_after == 1.0
        with pytest.raises(ClientError):
            await get_json(f"{service.url}/nowhere")
    classify = ab.Classifier()
    assert classify(bad.value) is ab.ErrorKind.PERMANENT
    assert classify(stuck.value) is ab.ErrorKind.TRANSIENT
    assert service.statuses == {200: 1, 422: 1, 503: 1, 404: 1}


async def test_overload_is_429_with_retry_after_and_recoverable() -> None:
    faults = FaultInjector(rates={"recoverable": 1.0}, retry_after=2)
    async with FlakyService(faults) as service:
        with pytest.raises(TooManyRequests) as info:
            await get_json(f"{service.url}/items/1")
    assert info.value.retry_after == 2.0
    assert ab.Classifier()(info.value) is ab.ErrorKind.RECOVERABLE


async def test_webhook_endpoint_records_posted_json() -> None:
    async with FlakyService() as service:
        response = await http_request("POST", f"{service.url}/hooks", body=b'{"alert": 1}')
    assert response.status == 202
    assert service.received == [{"alert": 1}]


async def test_a_refused_connection_is_aiohttps_connector_error_and_transient() -> None:
    async with FlakyService() as service:
        url = service.url
    # get_json is a thin wrapper over aiohttp now: transport failures are aiohttp's own.
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await get_json(f"{url}/items/1")
    assert ab.Classifier()(info.value) is ab.ErrorKind.TRANSIENT


async def test_helpers_reuse_the_connections_of_a_session_they_are_given() -> None:
    async with FlakyService() as service, aiohttp.ClientSession() as session:
        for i in range(5):
            assert (await get_json(f"{service.url}/items/{i}", session=session))["id"] == str(i)
    assert (service.requests, service.connections) == (5, 1)


def test_the_outage_falls_inside_the_batch_for_every_size() -> None:
    for jobs in (1, 20, 200, 300, 5000):
        start, end = outage_window(jobs)
        assert 0 <= start <= 2.0
        assert end - start == 2.0


def test_demo_service_picks_poison_and_stuck_items_from_the_seed() -> None:
    a, b = demo_service(300, seed=1), demo_service(300, seed=1)
    assert a.stuck == b.stuck
    assert len(a.stuck) == 2
    assert demo_service(300, seed=2).stuck != a.stuck
    assert not demo_service(300, seed=1, healed=True).stuck


def _asyncbatch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncbatch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_demo_runs_end_to_end_and_its_dead_letters_can_be_redriven(tmp_path: Path) -> None:
    db = str(tmp_path / "demo.db")
    demo = _asyncbatch("demo", "--jobs", "200", "--db", db, cwd=tmp_path)
    out = demo.stdout
    assert demo.returncode == 0, demo.stderr
    assert "Traceback" not in demo.stderr
    # The breaker opened during the outage and closed once the service was back.
    assert "breaker 'api' open" in out
    assert out.rindex("breaker 'api' closed") > out.index("breaker 'api' open")
    found = re.search(r"DLQ: (\d+) dead letter\(s\)", out)
    assert found, out
    dead = int(found.group(1))
    assert dead >= 2, "the stuck and poison items are dead-lettered"
    assert f"{dead} dead-lettered" in out
    run_id = re.search(r"asyncbatch report (\S+) --db", out)
    assert run_id, out
    assert "Error report" in out
    # The real client's errors, with the status and method in the report (issue 13).
    assert "ClientResponseError" in out, "the report names the failures"
    assert "GET 422, message=" in out
    served = re.search(r"the service saw (\d+) requests over (\d+) connection", out)
    assert served, out
    assert int(served.group(2)) <= 32 < int(served.group(1)), "one kept-alive pool per run"

    listed = _asyncbatch("dlq", "list", "--json", "--db", db, cwd=tmp_path)
    assert len(listed.stdout.splitlines()) == dead
    assert {json.loads(line)["run_id"] for line in listed.stdout.splitlines()} == {run_id[1]}

    redriven = _asyncbatch("demo", "--redrive", run_id[1], "--db", db, cwd=tmp_path)
    assert redriven.returncode == 0, redriven.stderr
    assert f"{dead} resolved, 0 dead again" in redriven.stdout


@pytest.mark.slow
def test_demo_exports_spans_and_metrics_to_stderr_with_otel_console(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from asyncbatch._cli._main import cli

    args = ["demo", "--jobs", "10", "--quiet", "--otel", "console", "--db", str(tmp_path / "o.db")]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Error report" in result.stdout
    assert '"name": "asyncbatch.run"' in result.stderr
    assert '"name": "asyncbatch.attempt"' in result.stderr
    assert '"name": "asyncbatch.attempts"' in result.stderr, "metrics are flushed at the end"
    assert "breaker 'api' open" not in result.stdout, "--quiet prints no live event lines"


@pytest.mark.slow
def test_demo_resumed_by_run_id_keeps_the_jobs_seed_and_concurrency_it_started_with(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from asyncbatch._cli._main import cli

    db = str(tmp_path / "d.db")

    def demo(*args: str) -> Any:
        return CliRunner().invoke(cli, ["demo", "--quiet", "--db", db, *args])

    # One job (a poison item): the demo ends in a fraction of a second.
    first = demo("--jobs", "1", "--seed", "3", "--concurrency", "4", "--run-id", "d1")
    assert first.exit_code == 0, first.output  # dead letters are the demo's point: exit 0

    resumed = demo("--run-id", "d1")  # no --jobs: the stored run says 1, not the default 300
    assert resumed.exit_code == 0, resumed.output
    assert "1 jobs against a flaky HTTP service" in resumed.stdout
    assert "concurrency 4" in resumed.stdout

    async def stored() -> tuple[dict[str, Any], dict[str, int]]:
        async with ab.open_store(f"sqlite:///{db}") as store:
            run = await store.get_run("d1")
            return run.config, await store.count_jobs("d1")

    config, counts = asyncio.run(stored())
    assert config["demo"] == {"jobs": 1, "seed": 3, "concurrency": 4}
    assert sum(counts.values()) == 1  # the 299 items of a default demo never joined the run

    other = demo("--run-id", "d1", "--jobs", "300")
    assert other.exit_code == 1
    assert "run 'd1' was started with --jobs 1;" in other.stderr
    assert "Traceback" not in other.output


async def test_an_interrupted_demo_run_resumes_with_its_own_settings(tmp_path: Path) -> None:
    """Ctrl-C after 300 of 2,000 jobs, then `demo --run-id X`: all 2,000, same faults."""
    from asyncbatch._cli._demo import DemoOptions, resolve_settings
    from asyncbatch._store import RunInfo

    db = str(tmp_path / "d.db")
    async with ab.open_store(f"sqlite:///{db}") as store:
        config = {"demo": {"jobs": 2000, "seed": 7, "concurrency": 50}}
        await store.begin_run(RunInfo(run_id="x", job="", config=config))
        await store.end_run("x", "interrupted", {"succeeded": 300})

    resumed = await resolve_settings(DemoOptions(db=db, run_id="x"))
    assert (resumed.jobs, resumed.seed, resumed.concurrency) == (2000, 7, 50)
    faster = await resolve_settings(
        DemoOptions(db=db, run_id="x", concurrency=8, given=frozenset({"concurrency"}))
    )
    assert (faster.jobs, faster.concurrency) == (2000, 8)  # an explicit --concurrency wins
    fresh = await resolve_settings(DemoOptions(db=db, run_id="new", jobs=40))
    assert fresh.jobs == 40


def test_demo_refuses_to_resume_a_run_it_did_not_start(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from asyncbatch._cli._main import cli

    db = str(tmp_path / "d.db")

    async def job(x: int) -> int:
        return x

    asyncio.run(ab.run_batch(job, range(3), store=f"sqlite:///{db}", run_id="mine"))
    result = CliRunner().invoke(cli, ["demo", "--quiet", "--db", db, "--run-id", "mine"])
    assert result.exit_code == 1
    assert "run 'mine' in" in result.stderr
    assert "was not started by `asyncbatch demo`" in result.stderr
