"""Live control of a running batch: pause, resume, resize, and `Progress` snapshots.

A worker IS a concurrency slot (see `_workers`), so the controls move
workers, never jobs:

- **pause**: workers finish the attempt they are in and then hold, taking
  no new entry until **resume**. Jobs that come due meanwhile (retries,
  jobs released by a circuit) wait in the ready queue; nothing is lost or
  cancelled; the run waits for resume even if its input turns out empty.
- **resize(n)**: ``n`` workers take entries from now on. Growing revives
  held spare workers first and starts new ones in the run's task group for
  the rest; shrinking turns the surplus into spares as each finishes its
  current attempt (an attempt in flight is never cut short).

How it stays off the hot path: the ready queue's ``next()`` already checks
one flag (``_stopped``) per entry; the controls raise that same flag while
any worker must hold, so ``next()`` hands out nothing and the worker goes to
``wait()``, which sends it here (`Control.hold`) instead of ending it. A run
never paused or resized pays nothing new per job.

`Progress` is a frozen snapshot computed on demand from counters the run
keeps anyway (jobs alive, ready, parked; acknowledged counts).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asyncbatch._errors import ConfigError
from asyncbatch._result import JobStatus

if TYPE_CHECKING:
    from ._outcomes import Outcomes
    from ._ready import ReadyQueue

__all__ = ["RATE_WINDOW", "Control", "Progress"]

RATE_WINDOW = 10.0
"""Seconds of recent completions `Progress.rate` is measured over (once the run is that old)."""

Spawn = Callable[..., Any]  # the task group's start_soon


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """Where a running batch stands (``batch.progress()``): a frozen snapshot.

    Attributes:
        run_id: the run.
        total: jobs in the input when it has a length (a list, a range),
            else None.
        done: jobs finished and acknowledged in this invocation (succeeded,
            dead-lettered, failed, skipped on resume).
        succeeded: of ``done``, those that succeeded.
        failed: of ``done``, those dead-lettered or FAILED.
        in_flight: attempts running right now.
        ready: jobs waiting for a free worker.
        parked: jobs holding no slot while they wait: for a retry's backoff,
            the retry budget, or an open circuit.
        retrying: of ``parked``, those waiting to retry a failed attempt
            (backoff or retry budget).
        concurrency: the workers allowed to run attempts now (after
            ``resize``, or the current adaptive limit).
        paused: whether the run is paused.
        elapsed: seconds since the run started (loop clock).
        rate: jobs done per second, measured since the latest earlier
            snapshot at least `RATE_WINDOW` seconds old (over the whole run
            until there is one): poll every few seconds for a recent rate.
        eta: seconds until ``total`` is done at ``rate``, or None when
            ``total`` or ``rate`` is unknown (or zero).
    """

    run_id: str
    total: int | None
    done: int
    succeeded: int
    failed: int
    in_flight: int
    ready: int
    parked: int
    retrying: int
    concurrency: int
    paused: bool
    elapsed: float
    rate: float
    eta: float | None

    def __str__(self) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        eta = f", eta {self.eta:.0f}s" if self.eta is not None else ""
        state = " paused" if self.paused else ""
        return (
            f"{self.done}{of} done ({self.failed} failed), {self.in_flight} in flight, "
            f"{self.parked} parked ({self.retrying} retrying), concurrency "
            f"{self.concurrency}{state}, {self.rate:.1f}/s{eta}"
        )


class Control:
    """The live controls of one run (the engine builds one per run).

    Args:
        queue: the run's ready queue (its ``next()`` flag is raised while
            workers must hold).
        outcomes: the run's outcome path (counts, parked jobs).
        concurrency: the initial number of workers.
        run_id: the run's id, for snapshots.
    """

    __slots__ = (
        "_active",
        "_cap",
        "_held",
        "_loop",
        "_outcomes",
        "_queue",
        "_run",
        "_samples",
        "_spawn",
        "_spawned",
        "_started",
        "_starting",
        "items_per_call",
        "on_resize",
        "paused",
        "run_id",
        "target",
        "total",
    )

    def __init__(
        self, queue: ReadyQueue, outcomes: Outcomes, *, concurrency: int, run_id: str
    ) -> None:
        self._queue = queue
        self._outcomes = outcomes
        self.run_id = run_id
        self.target = concurrency
        """Workers that may take entries."""
        self.paused = False
        self.total: int | None = None
        self.on_resize: Callable[[int], None] | None = None
        """Told each `resize` instead of applying it (an adaptive limit takes it over)."""
        self._active = 0  # workers not spare (working, or holding only for the pause)
        self._spawned = 0
        self._starting = 0  # spawned workers that have not run yet
        self._cap = concurrency
        self._held: deque[asyncio.Future[None]] = deque()
        self._spawn: Spawn | None = None
        self._run: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0.0
        self._samples: deque[tuple[float, int]] = deque()  # (loop time, done) for the rate
        self.items_per_call = 1
        """Items a worker holds (``batch_size=``): the queue's read-ahead counts items."""

    # ------------------------------------------------------------ commands

    def start(
        self, spawn: Spawn, run: Callable[[], Coroutine[Any, Any, None]], *, cap: int
    ) -> None:
        """Start the run's workers (``target`` of them, never more than ``cap``).

        Args:
            spawn: starts one worker: ``spawn(run)``.
            run: the worker loop.
            cap: the most workers the run can use (a sized input's length).
        """
        self._spawn = spawn
        self._run = run
        self._cap = cap
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._grow()
        self._sync()

    def pause(self) -> None:
        """Workers take no new entry once their current attempt ends."""
        self.paused = True
        self._sync()

    def resume(self) -> None:
        """Undo `pause`."""
        self.paused = False
        self._sync()
        self.poke()

    def resize(self, n: int) -> None:
        """Let ``n`` workers take entries from now on (>= 1)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"resize() takes a concurrency >= 1, got {n!r}")
        if self.on_resize is not None:
            self.on_resize(n)
        else:
            self.limit_to(n)

    def limit_to(self, n: int) -> None:
        """Let ``n`` workers take entries from now on (the adaptive limit's way in)."""
        self.target = n
        self._queue.resized(n * self.items_per_call)
        if self._spawn is not None:
            # A command, not a guess: the new workers start now, not on demand.
            self._start(min(self.target, self._cap) - self._spawned)
            self._grow()
        self._sync()
        self.poke()

    # ------------------------------------------------------------ workers

    async def hold(self) -> bool:
        """Where a worker waits while it must not take entries (``ReadyQueue.wait`` sends it).

        Returns:
            True to go on taking entries, False when the run is over.
        """
        assert self._loop is not None
        spare = False
        try:
            while True:
                if self._queue.over():
                    return False
                if not spare and self._active > self.target:
                    spare = True
                    self._active -= 1
                    self._sync()
                elif spare and self._active < self.target:
                    spare = False
                    self._active += 1
                    self._sync()
                if not spare and not self.paused:
                    return True
                fut = self._loop.create_future()
                self._held.append(fut)
                await fut
        finally:
            if spare:
                self._active += 1  # a spare leaving (run over, cancelled) is no longer spare

    def poke(self) -> None:
        """Let every holding worker look again (the controls or the run changed)."""
        held, self._held = self._held, deque()
        for fut in held:
            if not fut.done():
                fut.set_result(None)

    def _grow(self) -> None:
        """Start the first worker; the others start on demand (`demand`)."""
        if self._spawned == 0:
            self._start(1)
        self._queue.growing(self._spawned < min(self.target, self._cap))

    def demand(self) -> None:
        """Work was handed out with no worker idle: start more, doubling each time.

        Workers start as the run needs them, not all at once: jobs that
        never suspend keep a few workers busy (each hands the loop a turn
        every `TURN` jobs), jobs that wait reach the full concurrency in
        log2(concurrency) steps. Starting 10,000 workers for 20,000 no-op
        jobs cost twice the jobs themselves (measured with callgrind).
        """
        if self._starting:
            return  # workers already on their way will take the work
        self._start(min(max(1, self._spawned), min(self.target, self._cap) - self._spawned))
        self._queue.growing(self._spawned < min(self.target, self._cap))

    def _start(self, n: int) -> None:
        assert self._spawn is not None
        if n <= 0 or self._queue.over():
            return  # the work is done (its task group may be closed): nothing to start
        assert self._run is not None
        for _ in range(n):
            self._spawned += 1
            self._active += 1
            self._starting += 1
            self._queue.workers += 1
            self._spawn(self._run)

    def arrived(self) -> None:
        """A worker's loop began (its first line: no wrapper coroutine counts it, so a
        job that suspends resumes through one frame less, ~0.6k instructions a job)."""
        self._starting -= 1

    def left(self) -> None:
        """A worker ended (the run needs no more of them, or it is over)."""
        self._spawned -= 1
        self._active -= 1
        self._queue.growing(self._spawned < min(self.target, self._cap))
        self._sync()
        if self._held and self._active < self.target:
            self.poke()  # a spare may take its place

    def _sync(self) -> None:
        self._queue.hold(self.paused or self._active > self.target)

    # ------------------------------------------------------------ progress

    def progress(self) -> Progress:
        """A snapshot of the run now."""
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        counts = self._outcomes.counts
        done = sum(counts.values())
        failed = counts[JobStatus.DEAD_LETTERED] + counts[JobStatus.FAILED]
        q = self._queue
        ready = len(q._ready)
        parked = q.parked
        retrying = self._outcomes.retrying()
        elapsed = now - self._started if self._loop is not None else 0.0
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        t_old, done_old = samples[0]
        if now - t_old < RATE_WINDOW:
            t_old, done_old = now - elapsed, 0
        span = now - t_old
        rate = (done - done_old) / span if span > 0 else 0.0
        eta = None
        if self.total is not None and rate > 0:
            eta = max(0, self.total - done) / rate
        return Progress(
            run_id=self.run_id,
            total=self.total,
            done=done,
            succeeded=counts[JobStatus.SUCCEEDED],
            failed=failed,
            in_flight=max(0, q.live - ready - parked),
            ready=ready,
            parked=parked,
            retrying=retrying,
            concurrency=self.target,
            paused=self.paused,
            elapsed=elapsed,
            rate=rate,
            eta=eta,
        )
