"""``asyncbatch worker``: join a shared run (or every open one of a job) from any machine."""

from __future__ import annotations

import click

from asyncbatch._errors import AsyncBatchError

from ._input import CLIError, load_job, run_async

__all__ = ["worker"]


@click.command()
@click.argument("job_spec", metavar="MODULE:FUNC")
@click.option(
    "--db",
    required=True,
    envvar="ASYNCBATCH_DB",
    show_envvar=True,
    metavar="URL",
    help="The PostgreSQL store of the shared run (postgresql://user@host:5432/db).",
)
@click.option("--run-id", default=None, help="The shared run to join (waited for up to 30 s).")
@click.option(
    "--all",
    "all_runs",
    is_flag=True,
    help="Work every running shared run of this job, one after another, until none has work.",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None,
    help="Attempts in flight in this worker (default: the run's concurrency).",
)  # fmt: skip
def worker(
    job_spec: str, db: str, run_id: str | None, all_runs: bool, concurrency: int | None
) -> None:
    """Work a shared run started with run_batch(..., store="postgresql://...", shared=True).

    The job is imported from MODULE:FUNC and must be the run's stored job; the
    retry policy, classifier, budget, timeouts and limits come from the run, so
    every worker applies the same policy. Chunks of a worker that dies are
    taken over by the others once its lease runs out.
    """
    if (run_id is None) == (not all_runs):
        raise CLIError("pass exactly one of --run-id RUN_ID or --all")
    if not db.startswith(("postgresql:", "postgres:")):
        raise CLIError(f"a worker needs a PostgreSQL store URL (postgresql://...), got {db!r}")
    job = load_job(job_spec)
    from asyncbatch._run._coordinator import work

    try:
        done = run_async(
            work(job, job_ref=job_spec, url=db, run_id=run_id, concurrency=concurrency)
        )
    except AsyncBatchError as exc:
        raise CLIError(str(exc)) from None
    if not done:
        click.echo(f"no running shared run of {job_spec} has work left")
    for rid, status, tally in done:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(tally.items()) if n) or "no jobs"
        click.echo(f"run {rid}: {status}; this worker finished {counts}")
