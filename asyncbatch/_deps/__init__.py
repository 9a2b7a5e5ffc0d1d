"""Dependencies: what stands between a job and the service it calls.

Owns circuit breakers (`Breaker` policy, `Circuit` state on aiobreaker),
bulkheads (anyio capacity limiters, fixed or `Adaptive`), rate limits
(aiolimiter) and `guard()`,
which passes a call through all three and records its outcome. May import
the value types, `_policy` (to know which failures count) and `_observe`
(breaker events).
"""

from typing import TYPE_CHECKING

from ._adaptive import Adaptive, AdaptiveLimit, overloaded
from ._breaker import Breaker
from ._guard import guard, reset_dependencies, use_dependencies
from ._rate import Rate

if TYPE_CHECKING:
    from ._circuit import Circuit
    from ._dependencies import Dependencies, DependencyStats

__all__ = [
    "Adaptive",
    "AdaptiveLimit",
    "Breaker",
    "Circuit",
    "Dependencies",
    "DependencyStats",
    "Rate",
    "guard",
    "overloaded",
    "reset_dependencies",
    "use_dependencies",
]


def __getattr__(name: str) -> object:
    # The circuits (and aiobreaker under them) load with the first run that has
    # dependencies: `import asyncbatch` stays light.
    if name == "Circuit":
        from ._circuit import Circuit

        return Circuit
    if name in ("Dependencies", "DependencyStats"):
        from . import _dependencies

        return getattr(_dependencies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
