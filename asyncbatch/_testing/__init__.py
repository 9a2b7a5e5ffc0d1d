"""Test doubles behind `asyncbatch.testing`: seeded fault injection and a flaky HTTP service.

`_faults` makes a job or dependency fail on purpose, reproducibly; `_service`
is a real HTTP service on 127.0.0.1 driven by a fault injector. Used by users'
tests, the demo and asyncbatch's own tests. May import the value types and
`_policy`; the engine never imports this package.
"""
