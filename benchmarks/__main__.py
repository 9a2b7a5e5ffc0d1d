"""Run every benchmark suite: ``python -m benchmarks [--quick]``."""

from __future__ import annotations

import importlib
import sys


def main() -> None:
    argv = sys.argv[1:]
    for name in (
        "bench_core", "bench_store", "bench_postgres", "bench_otel", "bench_crash",
        "bench_resume", "bench_parking", "bench_http", "bench_ui", "bench_traffic",
        "bench_workers", "bench_exact", "bench_shared_path", "bench_callgrind", "bench_import",
    ):  # fmt: skip
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"\n## {name}", flush=True)
        try:
            module.main(argv)
        except TypeError:  # a suite whose main() takes no arguments
            module.main()


if __name__ == "__main__":
    main()
