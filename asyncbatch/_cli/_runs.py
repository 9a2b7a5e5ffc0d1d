"""``asyncbatch runs`` and ``asyncbatch report``: what the store says about its runs."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ._input import (
    db_option,
    existing_db,
    open_db,
    run_async,
)
from ._live import (
    counts_line,
    make_console,
    render_report,
    when,
)

__all__ = ["report", "runs"]

_STATUS_COLOURS = {"finished": "green", "aborted": "red", "failed": "red", "running": "yellow"}



def _report_from_dict(data: dict[str, Any]) -> Any:
    from asyncbatch._observe._report import ErrorReport

    return ErrorReport.from_dict(data)


# ----------------------------------------------------------------- commands


@click.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def runs(db: str, as_json: bool) -> None:
    """List the runs in the database, newest first."""

    async def go() -> list[Any]:
        async with open_db(db) as store:
            return await store.list_runs()

    existing_db(db)
    found = run_async(go())
    if as_json:
        click.echo(json.dumps([_run_dict(r) for r in found], indent=2, default=repr))
        return
    console = make_console()
    if not found:
        console.print(f"no runs in {escape(db)}")
        return
    table = Table(title=f"runs in {escape(db)}")
    # The store keeps the counts of the whole run, over every invocation.
    numbers = ["succeeded", "dead", "other"]
    for name in ["run", "status", "job", "started", "updated", *numbers]:
        numeric = name in numbers
        table.add_column(
            name, justify="right" if numeric else "left", no_wrap=True, overflow="ellipsis"
        )
    for r in found:
        c = r.counts
        ok, dead = c.get("succeeded", 0), c.get("dead_lettered", 0)
        other = sum(c.values()) - ok - dead
        colour = _STATUS_COLOURS.get(r.status, "")
        table.add_row(
            escape(r.run_id),
            f"[{colour}]{r.status}[/]" if colour else r.status,
            escape(r.job or "-"),
            when(r.created_at),
            when(r.updated_at),
            str(ok),
            str(dead),
            str(other),
        )
    console.print(table)


def _run_dict(r: Any) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "job": r.job,
        "status": r.status,
        "counts": r.counts,
        "config": r.config,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }


@click.command()
@click.argument("run_id")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report(run_id: str, db: str, as_json: bool) -> None:
    """Show the error report of RUN_ID."""

    async def go() -> tuple[Any, dict[str, int]]:
        async with open_db(db) as store:
            return await store.get_run(run_id), await store.count_jobs(run_id)

    existing_db(db)
    info, overall = run_async(go())
    if as_json:
        doc = {**_run_dict(info), "overall": overall, "report": info.report}
        click.echo(json.dumps(doc, indent=2, default=repr))
        return
    console = make_console()
    line = (
        f"run [bold]{escape(info.run_id)}[/] ({info.status}, job {escape(info.job or '-')}): "
        f"{counts_line(overall)}"
    )
    console.print(line)
    if info.report:
        render_report(console, _report_from_dict(info.report))
    else:
        console.print("no report stored yet (the run has not ended)")


