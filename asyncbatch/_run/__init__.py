"""Run: one batch from input to acknowledged outcome.

Data flows one way::

    items → admission (key, skip finished) → ready queue → workers (slot →
    guard → attempt span → job) → outcome path (classify → retry timer →
    ready queue | dead letter | abort) → checkpoint writer (group commit) →
    acknowledgement (counts, report, budget, stream)

Owns the entry points (`run_batch`, `Batch`, `redrive`, `rollback`), the
options, the engine and its parts, the ready queue, the checkpoint writer
and compensation. The only layer that starts tasks. May import every layer
below it (`_store`, `_policy`, `_observe`, `_deps`, the value types), never
`_cli`, `_testing` or the public modules.
"""
