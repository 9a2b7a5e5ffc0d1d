"""``asyncbatch run`` pauses on SIGUSR1 and resumes on SIGUSR2 (a real process, real signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 here")

JOB = """
import asyncio, os

async def slow(item):
    fd = os.open("started.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
    await asyncio.sleep(0.05)
    return item["n"]
"""


def _started(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _wait_for(predicate: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_sigusr1_pauses_and_sigusr2_resumes_a_cli_run(tmp_path: Path) -> None:
    (tmp_path / "usrjobs.py").write_text(JOB)
    (tmp_path / "items.jsonl").write_text("".join(f'{{"n": {i}}}\n' for i in range(160)))
    log = tmp_path / "started.log"
    args = [sys.executable, "-m", "asyncbatch", "run", "usrjobs:slow", "--input", "items.jsonl"]
    args += ["--concurrency", "4", "--run-id", "r1", "--db", "t.db"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    child = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(lambda: _started(log) >= 20, "the run started")
        child.send_signal(signal.SIGUSR1)
        time.sleep(0.5)  # attempts in flight (50 ms) end; none starts after them
        paused_at = _started(log)
        time.sleep(0.5)
        assert _started(log) == paused_at, "an attempt started while paused"
        assert paused_at < 160
        assert child.poll() is None
        child.send_signal(signal.SIGUSR2)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, out + err
    assert "160 succeeded" in out
    assert "paused" in out
    assert "resumed" in out
    assert _started(log) == 160
