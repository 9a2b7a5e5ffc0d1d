"""The README's quick start runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quick_start_runs_and_resumes(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(python_blocks()[0])
    first = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert first.returncode == 0, first.stderr
    assert "99 succeeded\n1 dead-lettered" in first.stdout
    assert (tmp_path / "quickstart.db").exists()
    # Same run_id again: everything finished is skipped, nothing is re-run.
    second = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 0, second.stderr
    assert "0 succeeded" in second.stdout
