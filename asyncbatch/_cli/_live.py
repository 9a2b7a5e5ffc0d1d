"""What the CLI shows: consoles, the live progress display, reports, counts."""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from asyncbatch._context import current_job
from asyncbatch._observe._events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    Event,
    JobsWaiting,
    RetryScheduled,
)
from asyncbatch._observe._report import ErrorReport
from asyncbatch._result import JobOutcome, JobStatus

__all__ = ["LiveProgress", "counts_line", "make_console", "render_report", "short", "when"]


def make_console(*, stderr: bool = False) -> Console:
    """A console for CLI output (stdout, or stderr)."""
    # soft_wrap: long lines (URLs, commands) stay whole when copied; tables still fit the width.
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped into a file or a CI log: 80 columns would fold every table cell.
        console.width = 140
    return console


def when(ts: float) -> str:
    """Epoch seconds as local ``YYYY-mm-dd HH:MM:SS`` (``-`` for 0)."""
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def render_report(console: Console, report: ErrorReport) -> None:
    """Print an `ErrorReport` with its rich rendering."""
    console.print(report.render())


def counts_line(counts: dict[str, int]) -> str:
    """``17 succeeded, 3 dead-lettered``: the non-zero counts, in status order."""
    order = [s.value for s in JobStatus]
    parts = [f"{counts[s]} {s.replace('_', '-')}" for s in order if counts.get(s)]
    return ", ".join(parts) or "no jobs"


def short(text: str, n: int) -> str:
    """``text`` on one line, cut to ``n`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


class LiveProgress:
    """A rich progress bar with live counts, fed by outcomes and events.

    Counts: ``done`` (succeeded or skipped), ``retrying`` (failed at least
    once, not finished), ``parked`` (retrying and not running right now:
    waiting out a backoff or an open circuit), ``dead`` (dead-lettered or
    failed), and per dependency the jobs parked on its circuit (``3 waiting
    on 'api' (open)``, from `JobsWaiting`). Breaker state changes are printed
    as lines. The bar is off when the output is not a terminal.
    """

    def __init__(
        self, console: Console, *, total: int | None, label: str, enabled: bool, events: bool
    ) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.events = events
        self.done = 0
        self.dead = 0
        self.retries = 0
        self.breaker_trips = 0
        self._retrying: set[str] = set()
        self._running: set[str] = set()
        self._breakers: dict[str, str] = {}
        self._waiting: dict[str, int] = {}
        self.snapshot: Callable[[], Any] | None = None
        """The running batch's ``progress`` (its concurrency and pause show), once it runs."""
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not self.enabled,
        )
        self._task = self._progress.add_task(label, total=total)
        # The counts go on a line of their own under the bar, so both fit 80 columns.
        self._live = Live(
            Group(self._progress, _Counts(self)), console=console, refresh_per_second=8
        )

    def __enter__(self) -> LiveProgress:
        if self.enabled:
            self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.enabled:
            self._live.stop()

    def wrap(self, job: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """The job, noting when each attempt runs (for the ``parked`` count)."""

        @functools.wraps(job)
        async def tracked(item: Any) -> Any:
            key = current_job().key
            self._running.add(key)
            try:
                return await job(item)
            finally:
                self._running.discard(key)

        return tracked

    def on_event(self, event: Event) -> None:
        """An ``on_event`` hook."""
        if isinstance(event, RetryScheduled):
            self.retries += 1
            self._retrying.add(event.key)
        elif isinstance(event, JobsWaiting):
            self._waiting[event.dependency] = event.waiting
        elif isinstance(event, BreakerOpened | BreakerHalfOpen | BreakerClosed):
            state = {"BreakerOpened": "open", "BreakerHalfOpen": "half-open"}.get(
                event.name, "closed"
            )
            self._breakers[event.dependency] = state
            if isinstance(event, BreakerOpened):
                self.breaker_trips += 1
            if self.events:
                colour = {"open": "red", "half-open": "yellow"}.get(state, "green")
                detail = ""
                if isinstance(event, BreakerOpened) and event.failures:
                    error = (event.error_type or "error").rsplit(".", 1)[-1]
                    detail = f" after {event.failures} failures ({error})"
                self.console.print(
                    f"  [{colour}]breaker {event.dependency!r} {state}[/]{escape(detail)}"
                )

    def on_outcome(self, outcome: JobOutcome[Any]) -> None:
        """Count one finished job."""
        self._retrying.discard(outcome.key)
        if outcome.status in (JobStatus.SUCCEEDED, JobStatus.SKIPPED, JobStatus.COMPENSATED):
            self.done += 1
        elif outcome.status in (JobStatus.DEAD_LETTERED, JobStatus.FAILED):
            self.dead += 1
        self._progress.advance(self._task)

    @property
    def parked(self) -> int:
        """Jobs retrying that are not in an attempt right now."""
        return len(self._retrying - self._running)

    def stats(self) -> str:
        """The live counts as one line of rich markup."""
        parts = [
            f"  [green]✓ {self.done} done[/]",
            f"[yellow]↻ {len(self._retrying)} retrying[/] ({self.parked} parked)",
            f"[red]✗ {self.dead} dead[/]",
        ]
        for name, state in sorted(self._breakers.items()):
            colour = {"open": "red", "half-open": "yellow"}.get(state, "green")
            parts.append(f"{escape(name)}: [{colour}]{state}[/]")
        for name, waiting in sorted(self._waiting.items()):
            if waiting:
                state = self._breakers.get(name, "open")
                parts.append(f"[yellow]{waiting} waiting on {escape(repr(name))} ({state})[/]")
        if self.snapshot is not None:
            try:
                now = self.snapshot()
            except Exception:  # the run is over: nothing live to show
                now = None
            if now is not None:
                parts.append(f"concurrency {now.concurrency}")
                if now.paused:
                    parts.append("[bold yellow]paused[/] (SIGUSR2 resumes)")
        return "  ".join(parts)


class _Counts:
    """The live counts line, rendered afresh at every refresh of the display."""

    def __init__(self, progress: LiveProgress) -> None:
        self._progress = progress

    def __rich__(self) -> Text:
        return Text.from_markup(self._progress.stats())
