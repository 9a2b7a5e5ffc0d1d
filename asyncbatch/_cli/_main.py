"""The ``asyncbatch`` command line: run a job over a file, inspect runs and the DLQ, demo.

Exit status of ``run`` and ``dlq redrive``: 0 when every job succeeded (or
was skipped), 3 when the run finished but some jobs were dead-lettered, 4
when the batch aborted. ``demo`` exits 0 when it ran (its dead letters are
part of the show). Every command: 1 for an error (one ``error: ...`` line on
stderr, never a traceback), 2 for a command-line mistake, 130 when
interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import click
from click.core import ParameterSource
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from asyncbatch._errors import AsyncBatchError, BatchAborted, qualname
from asyncbatch._result import BatchResult, JobOutcome, JobStatus
from asyncbatch._run._batch import Batch, new_run_id

from ._dlq import dlq
from ._input import (
    EXIT_ABORTED,
    EXIT_DEAD,
    CLIError,
    InputError,
    Interrupted,
    JobInput,
    db_option,
    existing_db,
    load_job,
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
    when,
)
from ._telemetry import telemetry

__all__ = ["cli", "main"]


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _one_line(exc: BaseException) -> str | None:
    """The message for an error the user can fix, or None for a bug (keep the traceback)."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [e for e in _leaves(exc) if not isinstance(e, asyncio.CancelledError)]
        messages = [_one_line(e) for e in leaves]
        return messages[0] if messages and all(messages) else None
    if isinstance(exc, CLIError | AsyncBatchError):
        return str(exc)
    if isinstance(exc, OSError):
        if exc.strerror and exc.filename:
            return f"{exc.strerror}: {exc.filename}"
        return str(exc) or type(exc).__name__
    if _jobs_base_exception(exc):
        return (
            f"a job raised {qualname(type(exc))}: {exc} (a BaseException, not an Exception: "
            "asyncbatch does not classify or retry it, so the run stopped; "
            "finished jobs are checkpointed)"
        )
    return None


def _jobs_base_exception(exc: BaseException) -> bool:
    """A job's own ``BaseException`` subclass, which asyncbatch lets through unclassified."""
    return not isinstance(
        exc, Exception | SystemExit | GeneratorExit | KeyboardInterrupt | asyncio.CancelledError
    )


_STATUS_COLOURS = {"finished": "green", "aborted": "red", "failed": "red", "running": "yellow"}


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """A group whose every failure is ONE ``error: ...`` line on stderr."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort as exc:
            _fail("interrupted" if exc.__cause__ is not None else "aborted", 130)
        except click.ClickException as exc:
            hint = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            _fail(exc.format_message() + hint, exc.exit_code)
        except (KeyboardInterrupt, asyncio.CancelledError):
            _fail("interrupted; run again with the same --run-id to resume", 130)
        except BaseException as exc:
            message = _one_line(exc)
            if message is None:
                raise
            _fail(message, getattr(exc, "exit_code", 1))
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _report_from_dict(data: dict[str, Any]) -> Any:
    from asyncbatch._observe._report import ErrorReport

    return ErrorReport.from_dict(data)


# ----------------------------------------------------------------- commands


def _telemetry_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--otel`` and ``--prometheus-port``, shared by the commands that run batches."""
    f = click.option(
        "--prometheus-port",
        type=click.IntRange(1, 65535),
        default=None,
        metavar="PORT",
        help="Serve metrics for Prometheus on 127.0.0.1:PORT during the run (extra: prometheus).",
    )(f)
    return click.option(
        "--otel",
        type=click.Choice(["none", "console", "otlp"]),
        default="none",
        show_default=True,
        help="Export spans and metrics: console (stderr) or otlp (OTEL_EXPORTER_OTLP_*).",
    )(f)


@click.group(
    cls=_Group,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="asyncbatch", prog_name="asyncbatch")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Run batches of async jobs reliably; inspect runs and the dead-letter queue.

    Start with `asyncbatch demo`.
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


cli.add_command(dlq)  # list, show, export, redrive, purge: in _cli_dlq


@cli.command()
@click.option("--jobs", default=300, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1, 10_000))
@db_option
@click.option("--run-id", default=None, help="Name the run; an existing id resumes it.")
@click.option(
    "--redrive",
    "redrive_run",
    default=None,
    metavar="RUN_ID",
    help="Redrive this run's dead letters against the (now fixed) service.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the service's faults.")
@click.option("--quiet", is_flag=True, help="No progress bar and no live event lines.")
@_telemetry_options
def demo(
    jobs: int,
    concurrency: int,
    db: str,
    run_id: str | None,
    redrive_run: str | None,
    seed: int,
    quiet: bool,
    otel: str,
    prometheus_port: int | None,
) -> int:
    """Run a batch against a real, flaky local HTTP service and show what happened.

    --run-id of an earlier demo run resumes it with the --jobs, --seed and
    --concurrency it was started with. Exit status 0 when the demo ran: its
    dead letters are part of the show (`asyncbatch run` exits 3 for them).
    """
    from ._demo import SETTINGS, DemoOptions, run_demo

    ctx = click.get_current_context()
    given = frozenset(
        name for name in SETTINGS if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
    )
    run_id = run_id or new_run_id().replace("run-", "demo-", 1)
    options = DemoOptions(
        jobs=jobs,
        concurrency=concurrency,
        db=db,
        run_id=run_id,
        redrive=redrive_run,
        seed=seed,
        quiet=quiet,
        otel=otel,
        prometheus_port=prometheus_port,
        given=given,
    )
    try:
        code: int = run_async(run_demo(options, make_console()))
    except KeyboardInterrupt:
        raise Interrupted(redrive_run or run_id) from None
    return code


@cli.command()
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
@click.option("--quiet", is_flag=True, help="Only the summary line.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_telemetry_options
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
    quiet: bool,
    as_json: bool,
    otel: str,
    prometheus_port: int | None,
) -> int:
    """Run MODULE:FUNC over every item of --input, checkpointed to --db.

    Run it again with the same --run-id to resume: jobs that finished are
    skipped. Exit status 0 when no job of the run is dead-lettered, 3 when
    some are, 4 when the batch aborted.
    """
    if output is not None:
        refuse_overwriting_input(input_path, output)
    job = load_job(job_spec)
    source = JobInput(input_path, key_field)
    run_id = run_id or new_run_id()
    console = make_console()
    quiet = quiet or as_json
    progress = LiveProgress(
        console, total=source.count(), label=job_spec, enabled=not quiet, events=not quiet
    )

    def make_batch(telemetry_options: dict[str, Any]) -> Batch[Any, Any]:
        return Batch(
            progress.wrap(job),
            concurrency=concurrency,
            key=source.keyer(),
            run_id=run_id,
            store=store_url(db),
            retry_dead=retry_dead,
            force_resume=force_resume,
            timeout=timeout,
            on_event=progress.on_event,
            **telemetry_options,
        )

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
            async with batch.stream(source) as outcomes:
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
        bad_input = [e for e in _leaves(exc) if isinstance(e, InputError)]
        if bad_input:
            raise InputError(
                f"{bad_input[0]}; the jobs before it are checkpointed: fix the input and "
                f"resume with --run-id {run_id}"
            ) from None
        if any(_jobs_base_exception(e) for e in _leaves(exc)):
            raise CLIError(f"{_one_line(exc)}; resume with --run-id {run_id}") from None
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


@cli.command()
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


@cli.command()
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


def main() -> None:
    """The console script."""
    cli(prog_name="asyncbatch")
