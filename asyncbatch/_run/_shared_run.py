"""`SharedRun`: how a run shared by many worker processes is cut up and leased."""

from __future__ import annotations

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
    """

    chunk_size: int = 1000
    lease: float = 15.0

    def __post_init__(self) -> None:
        size = self.chunk_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"SharedRun chunk_size must be a positive int, got {size!r}")
        lease = self.lease
        if isinstance(lease, bool) or not isinstance(lease, int | float) or lease < 0.5:
            raise ConfigError(f"SharedRun lease must be a number of seconds >= 0.5, got {lease!r}")
