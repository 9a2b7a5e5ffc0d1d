"""The SQLite schema: migration steps and the statements the store runs.

The schema version is ``PRAGMA user_version``: the number of migration steps
applied. A database is recognised as ours by ``PRAGMA application_id``. To
change the schema, APPEND a step to `MIGRATIONS` (never edit a released one):
a database opened by a newer asyncbatch is migrated on open, one opened by an
older asyncbatch is refused with a hint to upgrade.
"""

from __future__ import annotations

import functools

from ._common import JOB_COLUMNS

__all__ = [
    "APPLICATION_ID",
    "DLQ_COLUMNS",
    "DLQ_INSERT",
    "DLQ_REDEAD",
    "DLQ_RESOLVE_BY_ID",
    "DLQ_RESOLVE_BY_KEY",
    "JOB_COMPENSATE",
    "JOB_SUCCESS",
    "JOB_UPSERT",
    "MIGRATIONS",
    "SCHEMA_VERSION",
]

APPLICATION_ID = int.from_bytes(b"abat", "big")
"""Marks a SQLite file as an asyncbatch store (``PRAGMA application_id``)."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: runs, jobs and the dead-letter queue.
    (
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            job TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL,
            config TEXT NOT NULL DEFAULT '{}',
            counts TEXT NOT NULL DEFAULT '{}',
            report TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE jobs (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            idx INTEGER,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            duration REAL NOT NULL DEFAULT 0,
            result TEXT,
            has_result INTEGER NOT NULL DEFAULT 0,
            payload TEXT,
            payload_is_repr INTEGER NOT NULL DEFAULT 0,
            seq INTEGER NOT NULL,
            kind TEXT,
            error_type TEXT,
            message TEXT,
            compensation_error TEXT,
            updated_at REAL NOT NULL,
            PRIMARY KEY (run_id, key)
        )""",
        """CREATE TABLE dlq (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            payload TEXT,
            payload_is_repr INTEGER NOT NULL DEFAULT 0,
            kind TEXT,
            error_type TEXT,
            message TEXT,
            traceback TEXT,
            attempts TEXT NOT NULL DEFAULT '[]',
            redrive_count INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'dead',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX dlq_run_status ON dlq (run_id, status)",
        "CREATE INDEX dlq_run_key ON dlq (run_id, key)",
    ),
    # 2: run ownership: the lease of the one process running the run.
    (
        "ALTER TABLE runs ADD COLUMN owner TEXT",
        "ALTER TABLE runs ADD COLUMN owned_since REAL",
        "ALTER TABLE runs ADD COLUMN heartbeat_at REAL",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_cols = ", ".join(JOB_COLUMNS)
JOB_UPSERT = f"""
    INSERT INTO jobs ({_cols}) VALUES ({", ".join("?" * len(JOB_COLUMNS))})
    ON CONFLICT (run_id, key) DO UPDATE SET
        idx = coalesce(excluded.idx, jobs.idx), status = excluded.status,
        attempts = excluded.attempts, duration = excluded.duration,
        result = excluded.result, has_result = excluded.has_result,
        payload = excluded.payload, payload_is_repr = excluded.payload_is_repr,
        seq = excluded.seq, kind = excluded.kind, error_type = excluded.error_type,
        message = excluded.message, compensation_error = excluded.compensation_error,
        updated_at = excluded.updated_at
"""
"""A job finished (again): its row is replaced, except a redriven job keeps its input position."""

JOB_SUCCESS = """
    INSERT INTO jobs (run_id, key, idx, status, attempts, duration, result, has_result, seq,
                      updated_at)
    VALUES (?, ?, ?, 'succeeded', ?, ?, ?, ?, ?, ?)
    ON CONFLICT (run_id, key) DO UPDATE SET
        idx = coalesce(excluded.idx, jobs.idx), status = excluded.status,
        attempts = excluded.attempts, duration = excluded.duration,
        result = excluded.result, has_result = excluded.has_result,
        payload = NULL, payload_is_repr = 0, seq = excluded.seq, kind = NULL,
        error_type = NULL, message = NULL, compensation_error = NULL,
        updated_at = excluded.updated_at
"""
"""The commonest record, a plain success: `JOB_UPSERT` with its empty columns left out.

Binding parameters holds the GIL; 9 instead of 16 per row nearly doubles the
rows/s of a group commit (measured with plain sqlite3: 230k -> 430k rows/s).
"""

SUCCESS_ROWS = 256
"""Plain successes written by one multi-row `job_successes` statement."""


@functools.cache
def job_successes(rows: int) -> str:
    """`JOB_SUCCESS` for ``rows`` rows in ONE statement (its 9 parameters a row, in order).

    `executemany` releases and retakes the GIL around every row's step, so a
    group commit competed with the event loop row by row (the writer ran
    2.6x slower per row while the loop was busy); here that happens once per
    `SUCCESS_ROWS` rows. Plain ``?`` parameters: with numbered ones (to bind
    ``updated_at`` once) sqlite3 looks each name up in a list, which cost
    more than the repeated value. (One JSON document unpacked by
    ``json_each`` was measured too: SQLite 3.40 re-parses the row's JSON for
    every column, 40% more instructions than binding.)
    """
    row = "(?, ?, ?, 'succeeded', ?, ?, ?, ?, ?, ?)"
    head, _, tail = JOB_SUCCESS.partition(f"VALUES {row}")
    return f"{head}VALUES {', '.join([row] * rows)}{tail}"


JOB_COMPENSATE = f"""
    INSERT INTO jobs ({_cols}) VALUES ({", ".join("?" * len(JOB_COLUMNS))})
    ON CONFLICT (run_id, key) DO UPDATE SET
        status = excluded.status, compensation_error = excluded.compensation_error,
        updated_at = excluded.updated_at
"""
"""How a compensation went: the job keeps its completion order, result and payload."""

DLQ_COLUMNS = (
    "id, run_id, key, payload, payload_is_repr, kind, error_type, message, traceback, "
    "attempts, redrive_count, status, created_at"
)
DLQ_INSERT = """
    INSERT INTO dlq (run_id, key, payload, payload_is_repr, kind, error_type, message,
                     traceback, attempts, created_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# In an UPDATE every SET expression sees the OLD row: `status = 'dead'` below
# asks whether the entry was re-run by retry_dead= (not marked by redrive()).
DLQ_REDEAD = """
    UPDATE dlq SET
        redrive_count = redrive_count + (status = 'dead'), status = 'dead',
        attempts = ?, kind = ?, error_type = ?, message = ?, traceback = ?,
        payload_is_repr = CASE WHEN payload IS NULL THEN ? ELSE payload_is_repr END,
        payload = coalesce(payload, ?), updated_at = ?
    WHERE id = ?
"""
DLQ_RESOLVE_BY_ID = """
    UPDATE dlq SET redrive_count = redrive_count + (status = 'dead'), status = 'resolved',
        updated_at = ?
    WHERE id = ?
"""
DLQ_RESOLVE_BY_KEY = """
    UPDATE dlq SET redrive_count = redrive_count + (status = 'dead'), status = 'resolved',
        updated_at = ?
    WHERE run_id = ? AND key = ? AND status != 'resolved'
"""
