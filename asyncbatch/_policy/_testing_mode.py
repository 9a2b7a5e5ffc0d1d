"""Testing mode: zero backoff (and optionally capped attempts) for users' own tests.

The retry policy reads `testing_overrides` once per run. The switch lives here,
in the policy layer, so the engine never imports `asyncbatch.testing`; that
public module re-exports `set_testing` and `is_testing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from asyncbatch._errors import ConfigError

__all__ = ["is_testing", "set_testing", "testing_overrides"]


@dataclass(frozen=True, slots=True)
class _TestingState:
    active: bool = False
    attempts: int | None = None


# One immutable value swapped as a whole, so a reader never sees half an update.
_state = _TestingState()


def testing_overrides() -> tuple[bool, int | None]:
    """What the executor reads once per run: ``(active, attempts cap or None)``.

    While ``active``, every backoff delay (``retry_after`` included) is zero;
    a non-None cap limits every kind's attempts to at most that many.
    """
    s = _state
    return s.active, s.attempts


# Its name starts with "test": keep pytest from collecting it where users import it.
testing_overrides.__test__ = False  # type: ignore[attr-defined]


def is_testing() -> bool:
    """True while `set_testing` is on."""
    return _state.active


class set_testing:  # lower case: used like a function, as stamina's is
    """Zero every backoff (and optionally cap attempts) for your own tests.

    Takes effect immediately and stays on until switched off; used as a
    context manager it restores the previous state on exit, even when
    nested.

    Args:
        on: switch testing mode on (True) or off (False).
        attempts: when given, every kind is retried at most this many
            attempts in total (1 = never retry). PERMANENT and FATAL are
            never retried anyway.

    Raises:
        ConfigError: ``attempts`` is not a positive int.
    """

    __slots__ = ("_previous",)

    def __init__(self, on: bool = True, *, attempts: int | None = None) -> None:
        global _state
        if attempts is not None and (
            isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1
        ):
            raise ConfigError(f"set_testing(attempts=...) must be a positive int, got {attempts!r}")
        self._previous = _state
        _state = _TestingState(active=bool(on), attempts=attempts if on else None)

    def __enter__(self) -> set_testing:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _state
        _state = self._previous

    def __repr__(self) -> str:
        s = _state
        return f"set_testing(on={s.active!r}, attempts={s.attempts!r})"
