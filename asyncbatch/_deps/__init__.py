"""Dependencies: what stands between a job and the service it calls.

Owns circuit breakers (`Breaker` policy, `Circuit` state on aiobreaker),
bulkheads (anyio capacity limiters), rate limits (aiolimiter) and `guard()`,
which passes a call through all three and records its outcome. May import
the value types, `_policy` (to know which failures count) and `_observe`
(breaker events).
"""
