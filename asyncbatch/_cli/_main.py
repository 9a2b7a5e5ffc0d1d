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
import sys
from collections.abc import Sequence
from typing import Any

import click
from click.core import ParameterSource

from asyncbatch._run._batch import new_run_id

from ._dlq import dlq
from ._input import (
    Interrupted,
    db_option,
    one_line,
    run_async,
)
from ._live import (
    make_console,
)
from ._run import run
from ._runs import report, runs
from ._telemetry import telemetry_options
from ._ui import ui
from ._worker import worker

__all__ = ["cli", "main"]


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
            message = one_line(exc)
            if message is None:
                raise
            _fail(message, getattr(exc, "exit_code", 1))
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


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
@telemetry_options
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


cli.add_command(run)
cli.add_command(runs)
cli.add_command(report)
cli.add_command(ui)  # the web dashboard: _cli/_ui.py, asyncbatch/_ui/
cli.add_command(worker)  # shared runs: in _worker


def main() -> None:
    """The console script."""
    cli(prog_name="asyncbatch")
