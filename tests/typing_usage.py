"""Static typing of the public API, checked by mypy --strict in CI (not run by pytest).

`assert_type` fails the type check if the inferred types drift.
"""

from __future__ import annotations

from typing import assert_type

import asyncbatch as ab


async def fetch(url: str) -> bytes:
    return url.encode()


async def typed_usage() -> None:
    result = await ab.run_batch(fetch, ["a", "b"], concurrency=2)
    assert_type(result, ab.BatchResult[bytes])
    assert_type(result.outcomes[0], ab.JobOutcome[bytes])
    assert_type(result.outcomes[0].result, bytes | None)

    batch = ab.Batch(fetch, concurrency=4)
    assert_type(batch, ab.Batch[str, bytes])
    assert_type(await batch.run(["c"]), ab.BatchResult[bytes])
    async with batch.stream(["d"]) as outcomes:
        async for outcome in outcomes:
            assert_type(outcome, ab.JobOutcome[bytes])

    job = ab.current_job()
    assert_type(job.attempt, int)
    policy = ab.RetryPolicy({ab.ErrorKind.TRANSIENT: ab.Retry(attempts=3)}, seed=1)
    assert_type(policy[ab.ErrorKind.TRANSIENT], ab.Retry)

    # asyncbatch.http through the lazy `ab.http` attribute.
    classify = ab.http.classifier(max_retry_after=30, responses=True)
    assert_type(classify, ab.Classifier)
    assert_type(ab.http.retry_after({"Retry-After": "2"}), float | None)
    assert_type(ab.http.rules(), tuple[ab.Rule, ...])
    await ab.run_batch(fetch, ["e"], classify=classify)

async def typed_options() -> None:
    # Options are typed keywords (PEP 692): a misspelt one is an error, so
    # the ignore below must be needed (mypy --strict warns on unused ones).
    await ab.run_batch(fetch, ["a"], concurency=10)  # type: ignore[call-arg]
    await ab.run_batch(fetch, ["a"], concurrency="10")  # type: ignore[arg-type]
    ab.Batch(fetch, retry_dead=True, store="sqlite:///x.db", timeout=1.5)
    options: ab.BatchOptions = {"concurrency": 10, "run_id": "r"}
    await ab.run_batch(fetch, ["a"], **options)
    await ab.redrive(fetch, store="x.db", run_id="r", concurrency=2)
    await ab.redrive(fetch, store="x.db", run_id="r", key=str)  # type: ignore[call-arg]
