"""The public surface: __all__ matches what the package exports, with docstrings."""

from __future__ import annotations

import inspect

import pytest

import asyncbatch as ab


def test_all_matches_the_public_names() -> None:
    public = {n for n in dir(ab) if not n.startswith("_") and not inspect.ismodule(getattr(ab, n))}
    assert public == set(ab.__all__) - {"__version__"}


@pytest.mark.parametrize("name", sorted(set(ab.__all__) - {"__version__"}))
def test_every_public_name_has_a_docstring(name: str) -> None:
    assert inspect.getdoc(getattr(ab, name)), f"ab.{name} has no docstring"


def test_contract_names_exist() -> None:
    for name in [
        "run_batch",
        "Batch",
        "current_job",
        "guard",
        "TransientError",
        "RecoverableError",
        "PermanentError",
        "FatalError",
        "ErrorKind",
        "Classifier",
        "Rule",
        "Retry",
        "Backoff",
        "RetryPolicy",
        "ErrorBudget",
        "Breaker",
        "CircuitOpen",
        "BatchResult",
        "JobOutcome",
        "JobStatus",
        "ErrorReport",
        "BatchAborted",
        "open_store",
        "DeadLetter",
        "redrive",
        "Event",
        "RetryScheduled",
        "JobDeadLettered",
        "BreakerOpened",
        "BreakerHalfOpen",
        "BreakerClosed",
        "BudgetExhausted",
        "RunAborted",
        "RunFinished",
        "Rate",
    ]:
        assert hasattr(ab, name), name


def test_import_loads_no_store_driver_or_breaker_until_used() -> None:
    import subprocess
    import sys

    code = (
        "import sys, asyncbatch as ab\n"
        "assert 'aiosqlite' not in sys.modules and 'asyncpg' not in sys.modules\n"
        "assert 'aiobreaker' not in sys.modules\n"
        "assert 'SQLiteStore' in dir(ab)\n"
        "from asyncbatch._store._sqlite import SQLiteStore\n"
        "assert ab.SQLiteStore is SQLiteStore and 'aiosqlite' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_leaves_out_what_only_some_runs_use() -> None:
    # `import asyncbatch` <= 150 ms (benchmarks/bench_import.py): pickle (the pickle
    # codec), tempfile (DLQ exports), urllib (store URLs with options), the failure
    # fingerprint's patterns and the shared-run machinery load when first used.
    import subprocess
    import sys

    lazy = ["pickle", "tempfile", "urllib.parse", "secrets", "asyncbatch._observe._fingerprint",
            "asyncbatch._run._shared", "asyncbatch._run._coordinator"]  # fmt: skip
    code = (
        "import sys, asyncbatch as ab\n"
        f"loaded = [m for m in {lazy!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "import asyncio\n"
        "async def fail(x):\n"
        "    raise ValueError(f'bad item {x}')\n"
        "r = asyncio.run(ab.run_batch(fail, range(3), result_codec='pickle'))\n"
        "assert r.report.groups[0].count == 3, r.report\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
