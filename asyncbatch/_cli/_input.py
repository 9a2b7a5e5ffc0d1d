"""The CLI's inputs: job references, item files, the ``--db`` store; its errors and exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import importlib
import inspect
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from asyncbatch._errors import AsyncBatchError, qualname
from asyncbatch._result import JobOutcome
from asyncbatch._store import Store, open_store

__all__ = [
    "DEFAULT_DB",
    "EXIT_ABORTED",
    "EXIT_DEAD",
    "CLIError",
    "InputError",
    "Interrupted",
    "JobInput",
    "db_option",
    "existing_db",
    "jobs_base_exception",
    "leaves",
    "load_job",
    "one_line",
    "open_db",
    "outcome_json",
    "refuse_overwriting_input",
    "run_async",
    "store_url",
]

T = TypeVar("T")

EXIT_DEAD = 3
EXIT_ABORTED = 4
DEFAULT_DB = "./asyncbatch.db"


class CLIError(Exception):
    """A mistake the user can fix: printed as one ``error: ...`` line, exit 1."""

    exit_code = 1


class Interrupted(CLIError):
    """Ctrl-C during a run: it is checkpointed and resumable."""

    exit_code = 130

    def __init__(self, run_id: str) -> None:
        super().__init__(f"interrupted; resume with --run-id {run_id}")


class InputError(CLIError):
    """A line of the input file cannot be used (malformed, or no ``--key`` field)."""


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed, else on the default loop.

    SIGTERM is handled like Ctrl-C: the run stops feeding, cancels what is in
    flight, commits what finished and stays resumable.
    """
    loop_factory = None
    try:
        import uvloop
    except ImportError:
        pass  # not inside this block: every error of the run would carry it as context
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_terminable(main))


