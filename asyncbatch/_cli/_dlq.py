"""``asyncbatch dlq``: list, show, export, redrive and purge dead-lettered jobs.

The group is registered on the main ``cli`` group in ``_cli``; it exits 3
(like ``run``) when a redrive leaves jobs dead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from asyncbatch._errors import ErrorKind
from asyncbatch._result import BatchResult, JobStatus
from asyncbatch._run._batch import redrive

from ._input import (
    EXIT_DEAD,
    CLIError,
    db_option,
    existing_db,
    load_job,
    open_db,
    run_async,
)
from ._live import make_console, short, when

__all__ = ["dlq"]

_KINDS = [k.value for k in ErrorKind]
_DLQ_STATUSES = ["dead", "redriven", "resolved", "all"]


@click.group(cls=click.Group)
def dlq() -> None:
    """Inspect, export, redrive and purge dead-lettered jobs."""


def _filters(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--run-id", default=None, help="Only this run.")(f)
    f = click.option("--kind", type=click.Choice(_KINDS), default=None, help="Only this kind.")(f)
    f = click.option("--error-type", default=None, help="Only this exception type.")(f)
    f = click.option(
        "--status",
        type=click.Choice(_DLQ_STATUSES),
        default="dead",
        show_default=True,
        help="Entry status (all: any).",
    )(f)
    return f


async def _known_run(store: Any, run_id: str | None) -> None:
    """``--run-id`` must name a run, as for ``report``: an unknown one is an error (exit 1)."""
    if run_id is not None:
        await store.get_run(run_id)  # UnknownRun: one error line


def _filter_kwargs(
    run_id: str | None, kind: str | None, error_type: str | None, status: str
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "kind": kind,
        "error_type": error_type,
        "status": None if status == "all" else status,
    }


@dlq.command("list")
@_filters
@click.option("--limit", type=click.IntRange(min=1), default=None)
@db_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dlq_list(
    run_id: str | None,
    kind: str | None,
    error_type: str | None,
    status: str,
    limit: int | None,
    db: str,
    as_json: bool,
) -> None:
    """List dead letters (default: status dead)."""

    async def go() -> list[Any]:
        async with open_db(db) as store:
            await _known_run(store, run_id)
            return await store.dlq.list(
                **_filter_kwargs(run_id, kind, error_type, status), limit=limit
            )

    existing_db(db)
    entries = run_async(go())
    if as_json:
        for e in entries:
            click.echo(json.dumps(e.to_dict(), default=repr))
        return
    console = make_console()
    if not entries:
        console.print("no dead letters match")
        return
    several_runs = len({e.run_id for e in entries}) > 1
    columns = ["id", "run", "key", "kind", "error", "message", "attempts", "redrives", "status"]
    rows = [
        [
            str(e.id),
            e.run_id,
            e.key,
            e.kind.value,
            e.error_type.rsplit(".", 1)[-1],
            " ".join(e.message.split()),
            str(len(e.attempts)),
            str(e.redrive_count),
            e.status,
        ]
        for e in entries
    ]
    title = f"{len(entries)} dead letter(s)"
    if not several_runs:
        columns.remove("run")
        for row in rows:
            del row[1]
        title += f" of run {entries[0].run_id}"
    # Only the message shrinks: ids and keys are what you copy into the next command.
    m = columns.index("message")
    widths = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(columns)]
    room = console.width - (sum(widths) - widths[m]) - (3 * len(columns) + 1)
    widths[m] = max(16, min(widths[m], room, 72))
    table = Table(title=escape(title))
    for name, width in zip(columns, widths, strict=True):
        table.add_column(
            name,
            no_wrap=True,
            min_width=width,
            max_width=width,
            justify="right" if name in ("id", "attempts", "redrives") else "left",
        )
    for row in rows:
        row[m] = short(row[m], widths[m])
        table.add_row(*map(escape, row))
    console.print(table)


@dlq.command("show")
@click.argument("entry_id", metavar="ID", type=int)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dlq_show(entry_id: int, db: str, as_json: bool) -> None:
    """Show one dead letter: payload, error, every attempt, traceback."""

    async def go() -> Any:
        async with open_db(db) as store:
            try:
                return await store.dlq.get(entry_id)
            except KeyError:
                raise CLIError(f"no dead letter with id {entry_id} in {db}") from None

    existing_db(db)
    e = run_async(go())
    if as_json:
        click.echo(json.dumps(e.to_dict(), indent=2, default=repr))
        return
    console = make_console()
    console.print(f"[bold]dead letter {e.id}[/]  run {escape(e.run_id)}  key {escape(e.key)}")
    console.print(f"status {e.status}, redriven {e.redrive_count}x, kind {e.kind.value}")
    console.print(f"error  {escape(e.error_type)}: {escape(e.message)}")
    payload = json.dumps(e.payload, default=repr)
    note = " (repr only: cannot be redriven)" if e.payload_is_repr else ""
    console.print(f"payload {escape(short(payload, 500))}{note}")
    table = Table(title="attempts")
    for name in ("#", "started", "took", "kind", "error", "message"):
        table.add_column(name, overflow="fold", no_wrap=name != "message")
    for a in e.attempts:
        table.add_row(
            str(a.number),
            when(a.started_at),
            f"{a.duration * 1000:.1f} ms",
            a.kind.value,
            escape(a.error_type.rsplit(".", 1)[-1]),
            escape(short(a.message, 80)),
        )
    console.print(table)
    if e.traceback:
        console.print("[dim]" + escape(e.traceback.rstrip()) + "[/]")


@dlq.command("export")
@click.argument("path")
@_filters
@db_option
def dlq_export(
    path: str, run_id: str | None, kind: str | None, error_type: str | None, status: str, db: str
) -> None:
    """Write matching dead letters to PATH as JSONL."""

    async def go() -> int:
        async with open_db(db) as store:
            await _known_run(store, run_id)
            return await store.dlq.export(path, **_filter_kwargs(run_id, kind, error_type, status))

    existing_db(db)
    n = run_async(go())
    click.echo(f"exported {n} dead letter(s) to {path}")


@dlq.command("redrive")
@click.argument("job_spec", metavar="MODULE:FUNC")
@click.option("--run-id", required=True, help="The run whose dead letters to run again.")
@click.option("--id", "ids", type=int, multiple=True, help="Only this entry (repeatable).")
@click.option("--concurrency", default=100, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--batch-size",
    default=None,
    type=click.IntRange(min=1),
    help="Items per call (default: the run's own --batch-size, if it had one).",
)
@db_option
def dlq_redrive(
    job_spec: str,
    run_id: str,
    ids: tuple[int, ...],
    concurrency: int,
    batch_size: int | None,
    db: str,
) -> int:
    """Run the dead letters of --run-id again with MODULE:FUNC."""
    existing_db(db)
    job = load_job(job_spec)
    chunked: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}

    async def go() -> BatchResult[Any]:
        async with open_db(db) as store:
            return await redrive(
                job,
                store=store,
                run_id=run_id,
                ids=list(ids) or None,
                concurrency=concurrency,
                **chunked,
            )

    result = run_async(go())
    counts = result.counts
    resolved = counts[JobStatus.SUCCEEDED]
    dead = counts[JobStatus.DEAD_LETTERED]
    click.echo(
        f"redrove {len(result.outcomes)} dead letter(s) of run {run_id}: "
        f"{resolved} resolved, {dead} dead again"
    )
    return 0 if dead == 0 else EXIT_DEAD


class _PromptInterrupted(CLIError):
    exit_code = 130


def _confirm(question: str) -> bool:
    """Ask y/N on stderr. "n" (or anything but yes) is a plain no, not an interrupt.

    click.confirm turns both end of input and Ctrl-C into the same Abort;
    here end of input is "no answer" (exit 1) and Ctrl-C an interrupt (130).
    """
    click.echo(f"{question} [y/N]: ", nl=False, err=True)
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        raise _PromptInterrupted("interrupted at the prompt: nothing purged") from None
    if not answer:
        click.echo(err=True)  # end the prompt's line: the error gets its own
        raise CLIError("no answer to the confirmation: nothing purged (pass --yes to skip it)")
    return answer.strip().lower() in ("y", "yes")


@dlq.command("purge")
@_filters
@db_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(
    run_id: str | None, kind: str | None, error_type: str | None, status: str, db: str, yes: bool
) -> None:
    """Delete matching dead letters for good.

    Asks first unless --yes; answering no purges nothing and exits 0. Without
    a terminal to answer on (no input), it purges nothing and exits 1.
    """
    existing_db(db)
    filters = _filter_kwargs(run_id, kind, error_type, status)

    async def check() -> None:
        async with open_db(db) as store:
            await _known_run(store, run_id)

    run_async(check())
    if not yes:
        what = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None) or "everything"
        if not _confirm(f"delete dead letters matching {what}?"):
            click.echo("nothing purged")
            return

    async def go() -> int:
        async with open_db(db) as store:
            return await store.dlq.purge(**filters)

    n = run_async(go())
    click.echo(f"purged {n} dead letter(s)")
