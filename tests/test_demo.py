"""The demo: its flaky HTTP service, its client, and `asyncbatch demo` end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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
