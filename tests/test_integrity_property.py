"""Property: over random schedules of failures, aborts and resumes, the store never lies.

For any schedule (which items fail how, in which invocation the batch aborts
on a FATAL item, whether a resume re-runs dead letters) and on every store:

- the stored counts equal what the acknowledged outcomes say;
- no key has two terminal rows, and the DLQ holds exactly the dead-lettered jobs;
- no acknowledged job runs again (except dead letters with ``retry_dead=True``
  and jobs a rollback undid).
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncbatch as ab

FAST = ab.RetryPolicy(
    {
        ab.ErrorKind.TRANSIENT: ab.Retry(attempts=3, backoff=ab.Backoff.constant(0)),
        ab.ErrorKind.RECOVERABLE: ab.Retry(attempts=3, backoff=ab.Backoff.constant(0)),
    }
)

behaviours = st.sampled_from(["ok", "ok", "ok", "flaky", "permanent", "exhaust"])
invocation = st.fixed_dictionaries(
    {
        "fatal_at": st.one_of(st.none(), st.integers(0, 39)),
        "retry_dead": st.booleans(),
        "compensate": st.booleans(),
    }
)
schedules = st.fixed_dictionaries(
    {
        "items": st.lists(behaviours, min_size=1, max_size=40),
        "invocations": st.lists(invocation, min_size=1, max_size=4),
        "store": st.sampled_from(["memory", "sqlite"]),
        "concurrency": st.integers(1, 8),
    }
)
pg_schedules = schedules.map(lambda s: {**s, "store": "postgresql"})


async def _play(schedule: dict[str, Any], url: str, run_id: str = "prop") -> None:
    items = schedule["items"]
    async with ab.open_store(url) as store:  # one store for every invocation
        acked: dict[str, ab.JobStatus] = {}  # key -> last acknowledged terminal status
        for n, inv in enumerate(schedule["invocations"]):
            calls: list[str] = []
            attempts: dict[str, int] = {}

            async def job(
                i: int,
                inv: dict[str, Any] = inv,
                calls: list[str] = calls,
                attempts: dict[str, int] = attempts,
            ) -> int:
                key = str(i)
                calls.append(key)
                attempts[key] = attempts.get(key, 0) + 1
                if inv["fatal_at"] == i:
                    raise ab.FatalError(f"stop at {i}")
                how = items[i]
                if how == "flaky" and attempts[key] == 1:
                    raise ab.TransientError("blip")
                if how == "permanent":
                    raise ab.PermanentError(f"bad {i}")
                if how == "exhaust":
                    raise ab.TransientError("always")
                return i

            async def undo(item: int, result: int) -> None:
                return None

            options: dict[str, Any] = {
                "store": store,
                "run_id": run_id,
                "concurrency": schedule["concurrency"],
                "retry": FAST,
                "retry_dead": inv["retry_dead"],
                "force_resume": True,  # the job function is a new closure each time
            }
            if inv["compensate"]:
                options["compensate"] = undo
            try:
                result = await ab.run_batch(job, range(len(items)), **options)
            except ab.BatchAborted as exc:
                result = exc.result
            except ab.ConfigError:
                # A rollback interrupted... cannot happen here; a compensating run
                # without compensate= is refused and must stay compensating.
                assert (await store.get_run(run_id)).status == "compensating"
                continue
            # No acknowledged job ran again, unless it may.
            for key in calls:
                before = acked.get(key)
                assert (
                    before is None
                    or (before is ab.JobStatus.DEAD_LETTERED and inv["retry_dead"])
                    or before is ab.JobStatus.COMPENSATED
                ), (n, key, before)
            for o in result.outcomes:
                if o.status in (
                    ab.JobStatus.SUCCEEDED,
                    ab.JobStatus.DEAD_LETTERED,
                    ab.JobStatus.COMPENSATED,
                ):
                    acked[o.key] = o.status
            # The store says exactly what the outcomes said.
            stored = {j.key: j.status for j in await store.jobs(run_id)}
            assert stored == acked, (n, stored, acked)
            counts = await store.count_jobs(run_id)
            for status in (
                ab.JobStatus.SUCCEEDED,
                ab.JobStatus.DEAD_LETTERED,
                ab.JobStatus.COMPENSATED,
            ):
                expected = sum(1 for s in acked.values() if s is status)
                assert counts[status.value] == expected
            run = await store.get_run(run_id)
            for status in ("succeeded", "dead_lettered", "compensated"):
                assert run.counts.get(status, 0) == counts[status]
            dead = {d.key for d in await store.dlq.list(run_id=run_id)}
            assert dead == {k for k, s in acked.items() if s is ab.JobStatus.DEAD_LETTERED}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(schedules)
def test_random_schedules_of_failures_aborts_and_resumes_never_make_the_store_lie(
    schedule: dict[str, Any],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = "memory://" if schedule["store"] == "memory" else f"sqlite:///{tmp}/p.db"
        asyncio.run(_play(schedule, url))


@settings(
    max_examples=15,  # each opens a store on a server: fewer, to stay fast
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(pg_schedules)
def test_random_schedules_never_make_a_postgresql_store_lie(
    pg_url: str, schedule: dict[str, Any]
) -> None:
    # One schema for every example (pg_url is made once per test), a run id each.
    asyncio.run(_play(schedule, pg_url, run_id=f"prop-{uuid.uuid4().hex[:12]}"))
