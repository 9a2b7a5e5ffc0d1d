"""`SharedRun`: how a run shared by many worker processes is cut up and leased."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from asyncbatch._errors import ConfigError

__all__ = ["SharedRun"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedRun:
    """How a shared run is cut up and leased: ``shared=ab.SharedRun(chunk_size=1000)``.

    Args:
        chunk_size: items per chunk (1 for long jobs). The last chunks of the
            input are smaller (an eighth), so one straggler does not hold the run.
        lease: seconds a worker holds a claimed chunk without renewing it;
            a worker that cannot renew for this long stops starting attempts,
            and other workers take its chunks.
        exact_limits: hold bulkheads (``limits=``) and rate limits (``rates=``)
            exactly across every worker, through the database, instead of
            splitting them among the live workers: True for every dependency
            with a fixed limit or a rate, or the names of some. Each call
            then costs database round trips (see "Exact limits" in the README).
    """

    chunk_size: int = 1000
    lease: float = 15.0
    exact_limits: bool | Collection[str] = False

    def __post_init__(self) -> None:
        size = self.chunk_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"SharedRun chunk_size must be a positive int, got {size!r}")
        lease = self.lease
        if isinstance(lease, bool) or not isinstance(lease, int | float) or lease < 0.5:
            raise ConfigError(f"SharedRun lease must be a number of seconds >= 0.5, got {lease!r}")
        exact = self.exact_limits
        if not isinstance(exact, bool):
            if isinstance(exact, str) or not isinstance(exact, Collection):
                hint = f"; HINT: exact_limits=[{exact!r}]" if isinstance(exact, str) else ""
                raise ConfigError(
                    "SharedRun exact_limits must be True, False or a list of dependency "
                    f"names, got {exact!r}{hint}"
                )
            if not all(isinstance(n, str) for n in exact):
                raise ConfigError(f"SharedRun exact_limits names must be str, got {exact!r}")
            object.__setattr__(self, "exact_limits", tuple(sorted(set(exact))) or False)
