"""Every example runs as written (``python examples/x.py``), quickly, and exits 0."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert took < 10, f"{name} took {took:.1f} s"
    return proc.stdout


def test_every_example_is_tested() -> None:
    tested = {"fetch_urls.py", "eval_suite.py", "etl_compensation.py", "alert_webhook.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.slow
def test_fetch_urls_rides_out_an_outage_with_the_breaker(tmp_path: Path) -> None:
    out = run_example("fetch_urls.py", cwd=tmp_path)
    assert "BreakerOpened: api" in out
    assert out.rindex("BreakerClosed: api") > out.index("BreakerOpened: api")
    assert "fetched " in out


@pytest.mark.slow
def test_eval_suite_resumes_and_writes_jsonl(tmp_path: Path) -> None:
    out = run_example("eval_suite.py", str(tmp_path), cwd=tmp_path)
    assert "first run: stopped after 50 cases" in out
    skipped = re.search(r"second run: (\d+) skipped \(scored before\)", out)
    assert skipped, out
    # At least the 50 read; a few more may have been checkpointed before the stop.
    assert 50 <= int(skipped[1]) <= 50 + 16
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 120
    assert len({r["id"] for r in rows}) == 120, "no case scored twice"
    assert "accuracy" in out


@pytest.mark.slow
def test_etl_compensation_rolls_back_every_loaded_row(tmp_path: Path) -> None:
    out = run_example("etl_compensation.py", cwd=tmp_path)
    assert "aborted: table analytics.orders does not exist" in out
    assert "loaded rows rolled back" in out
    assert "rows left in the warehouse: 0" in out


@pytest.mark.slow
def test_alert_webhook_posts_alerts(tmp_path: Path) -> None:
    out = run_example("alert_webhook.py", cwd=tmp_path)
    assert "[BreakerOpened] api is failing (ClientResponseError)" in out  # aiohttp's error
    assert "[BreakerClosed] api recovered" in out
    assert "[BudgetExhausted] error budget spent: failure rate" in out
    assert "[RunFinished] run finished: 135 ok, 15 dead-lettered" in out
