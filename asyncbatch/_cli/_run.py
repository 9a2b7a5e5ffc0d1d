"""``asyncbatch run``: a job over every item of a file, checkpointed, streamed, resumable."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any, TextIO

import click
from rich.console import Console
from rich.markup import escape

from asyncbatch._errors import AsyncBatchError, BatchAborted
from asyncbatch._result import BatchResult, JobOutcome, JobStatus
from asyncbatch._run._batch import Batch, new_run_id

from ._input import (
    EXIT_ABORTED,
    EXIT_DEAD,
    CLIError,
    InputError,
    Interrupted,
    JobInput,
    db_option,
    jobs_base_exception,
    leaves,
    load_job,
    one_line,
    open_db,
    outcome_json,
    refuse_overwriting_input,
    run_async,
    store_url,
)
from ._live import (
    LiveProgress,
    counts_line,
    make_console,
    render_report,
)
from ._telemetry import telemetry, telemetry_options

__all__ = ["run"]


@click.command()
@click.argument("job_spec", metavar="MODULE:FUNC")
@click.option(
    "--input",
    "input_path",
    required=True,
    metavar="PATH",
    type=click.Path(dir_okay=False, allow_dash=True, exists=True),
    help="Items, one JSON value per line (.jsonl) or CSV rows (.csv); - for stdin.",
)
@click.option(
    "--key",
    "key_field",
    default=None,
    metavar="FIELD",
    help="Item field that names each job (default: its position).",
)
@click.option("--concurrency", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--run-id", default=None, help="Name the run; the same id resumes it.")
@db_option
@click.option(
    "--output",
    default=None,
    metavar="PATH",
    help="Write one JSON line per job: key, status, result, error.",
)
@click.option("--retry-dead", is_flag=True, help="On resume, run dead-lettered jobs again too.")
@click.option(
    "--force-resume",
    is_flag=True,
    help="Resume even though --key or the job differ from the stored run's.",
)
@click.option(
    "--timeout",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds per attempt.",
)
@click.option(
    "--batch-size",
    default=None,
    type=click.IntRange(min=1),
    help="Items per call: the job takes a list and returns one result per item.",
)
@click.option(
    "--batch-wait",
    default=0.0,
    type=click.FloatRange(min=0),
    help="Seconds a chunk waits for more items before it goes out short (needs --batch-size).",
)
@click.option("--quiet", is_flag=True, help="Only the summary line.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@telemetry_options
def run(
    job_spec: str,
    input_path: str,
    key_field: str | None,
    concurrency: int,
    run_id: str | None,
    db: str,
    output: str | None,
    retry_dead: bool,
    force_resume: bool,
    timeout: float | None,
    batch_size: int | None,
    batch_wait: float,
    quiet: bool,
    as_json: bool,
    otel: str,
    prometheus_port: int | None,
) -> int:
    """Run MODULE:FUNC over every item of --input, checkpointed to --db.

    Run it again with the same --run-id to resume: jobs that finished are
    skipped. Exit status 0 when no job of the run is dead-lettered, 3 when
    some are, 4 when the batch aborted. While it runs, SIGUSR1 pauses it
    (attempts in flight finish, none starts) and SIGUSR2 resumes it:
    ``kill -USR1 PID``.
    """
    if output is not None:
        refuse_overwriting_input(input_path, output)
    job = load_job(job_spec)
    source = JobInput(input_path, key_field)
    run_id = run_id or new_run_id()
    console = make_console()
    quiet = quiet or as_json
    total = source.count()
    progress = LiveProgress(
        console, total=total, label=job_spec, enabled=not quiet, events=not quiet
    )

    def make_batch(telemetry_options: dict[str, Any]) -> Batch[Any, Any]:
        batch: Batch[Any, Any] = Batch(
            progress.wrap(job),
            concurrency=concurrency,
            key=source.keyer(),
            run_id=run_id,
            store=store_url(db),
            retry_dead=retry_dead,
            force_resume=force_resume,
            timeout=timeout,
            batch_size=batch_size,
            batch_wait=batch_wait,
            # One process: the job is wrapped for the live view, which no worker
            # could import, and the single-process path is the faster one.
            shared=False,
            on_event=progress.on_event,
            **telemetry_options,
        )
        if total is not None:  # the input's size, stored for `asyncbatch ui`'s progress bar
            batch.options = dataclasses.replace(batch.options, run_config={"total": total})
        return batch

    warned: list[bool] = []

    def on_repr(outcome: JobOutcome[Any], value: Any) -> None:
        if not warned:
            warned.append(True)
            click.echo(
                f"warning: the result of job {outcome.key!r} is a {type(value).__name__}, which "
                f"JSON cannot hold: --output gets its repr (and so does any other such result)",
                err=True,
            )

    async def go(out: TextIO | None) -> BatchResult[Any]:
        with progress, telemetry(otel, prometheus_port, service="asyncbatch") as options:
            batch = make_batch(options)
            async with batch.stream(source) as outcomes, _steered_by_signals(batch, progress):
                async for outcome in outcomes:
                    progress.on_outcome(outcome)
                    if out is not None:
                        # Small buffered writes to a local file: not worth a thread.
                        out.write(outcome_json(outcome, on_repr) + "\n")
        assert outcomes.result is not None
        return outcomes.result

    aborted: BatchAborted | None = None
    try:
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(output, "w", encoding="utf-8")) if output else None
            result = run_async(go(out))
    except KeyboardInterrupt:
        raise Interrupted(run_id) from None
    except BatchAborted as exc:
        aborted, result = exc, exc.result
    except BaseException as exc:
        bad_input = [e for e in leaves(exc) if isinstance(e, InputError)]
        if bad_input:
            raise InputError(
                f"{bad_input[0]}; the jobs before it are checkpointed: fix the input and "
                f"resume with --run-id {run_id}"
            ) from None
        if any(jobs_base_exception(e) for e in leaves(exc)):
            raise CLIError(f"{one_line(exc)}; resume with --run-id {run_id}") from None
        raise
    skipped = result.counts[JobStatus.SKIPPED]
    overall = run_async(_count_jobs_in(db, run_id)) if skipped else None
    _summarise(console, result, db, overall, quiet=quiet, as_json=as_json, aborted=aborted)
    if output and not quiet:
        console.print(f"results: {escape(output)}")
    if aborted is not None:
        return EXIT_ABORTED
    counts = overall or {s.value: n for s, n in result.counts.items()}
    bad = (JobStatus.DEAD_LETTERED, JobStatus.FAILED, JobStatus.CANCELLED)
    return EXIT_DEAD if any(counts.get(s.value) for s in bad) else 0


@contextlib.asynccontextmanager
async def _steered_by_signals(
    batch: Batch[Any, Any], progress: LiveProgress
) -> AsyncIterator[None]:
    """SIGUSR1 pauses the running batch, SIGUSR2 resumes it (where the platform has them)."""
    loop = asyncio.get_running_loop()
    progress.snapshot = batch.progress
    wanted = [
        (getattr(signal, name), fn, word)
        for name, fn, word in (
            ("SIGUSR1", batch.pause, "paused"),
            ("SIGUSR2", batch.resume, "resumed"),
        )
        if hasattr(signal, name)
    ]
    installed = []

    def handle(fn: Callable[[], None], word: str) -> None:
        with contextlib.suppress(AsyncBatchError):  # the run just ended
            fn()
            progress.console.print(f"  [yellow]{word}[/]", highlight=False)

    try:
        for signum, fn, word in wanted:
            try:
                loop.add_signal_handler(signum, handle, fn, word)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not on this loop/thread: the run works, only unsteerable
            installed.append(signum)
        yield
    finally:
        progress.snapshot = None
        for signum in installed:
            loop.remove_signal_handler(signum)


async def _count_jobs_in(db: str, run_id: str) -> dict[str, int]:
    """Jobs per status over every invocation of the run (a resume skips most of them)."""
    async with open_db(db) as store:
        return await store.count_jobs(run_id)


def _summarise(
    console: Console,
    result: BatchResult[Any],
    db: str,
    overall: dict[str, int] | None,
    *,
    quiet: bool,
    as_json: bool,
    aborted: BatchAborted | None = None,
) -> None:
    counts = {s.value: n for s, n in result.counts.items()}
    if as_json:
        doc = {
            "run_id": result.run_id,
            "ok": result.ok and aborted is None,
            "aborted": None if aborted is None else str(aborted),
            "duration": round(result.duration, 3),
            "counts": counts,
            "overall": overall,
            "report": result.report.to_dict() if result.report is not None else None,
        }
        click.echo(json.dumps(doc, indent=2, default=repr))
        return
    verb = "aborted" if aborted is not None else "finished"
    line = (
        f"run [bold]{escape(result.run_id)}[/] {verb} in {result.duration:.1f} s: "
        f"{counts_line(counts)}"
    )
    if overall is not None:
        line += f" (the whole run: {counts_line(overall)})"
    console.print(line)
    if aborted is not None:
        console.print(
            f"[red]aborted:[/] {escape(str(aborted.cause))}; fix the cause and resume with "
            f"--run-id {escape(result.run_id)}"
        )
    if quiet:
        return
    if not result.ok and result.report is not None:
        render_report(console, result.report)
    dead = (overall or counts).get(JobStatus.DEAD_LETTERED.value, 0)
    if dead:
        console.print(
            f"{dead} dead letter(s): asyncbatch dlq list --run-id {escape(result.run_id)} "
            f"--db {escape(db)}"
        )
