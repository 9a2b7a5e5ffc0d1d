"""The stores of the feature x store matrix, for the test modules that run on each.

``STORES`` names them; `store_url` gives a test a fresh store of one: a new
in-memory store, a SQLite file in the test's ``tmp_path``, or a PostgreSQL
schema of its own (the ``pg_url`` fixture of conftest.py, dropped after the
test; it skips locally, and fails in CI, when no server answers).

``RUN_PATHS`` adds ``postgresql-single``: PostgreSQL with ``shared=False``
as every run's default, so the suites of run behaviour (integrity, resume,
unstorable values) cover both paths a PostgreSQL run can take: shared (the
default) and single-process; and ``sqlite-writer``: SQLite with every group
committed by the writer process (a busy run's path), not only large ones, two
groups in flight.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

STORES = ["memory", "sqlite", "postgresql"]
RUN_PATHS = [*STORES, "postgresql-single", "sqlite-writer"]


def every_group_to_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send every SQLite group to the writer process, waiting for it to start
    (a store otherwise commits through its thread meanwhile)."""
    from asyncbatch._store import _sqlite, _sqlite_writer

    ready = _sqlite_writer.WriterProcess.ready

    def started(self: _sqlite_writer.WriterProcess) -> bool:
        deadline = time.monotonic() + 10
        while not ready(self):
            assert time.monotonic() < deadline, "the writer process did not start"
            time.sleep(0.001)
        return True

    monkeypatch.setattr(_sqlite, "WRITER_ROWS", 1)
    # A run's groups of two or more records go in two halves, the second sent while
    # the first commits: the order, the acknowledgements and failures of that path.
    monkeypatch.setattr(_sqlite.SQLiteStore, "sends_ahead", 1)
    monkeypatch.setattr(_sqlite_writer.WriterProcess, "ready", started)


def store_url(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> str:
    """The URL of a fresh store of kind ``name``."""
    if name == "memory":
        return "memory://"
    if name.startswith("sqlite"):
        if name == "sqlite-writer":
            every_group_to_the_writer(request.getfixturevalue("monkeypatch"))
        return f"sqlite:///{tmp_path / 'runs.db'}"
    if name == "postgresql-single":
        from asyncbatch._run import _options

        defaults = _options.build_options.__kwdefaults__
        assert defaults is not None
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setitem(defaults, "shared", False)
    url: str = request.getfixturevalue("pg_url")
    return url
