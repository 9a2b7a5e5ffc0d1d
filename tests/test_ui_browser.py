"""The dashboard in a real headless Chromium (Playwright with the distribution's browser).

Few and end to end: the runs page lists a run this test makes, a live run's
progress advances on its page, filtering the DLQ by kind narrows the list,
redriving an entry resolves it, purging asks first, and an action without
the token is refused. The dashboard and the batches run in the test's event
loop, on a SQLite store (the API tests cover every store).

Chromium is /usr/bin/chromium (Debian's ``chromium`` package; ``.ci/run``
installs it). Without it, or without the ``playwright`` package, these tests
skip locally and FAIL in CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import ui_jobs
from aiohttp.test_utils import TestServer

import asyncbatch as ab
from asyncbatch._cli._input import load_job
from asyncbatch._ui import make_app

ITEMS, RETRY = ui_jobs.ITEMS, ui_jobs.RETRY
TOKEN = "browser-token"
CHROMIUM = os.environ.get("ASYNCBATCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.isfile(CHROMIUM)
SHOTS = os.environ.get("ASYNCBATCH_SCREENSHOTS")  # a folder: save the pages' screenshots there
pytestmark = pytest.mark.slow


def _unavailable(reason: str) -> None:
    message = f"{reason}: the dashboard's browser tests need it (.ci/run installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not HAVE_CHROMIUM:
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            await b.close()


def expect(locator: Any) -> Any:
    from playwright.async_api import expect

    return expect(locator)


async def _page(browser: Any) -> Any:
    context = await browser.new_context(viewport={"width": 1280, "height": 820})
    page = await context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    return page


async def _shot(page: Any, name: str) -> None:
    if SHOTS:
        await page.screenshot(path=str(Path(SHOTS) / f"ui-{name}.png"), full_page=True)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, ab.Store]]:
    async with ab.open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        server = TestServer(make_app(store, token=TOKEN, load_job=load_job), host="127.0.0.1")
        await server.start_server()
        try:
            yield str(server.make_url("/")), store
        finally:
            await server.close()


async def test_runs_page_lists_the_run_and_its_live_progress_advances(
    browser: Any, served: tuple[str, ab.Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, store = served
    gates = {"b": asyncio.Event(), "c": asyncio.Event()}
    monkeypatch.setattr(ui_jobs, "GATES", gates)
    items = [
        {"n": i, **({"gate": "b"} if 30 <= i < 70 else {"gate": "c"} if i >= 70 else {})}
        for i in range(100)
    ]
    started = asyncio.Event()

    async def run() -> None:
        batch = ab.Batch(ui_jobs.job, store=store.url, run_id="live-run", concurrency=100)
        async with batch.stream(items) as outcomes:
            seen = 0
            async for _ in outcomes:
                seen += 1
                if seen == 30:
                    started.set()

    page = await _page(browser)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await started.wait()
        await page.goto(f"{base}#token={TOKEN}")
        row = page.locator('#runs-body tr[data-run-id="live-run"]')
        await row.wait_for()
        assert await row.locator(".badge").inner_text() == "running"
        assert await row.locator(".progress-text").inner_text() == "30 / 100"
        await row.locator("a").click()
        done = page.locator("#run-done")
        await expect(done).to_have_text("30")
        gates["b"].set()
        await expect(done).to_have_text("70")
        assert await page.locator("#run-progress").get_attribute("max") == "100"
        await _shot(page, "run-live")
        gates["c"].set()
    await expect(page.locator("#run-head .badge")).to_have_text("finished")
    await expect(done).to_have_text("100")
    assert await page.locator("#run-progress").evaluate("p => p.value") == 100
    assert page.errors == []


async def test_dlq_filter_redrive_and_purge_with_confirmation(
    browser: Any, served: tuple[str, ab.Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, store = served
    await ab.run_batch(ui_jobs.job, ITEMS, store=store, run_id="r1", retry=RETRY)
    page = await _page(browser)
    await page.goto(f"{base}#token={TOKEN}")
    await page.locator('#runs-body tr[data-run-id="r1"]').wait_for()
    await _shot(page, "runs")
    await page.locator('#runs-body a:text("r1")').click()
    await page.locator("#error-groups").wait_for()
    await page.locator("#latency-chart svg rect").first.wait_for()
    await _shot(page, "run")

    await page.goto(f"{base}#/dlq")
    rows = page.locator("#dlq-body tr")
    await page.locator("#dlq-count").filter(has_text="12 match").wait_for()
    assert await rows.count() == 12
    await page.select_option("#dlq-kind", "transient")
    await page.locator("#dlq-count").filter(has_text="4 match").wait_for()
    assert await rows.count() == 4
    assert set(await page.locator("#dlq-body td.kind").all_inner_texts()) == {"transient"}
    await _shot(page, "dlq")

    # Redrive the first transient entry with the job fixed: it resolves.
    monkeypatch.setattr(ui_jobs, "BROKEN", False)
    first = await rows.first.get_attribute("data-id")
    await rows.first.locator("input[type=checkbox]").check()
    await page.click("#dlq-redrive")
    await page.locator("#notice").filter(has_text="1 resolved").wait_for()
    await page.locator("#dlq-count").filter(has_text="3 match").wait_for()
    assert (await store.dlq.get(int(first or 0))).status == "resolved"

    # Purge asks first: cancelling keeps the entry, confirming deletes it.
    await rows.first.locator("input[type=checkbox]").check()
    await page.click("#dlq-purge")
    dialog = page.locator("#confirm")
    await dialog.wait_for(state="visible")
    assert "cannot be undone" in await page.locator("#confirm-text").inner_text()
    await page.click("#confirm-cancel")
    await page.locator("#notice").filter(has_text="nothing purged").wait_for()
    assert await rows.count() == 3
    doomed = await rows.first.get_attribute("data-id")
    await rows.first.locator("input[type=checkbox]").check()
    await page.click("#dlq-purge")
    await page.click("#confirm-ok")
    await page.locator("#notice").filter(has_text="purged 1").wait_for()
    await page.locator("#dlq-count").filter(has_text="2 match").wait_for()
    with pytest.raises(KeyError):
        await store.dlq.get(int(doomed or 0))

    await rows.first.locator("a").first.click()
    await page.locator("#entry-traceback").wait_for()
    assert "ConnectionRefusedError" in await page.locator("#entry-traceback").inner_text()
    await _shot(page, "entry")
    assert page.errors == []


async def test_an_action_without_the_token_is_refused(
    browser: Any, served: tuple[str, ab.Store]
) -> None:
    base, store = served
    await ab.run_batch(ui_jobs.job, ITEMS, store=store, run_id="r1", retry=RETRY)
    page = await _page(browser)  # a fresh context: no token in its session storage
    await page.goto(f"{base}#/dlq")
    rows = page.locator("#dlq-body tr")
    await page.locator("#dlq-count").filter(has_text="12 match").wait_for()
    await rows.first.locator("input[type=checkbox]").check()
    await page.click("#dlq-purge")
    await page.click("#confirm-ok")
    await page.locator("#notice.error").filter(has_text="missing token").wait_for()
    assert len(await store.dlq.list()) == 12
