"""The PostgreSQL store's SQL, from ``sql/postgres_schema.sql`` and ``sql/postgres_queries.sql``.

Every statement lives in those two files, where a reader sees them all at
once (procrastinate's and River's way). This module only splits them up:
the schema into numbered migration steps, the queries into a `Queries`
value whose fields are the statement names, so a misspelt or missing name
fails at import, not in the middle of a run. To add a statement, write it
under a ``-- name:`` line in ``postgres_queries.sql`` and add its field here.

No asyncpg here: ``open_store`` validates PostgreSQL URLs without importing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from importlib import resources
from typing import TypeVar

__all__ = ["MIGRATIONS", "QUERIES", "SCHEMA_VERSION", "Queries", "load_named", "quote_ident"]

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_STEP = re.compile(r"^-- migration: (\d+)\b.*$", re.MULTILINE)
Q = TypeVar("Q")


@dataclass(frozen=True, slots=True, kw_only=True)
class Queries:
    """The statements of ``postgres_queries.sql``, by name (see that file for each one's duty)."""

    schema_lock: str
    schema_state: str
    schema_version: str
    schema_create: str
    schema_bootstrap: str
    schema_version_add: str
    run_get: str
    run_get_for_update: str
    token_claim: str
    run_insert: str
    run_restart: str
    run_take: str
    run_heartbeat: str
    run_holder: str
    run_end: str
    run_touch: str
    run_exists: str
    runs_list: str
    runs_live_counts: str
    jobs_count: str
    jobs_finished: str
    jobs_lookup: str
    jobs_last_seq: str
    jobs_in_order: str
    commit_begin: str
    job_upsert: str
    job_success: str
    job_copy: str
    job_compensate: str
    dlq_dead: str
    dlq_resolve_by_id: str
    dlq_resolve_by_key: str
    commits_forget: str
    dlq_purge: str
    dlq_page: str
    dlq_get: str
    dlq_mark_redriven: str
    dlq_undead_redriven: str


def _read(name: str) -> str:
    return resources.files("asyncbatch._store").joinpath("sql", name).read_text(encoding="utf-8")


def _sections(text: str, marker: re.Pattern[str]) -> list[tuple[str, str]]:
    """``(label, body)`` for every marker line, the body running to the next marker."""
    found = list(marker.finditer(text))
    ends = [m.start() for m in found[1:]] + [len(text)]
    return [(m.group(1), text[m.end() : end].strip()) for m, end in zip(found, ends, strict=True)]


def _strip_trailing_comments(body: str) -> str:
    """A statement without the comment lines that introduce the NEXT section."""
    lines = body.splitlines()
    while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
        lines.pop()
    return "\n".join(lines)


def load_named(filename: str, into: type[Q]) -> Q:
    """The statements of ``sql/filename`` by their ``-- name:`` lines, as an ``into``
    (a dataclass whose fields are the names): every field exactly once."""
    return parse_named(_read(filename), into, filename)


def parse_named(text: str, into: type[Q], filename: str) -> Q:
    """`load_named` of ``text`` (named ``filename`` in its errors)."""
    sections = _sections(text, _NAME)
    names = [name for name, _ in sections]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"{filename} names {duplicates} more than once")
    parsed = {name: _strip_trailing_comments(body) for name, body in sections}
    expected = {f.name for f in fields(into)}  # type: ignore[arg-type]
    if set(parsed) != expected:
        raise RuntimeError(
            f"{filename} and {into.__name__} disagree: missing {sorted(expected - set(parsed))}, "
            f"unknown {sorted(set(parsed) - expected)}"
        )
    return into(**parsed)


def load_migrations(text: str) -> tuple[str, ...]:
    """Parse ``postgres_schema.sql`` into its steps; they must be numbered 1, 2, 3, ..."""
    steps = _sections(text, _STEP)
    numbers = [int(n) for n, _ in steps]
    if numbers != list(range(1, len(steps) + 1)):
        raise RuntimeError(f"postgres_schema.sql steps must be numbered 1..N, got {numbers}")
    return tuple(_strip_trailing_comments(body) for _, body in steps)


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


QUERIES = load_named("postgres_queries.sql", Queries)
MIGRATIONS = load_migrations(_read("postgres_schema.sql"))
SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this asyncbatch writes: the number of migration steps."""
