"""Policy: how a failure is judged. Classification, retries and backoff, error budgets.

Owns `Classifier`/`Rule` (exception or result → `ErrorKind`), `RetryPolicy`/
`Retry`/`Backoff` (how long until the next attempt, if any), `ErrorBudget`
(when a run has failed too much) and testing mode (zero backoff for users'
tests). Pure decisions over values: no I/O, no tasks. May import only the
value types at the bottom (`asyncbatch._errors`, `_result`, `_context`).
"""
