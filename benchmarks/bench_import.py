"""How long ``import asyncbatch`` takes, against the asyncio it needs anyway.

Run: ``python -m benchmarks.bench_import [--rounds N]``.

Each figure is the median over fresh interpreters (bytecode compiled first,
as an installed package has it), interleaved so that the machine's load falls
on every variant alike: the bare interpreter, ``import asyncio, anyio`` (what
any program of ours imports anyway) and ``import asyncbatch``. The target is
``import asyncbatch`` <= 150 ms; the ratio to asyncio's import shows what is
ours.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ._util import row, table

VARIANTS = {
    "interpreter": "pass",
    "asyncio": "import asyncio, anyio",
    "asyncbatch": "import asyncbatch",
}

_PROBE = "import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"


def _seconds(code: str, env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(code=code)],
        check=True, capture_output=True, text=True, env=env,
    ).stdout  # fmt: skip
    return float(out)


def measure(rounds: int) -> dict[str, float]:
    """Median seconds per variant over ``rounds`` interleaved fresh interpreters."""
    import asyncbatch

    compileall.compile_dir(str(Path(asyncbatch.__file__).parent), quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, code in VARIANTS.items():
            times[name].append(_seconds(code, env))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    t = measure(args.rounds)
    ours = t["asyncbatch"]
    rows = [
        row("import asyncio, anyio", f"{t['asyncio'] * 1e3:.0f} ms", "baseline"),
        row(
            "import asyncbatch",
            f"{ours * 1e3:.0f} ms ({ours / t['asyncio']:.2f}x asyncio's)",
            "<= 150 ms",
            ours <= 0.150,
        ),
    ]
    print(table(f"Import time (median of {args.rounds} fresh interpreters)", rows))
    print(f"({time.perf_counter() - started:.0f} s)")
    return rows


if __name__ == "__main__":
    main()
