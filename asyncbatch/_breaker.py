"""PLACEHOLDER — being replaced by the breaker helper. Interface only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

__all__ = ["Breaker"]


class Breaker:
    def __init__(
        self,
        *,
        fail_max: int = 5,
        reset_timeout: float = 30,
        half_open_probes: int = 1,
        on_open: Literal["park", "fail", "fallback"] = "park",
        fallback: Callable[[Any, BaseException], Awaitable[Any]] | None = None,
    ) -> None:
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self.half_open_probes = half_open_probes
        self.on_open = on_open
        self.fallback = fallback