async def _terminable(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main``; SIGTERM cancels it and surfaces as KeyboardInterrupt (like Ctrl-C).

    The handler cancels the task itself rather than re-raising SIGINT: a
    process started in the background (``cmd &`` in a script) inherits an
    ignored SIGINT, and SIGTERM must still stop it cleanly there.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        return await main
    try:
        return await main
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def store_url(db: str) -> str:
    """``--db`` as a store URL: URLs pass through, paths become ``sqlite:///path``."""
    return db if "://" in db else f"sqlite:///{db}"


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--db``, shared by every command that reads or writes the checkpoint store.

    ``ASYNCBATCH_DB`` is its default when set, so a team on PostgreSQL sets
    it once instead of passing the URL to every command.
    """
    return click.option(
        "--db",
        default=DEFAULT_DB,
        show_default=True,
        envvar="ASYNCBATCH_DB",
        show_envvar=True,
        metavar="PATH|URL",
        help="The checkpoint store: a SQLite file, or a store URL such as "
        "postgresql://user@host:5432/db.",
    )(f)


def existing_db(db: str) -> str:
    """Read commands refuse to create a database that is not there."""
    if "://" not in db and not Path(db).is_file():
        raise CLIError(f"no database at {db} (run a batch first, or pass --db PATH|URL)")
    return db


@contextlib.asynccontextmanager
async def open_db(db: str) -> AsyncIterator[Store]:
    """The store behind ``--db``, open for the duration of the block."""
    async with open_store(store_url(db)) as store:
        yield store


class JobInput:
    """Items read lazily from a JSONL (or, by extension, CSV) file or stdin.

    Tracks the line being read so a malformed line or a missing ``--key``
    field is reported by file and line number.
    """

    def __init__(self, path: str, key_field: str | None) -> None:
        self.path = path
        self.key_field = key_field
        self.line = 0
        self.csv = path.lower().endswith(".csv")

    def count(self) -> int | None:
        """How many items the file holds (for the progress bar), or None for stdin."""
        if self.path == "-":
            return None
        with open(self.path, "rb") as f:
            if self.csv:
                return max(sum(1 for _ in csv.reader(line.decode() for line in f)) - 1, 0)
            return sum(1 for line in f if line.strip())

    def __iter__(self) -> Iterator[Any]:
        with contextlib.ExitStack() as stack:
            if self.path == "-":
                f = sys.stdin
            else:
                f = stack.enter_context(open(self.path, encoding="utf-8", newline=""))
            if self.csv:
                reader = csv.DictReader(f)
                for row in reader:
                    self.line = reader.line_num
                    yield row
                return
            for self.line, text in enumerate(f, 1):
                text = text.rstrip("\r\n")
                if not text.strip():
                    continue
                try:
                    yield json.loads(text)
                except json.JSONDecodeError as exc:
                    raise InputError(
                        f"{self.path}:{self.line}: malformed JSON ({exc.msg} at column {exc.colno})"
                    ) from None

    def keyer(self) -> Callable[[Any], str] | None:
        """The ``key=`` of the batch: the ``--key`` field, declared as such for resume checks."""
        if self.key_field is None:
            return None

        def key(item: Any) -> str:
            return self.key(item)

        key.__asyncbatch_key__ = f"field {self.key_field!r}"  # type: ignore[attr-defined]
        return key

    def key(self, item: Any) -> str:
        """The job key: the ``--key`` field of the item."""
        field = self.key_field
        if not isinstance(item, dict) or field not in item:
            what = "is not an object" if not isinstance(item, dict) else f"has no field {field!r}"
            raise InputError(f"{self.path}:{self.line}: the item {what} (--key {field})")
        return str(item[field])


def refuse_overwriting_input(input_path: str, output: str) -> None:
    """``--output`` must not be ``--input``: opening it for writing would erase the items.

    Compared as files (a symlink, a hard link or another spelling of the same
    path counts), before anything is opened for writing.
    """
    if input_path == "-" or output == "-":
        return
    try:
        same = os.path.samefile(input_path, output)
    except OSError:  # the output does not exist yet: compare where the paths lead
        same = os.path.realpath(input_path) == os.path.realpath(output)
    if same:
        raise CLIError(
            f"--output {output} is the --input file: writing results there would erase the "
            "items; choose another --output path"
        )


def load_job(spec: str) -> Callable[[Any], Any]:
    """Import ``MODULE:FUNC`` (the current directory first on ``sys.path``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"expected the job as MODULE:FUNC (e.g. jobs:fetch), got {spec!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise CLIError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise CLIError(f"{spec} is not callable (it is {type(obj).__name__})")
    call = getattr(obj, "__call__", None)  # noqa: B004 - an async __call__ counts too
    if not (inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(call)):
        raise CLIError(f"{spec} must be an async def job(item) -> result")
    return obj  # type: ignore[no-any-return]


def outcome_json(
    outcome: JobOutcome[Any], on_repr: Callable[[JobOutcome[Any], Any], None] | None = None
) -> str:
    """One ``--output`` line; a value JSON cannot hold is written as its repr (on_repr told)."""
    error = None if outcome.error is None else f"{type(outcome.error).__name__}: {outcome.error}"

    def fallback(value: Any) -> str:
        if on_repr is not None:
            on_repr(outcome, value)
        return repr(value)

    record = {
        "key": outcome.key,
        "status": outcome.status.value,
        "result": outcome.result,
        "error": error,
        "attempts": outcome.attempts,
    }
    return json.dumps(record, default=fallback)


def leaves(exc: BaseException) -> list[BaseException]:
    """Every exception inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def jobs_base_exception(exc: BaseException) -> bool:
    """A job's own ``BaseException`` subclass, which asyncbatch lets through unclassified."""
    return not isinstance(
        exc, Exception | SystemExit | GeneratorExit | KeyboardInterrupt | asyncio.CancelledError
    )


def one_line(exc: BaseException) -> str | None:
    """The message for an error the user can fix, or None for a bug (keep the traceback)."""
    if isinstance(exc, BaseExceptionGroup):
        found = [e for e in leaves(exc) if not isinstance(e, asyncio.CancelledError)]
        messages = [one_line(e) for e in found]
        return messages[0] if messages and all(messages) else None
    if isinstance(exc, CLIError | AsyncBatchError):
        return str(exc)
    if isinstance(exc, OSError):
        if exc.strerror and exc.filename:
            return f"{exc.strerror}: {exc.filename}"
        return str(exc) or type(exc).__name__
    if jobs_base_exception(exc):
        return (
            f"a job raised {qualname(type(exc))}: {exc} (a BaseException, not an Exception: "
            "asyncbatch does not classify or retry it, so the run stopped; "
            "finished jobs are checkpointed)"
        )
    return None
