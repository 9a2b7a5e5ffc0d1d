"""Take the README's dashboard screenshots: ``python docs/screenshots.py [OUT_DIR]``.

Runs ``asyncbatch demo`` into a throwaway database (a flaky local service, a
breaker that opens and closes, dead letters), serves it with ``asyncbatch
ui`` and, while a second demo runs against the same database, photographs
the runs page, the running run, the finished run, the dead-letter queue and one entry in
headless Chromium (Debian's ``chromium``, through Playwright).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


async def shoot(base: str, out: Path) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM)
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(base)
        live = page.locator('#runs-body tr[data-run-id="demo-2"] .badge:text("running")')
        await live.wait_for(timeout=30_000)
        await page.wait_for_timeout(2_500)  # let its progress bar and rate move
        await page.screenshot(path=out / "ui-runs.png")
        await page.locator('#runs-body a:text("demo-2")').click()
        await page.locator("#live-groups").wait_for(timeout=30_000)
        await page.locator("#throughput-chart svg rect").first.wait_for()
        await page.screenshot(path=out / "ui-run-live.png", full_page=True)
        await page.click("#nav-runs")
        await page.locator('#runs-body a:text("demo-1")').click()
        await page.locator("#latency-chart svg rect").first.wait_for()
        await page.screenshot(path=out / "ui-run.png", full_page=True)
        await page.click("#nav-dlq")
        await page.locator("#dlq-body tr").first.wait_for()
        await page.screenshot(path=out / "ui-dlq.png")
        await page.locator("#dlq-body tr a").first.click()
        await page.locator("#entry-traceback").wait_for()
        await page.screenshot(path=out / "ui-entry.png", full_page=True)
        await browser.close()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "demo.db")
        cli = [sys.executable, "-m", "asyncbatch"]
        subprocess.run([*cli, "demo", "--quiet", "--db", db, "--run-id", "demo-1"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        ui = subprocess.Popen([*cli, "ui", "--db", db, "--port", "0"], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
        # A second demo runs while the pages are taken: the runs page shows it live.
        running = subprocess.Popen([*cli, "demo", "--quiet", "--db", db, "--run-id", "demo-2",
                                    "--jobs", "600", "--seed", "7"], stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            assert ui.stdout is not None
            for line in ui.stdout:
                found = re.search(r"open (http://\S+)", line)
                if found:
                    asyncio.run(shoot(found.group(1), out))
                    break
        finally:
            running.wait(timeout=120)
            ui.terminate()
            ui.wait(timeout=10)
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
