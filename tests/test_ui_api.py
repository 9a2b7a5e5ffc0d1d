"""The dashboard's JSON API (`asyncbatch ui`), through aiohttp's test client, over every store.

Each test makes its runs with real batches (tests/ui_jobs.py), serves them
with `make_app` on a loopback port and talks HTTP to it. The live test runs
a batch on its own store connection while the dashboard reads through
another, as `asyncbatch ui` beside a running batch does.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import ui_jobs
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from stores import STORES, store_url

import asyncbatch as ab
from asyncbatch._cli import cli
from asyncbatch._cli._input import load_job
from asyncbatch._ui import TOKEN_HEADER, make_app

TOKEN = "test-token"
ITEMS, RETRY = ui_jobs.ITEMS, ui_jobs.RETRY


@pytest.fixture(params=STORES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url(request, tmp_path, request.param)


@pytest.fixture
async def store(url: str) -> AsyncIterator[ab.Store]:
    async with ab.open_store(url) as s:
        await ab.run_batch(ui_jobs.job, ITEMS, store=s, run_id="r1", retry=RETRY)
        yield s


async def _client(store: ab.Store, **options: Any) -> TestClient[Any, Any]:
    options.setdefault("refresh", 0)  # every request reads the store afresh
    app = make_app(store, token=TOKEN, load_job=load_job, **options)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(store: ab.Store) -> AsyncIterator[TestClient[Any, Any]]:
    c = await _client(store)
    try:
        yield c
    finally:
        await c.close()


async def _get(client: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    r = await client.get(path)
    assert r.status == status, await r.text()
    return await r.json()


async def _post(
    client: TestClient[Any, Any], path: str, body: Any, *, token: str | None = TOKEN
) -> tuple[int, Any]:
    headers = {} if token is None else {TOKEN_HEADER: token}
    r = await client.post(path, json=body, headers=headers)
    return r.status, await r.json()


async def test_runs_lists_the_run_with_counts_and_its_size(client: TestClient[Any, Any]) -> None:
    [run] = (await _get(client, "/api/runs"))["runs"]
    assert run["run_id"] == "r1"
    assert run["status"] == "finished"
    assert run["counts"]["succeeded"] == 28
    assert run["counts"]["dead_lettered"] == 12
    assert (run["done"], run["total"]) == (40, 40)
    assert run["job"] == "ui_jobs:job"
    assert (await _get(client, "/api/runs?status=running"))["runs"] == []
    assert len((await _get(client, "/api/runs?status=finished"))["runs"]) == 1


async def test_run_page_has_report_groups_and_can_redrive(client: TestClient[Any, Any]) -> None:
    run = await _get(client, "/api/runs/r1")
    groups = {(g["kind"], g["error_type"]): g for g in run["report"]["groups"]}
    assert groups["permanent", "ValueError"]["jobs"] == 8
    assert groups["permanent", "ValueError"]["sample_keys"] == ["0", "5", "10", "15", "20"]
    assert groups["transient", "ConnectionRefusedError"]["count"] == 8  # 2 attempts each
    assert run["dlq_open"] == 12
    assert run["redrive"] == {"ok": True, "reason": ""}
    await _get(client, "/api/runs/nope", status=404)


async def test_charts_count_every_finished_job(client: TestClient[Any, Any]) -> None:
    charts = await _get(client, "/api/runs/r1/charts")
    assert round(sum(charts["throughput"]) * charts["width"]) == 40
    by_status = charts["durations"]["by_status"]
    assert sum(by_status["succeeded"]) == 28
    assert sum(by_status["dead_lettered"]) == 12
    assert len(by_status["succeeded"]) == len(charts["durations"]["edges"]) + 1


async def test_dlq_filters_narrow_and_pages_follow_on(client: TestClient[Any, Any]) -> None:
    every = await _get(client, "/api/dlq")
    assert every["total"] == 12
    assert every["facets"]["kind"] == {"permanent": 8, "transient": 4}
    transient = await _get(client, "/api/dlq?kind=transient")
    assert transient["total"] == 4
    assert {e["kind"] for e in transient["entries"]} == {"transient"}
    by_type = await _get(client, "/api/dlq?error_type=ValueError&run_id=r1")
    assert [e["key"] for e in by_type["entries"]] == [str(i) for i in range(0, 40, 5)]
    first = await _get(client, "/api/dlq?limit=10")
    assert len(first["entries"]) == 10
    rest = await _get(client, f"/api/dlq?limit=10&after={first['next_after']}")
    assert len(rest["entries"]) == 2
    assert rest["next_after"] is None
    assert (await _get(client, "/api/dlq?until=1"))["total"] == 0
    assert (await _get(client, "/api/dlq?status=resolved"))["total"] == 0


async def test_an_entry_shows_payload_traceback_and_every_attempt(
    client: TestClient[Any, Any],
) -> None:
    [entry] = (await _get(client, "/api/dlq?kind=transient&limit=1"))["entries"]
    full = await _get(client, f"/api/dlq/{entry['id']}")
    assert full["payload"] == {"n": 3, "fail": False, "conn": True}
    assert "ConnectionRefusedError" in full["traceback"]
    assert [a["number"] for a in full["attempts"]] == [1, 2]
    assert full["redrive"]["ok"] is True
    await _get(client, "/api/dlq/999999", status=404)


async def test_actions_without_the_token_are_refused(client: TestClient[Any, Any]) -> None:
    ids = [e["id"] for e in (await _get(client, "/api/dlq"))["entries"]]
    for token in (None, "wrong"):
        purge = {"ids": ids, "confirm": True}
        status, body = await _post(client, "/api/dlq/purge", purge, token=token)
        assert status == 403
        assert "token" in body["error"]
        status, _ = await _post(client, "/api/dlq/redrive", {"ids": ids}, token=token)
        assert status == 403
    assert (await _get(client, "/api/dlq"))["total"] == 12


async def test_read_only_refuses_actions_even_with_the_token(store: ab.Store) -> None:
    c = await _client(store, read_only=True)
    try:
        ids = [e["id"] for e in (await _get(c, "/api/dlq"))["entries"]]
        status, body = await _post(c, "/api/dlq/purge", {"ids": ids, "confirm": True})
        assert (status, "read-only" in body["error"]) == (403, True)
        assert (await _get(c, "/api/info"))["read_only"] is True
        assert (await _get(c, "/api/dlq"))["total"] == 12
    finally:
        await c.close()


async def test_purge_needs_confirmation_and_deletes_only_the_chosen(
    client: TestClient[Any, Any],
) -> None:
    entries = (await _get(client, "/api/dlq?kind=transient"))["entries"]
    chosen = [e["id"] for e in entries[:2]]
    status, body = await _post(client, "/api/dlq/purge", {"ids": chosen})
    assert status == 400
    assert "confirm" in body["error"]
    status, body = await _post(client, "/api/dlq/purge", {"ids": chosen, "confirm": True})
    assert (status, body) == (200, {"purged": 2})
    left = await _get(client, "/api/dlq?status=all")
    assert left["total"] == 10
    assert not {e["id"] for e in left["entries"]} & set(chosen)


async def test_redrive_resolves_the_chosen_entries(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ui_jobs, "BROKEN", False)  # the job is fixed
    entries = (await _get(client, "/api/dlq?kind=permanent"))["entries"]
    chosen = [e["id"] for e in entries[:3]]
    status, body = await _post(client, "/api/dlq/redrive", {"ids": chosen})
    assert status == 200, body
    assert (body["resolved"], body["dead"], body["skipped"]) == (3, 0, 0)
    resolved = await _get(client, "/api/dlq?status=resolved")
    assert sorted(e["id"] for e in resolved["entries"]) == sorted(chosen)
    assert (await _get(client, "/api/dlq"))["total"] == 9
    # Already resolved: nothing to run again.
    status, body = await _post(client, "/api/dlq/redrive", {"ids": chosen})
    assert (status, body["skipped"]) == (200, 3)


async def test_redrive_of_a_job_that_cannot_be_imported_says_how(url: str) -> None:
    async def local(item: Any) -> None:
        raise ValueError("nope")

    async with ab.open_store(url) as store:
        await ab.run_batch(local, [1, 2], store=store, run_id="closure")
        c = await _client(store)
        try:
            run = await _get(c, "/api/runs/closure")
            assert run["redrive"]["ok"] is False
            ids = [e["id"] for e in (await _get(c, "/api/dlq?run_id=closure"))["entries"]]
            status, body = await _post(c, "/api/dlq/redrive", {"ids": ids})
            assert status == 409
            assert "asyncbatch dlq redrive MODULE:FUNC --run-id closure" in body["error"]
        finally:
            await c.close()


async def test_export_downloads_matching_entries_as_jsonl(client: TestClient[Any, Any]) -> None:
    r = await client.get("/api/dlq/export?kind=transient")
    assert r.status == 200
    assert "attachment" in r.headers["Content-Disposition"]
    lines = [json.loads(line) for line in (await r.text()).splitlines()]
    assert [d["key"] for d in lines] == ["3", "13", "23", "33"]
    assert all(len(d["attempts"]) == 2 for d in lines)


async def test_open_pages_share_one_read_per_refresh_interval(store: ab.Store) -> None:
    c = await _client(store, refresh=60.0)
    try:
        assert len((await _get(c, "/api/runs"))["runs"]) == 1
        await ab.run_batch(ui_jobs.job, [{"n": 1}], store=store, run_id="r2")
        # Within the interval every page gets the answer already read.
        assert len((await _get(c, "/api/runs"))["runs"]) == 1
        assert (await _get(c, "/api/runs/r2"))["done"] == 1  # another question: read now
    finally:
        await c.close()
    fresh = await _client(store, refresh=0)
    try:
        assert len((await _get(fresh, "/api/runs"))["runs"]) == 2
    finally:
        await fresh.close()


async def test_a_foreign_host_header_is_refused(client: TestClient[Any, Any]) -> None:
    r = await client.get("/api/runs", headers={"Host": "attacker.example:8000"})
    assert r.status == 403
    page = await client.get("/")
    assert page.status == 200
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'self'
    assert "/static/app.js" in await page.text()
    assert (await client.get("/static/app.js")).status == 200


@pytest.mark.parametrize("name", ["sqlite", "postgresql"])
async def test_a_live_run_advances_while_the_dashboard_reads(
    name: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = store_url(request, tmp_path, name)
    gates = {"b": asyncio.Event(), "c": asyncio.Event()}
    monkeypatch.setattr(ui_jobs, "GATES", gates)
    # 50 jobs run at once (5 of them fail), 70 wait for gate b, 80 for gate c.
    items = [{"n": i, "fail": i < 50 and i % 10 == 0,
              **({"gate": "b"} if 50 <= i < 120 else {"gate": "c"} if i >= 120 else {})}
             for i in range(200)]  # fmt: skip
    batch = ab.Batch(ui_jobs.job, store=url, run_id="live", concurrency=200)
    async with ab.open_store(url) as store:  # the dashboard's own connection
        c = await _client(store)
        try:
            done = []
            async with batch.stream(items) as outcomes:
                seen = 0
                async for _ in outcomes:  # acknowledged outcomes are committed ones
                    seen += 1
                    if seen in (50, 120):
                        run = await _get(c, "/api/runs/live")
                        assert (run["status"], run["total"]) == ("running", 200)
                        done.append(run["done"])
                        [group] = run["dead_letters"]["groups"]  # grouped as the report will
                        assert (group["kind"], group["fingerprint"]) == (
                            "permanent",
                            "item <n> is bad",
                        )
                        assert group["count"] == 5
                        assert sorted(group["sample_keys"]) == ["0", "10", "20", "30", "40"]
                        gates["b" if seen == 50 else "c"].set()
            assert done == [50, 120]
            run = await _get(c, "/api/runs/live")
            assert (run["status"], run["done"]) == ("finished", 200)
            assert run["dead_letters"] is None  # the stored report has the groups now
            assert run["report"]["groups"][0]["sample_keys"] == ["0", "10", "20", "30", "40"]
        finally:
            await c.close()


def test_ui_refuses_a_missing_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["ui", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1
    assert result.output.startswith("error: no database at ")
    assert len(result.output.splitlines()) == 1


def test_ui_refuses_a_busy_port_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"

    async def make() -> None:
        await ab.run_batch(ui_jobs.job, [{"n": 1}], store=f"sqlite:///{db}", run_id="x")

    asyncio.run(make())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["ui", "--db", str(db), "--port", str(port)])
    assert result.exit_code == 1
    assert result.output == (
        f"error: port {port} on 127.0.0.1 is in use (another asyncbatch ui?): "
        "pass --port N, or --port 0 for any free port\n"
    )


def test_ui_prints_a_token_that_actions_need_and_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    db = tmp_path / "runs.db"

    async def make() -> None:
        await ab.run_batch(ui_jobs.job, [{"n": 1, "fail": True}], store=f"sqlite:///{db}")

    asyncio.run(make())
    ui = subprocess.Popen(
        [sys.executable, "-m", "asyncbatch", "ui", "--db", str(db), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert ui.stdout is not None
        first = ui.stdout.readline()
        assert first.startswith("asyncbatch ui on http://127.0.0.1:")
        base, _, token = ui.stdout.readline().split()[1].partition("#token=")
        assert ui.stdout.readline() == f"token: {token}\n"
        with urllib.request.urlopen(base + "api/dlq", timeout=10) as r:
            [entry] = json.load(r)["entries"]

        def purge(headers: dict[str, str]) -> Any:
            body = json.dumps({"ids": [entry["id"]], "confirm": True}).encode()
            req = urllib.request.Request(base + "api/dlq/purge", body, headers, method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.load(r)

        with pytest.raises(urllib.error.HTTPError) as refused:
            purge({"Content-Type": "application/json"})
        refused.value.close()
        assert refused.value.code == 403
        assert purge({"Content-Type": "application/json", TOKEN_HEADER: token}) == {"purged": 1}
    finally:
        ui.send_signal(signal.SIGTERM)
        out, err = ui.communicate(timeout=10)
    assert (ui.returncode, out, err) == (0, "stopped\n", "")
