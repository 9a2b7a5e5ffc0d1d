"""Dependencies: what stands between a job and the service it calls.

Owns circuit breakers (`Breaker` policy, `Circuit` state on aiobreaker),
bulkheads (anyio capacity limiters, fixed or `Adaptive`), rate limits
(aiolimiter) and `guard()`,
which passes a call through all three and records its outcome. May import
the value types, `_policy` (to know which failures count) and `_observe`
(breaker events).
"""

from ._adaptive import Adaptive, AdaptiveLimit, overloaded
from ._breaker import Breaker
from ._circuit import Circuit
from ._dependencies import Dependencies, DependencyStats
from ._guard import guard, reset_dependencies, use_dependencies
from ._rate import Rate

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
