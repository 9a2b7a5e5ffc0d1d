"""PLACEHOLDER — being replaced by the breaker helper. Interface only."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._breaker import Breaker
from ._events import Event

__all__ = ["Dependencies", "Rate", "guard"]


@dataclass(frozen=True, slots=True)
class Rate:
    n: float
    per: float = 1.0


class Dependencies:
    def __init__(
        self,
        *,
        run_id: str,
        limits: Mapping[str, int] | None,
        rates: Mapping[str, Rate] | None,
        breakers: Mapping[str, Breaker] | None,
        classify: Callable[[BaseException], Any],
        emit: Callable[[Event], None],
    ) -> None:
        self.breakers = dict(breakers or {})

    def breaker(self, name: str) -> Breaker | None:
        return self.breakers.get(name)

    @contextlib.asynccontextmanager
    async def guard_all(self, names: Iterable[str]) -> AsyncIterator[None]:
        yield

    def stats(self) -> dict[str, dict[str, Any]]:
        return {}

    def __bool__(self) -> bool:
        return False


@contextlib.asynccontextmanager
async def guard(name: str) -> AsyncIterator[None]:
    yield
