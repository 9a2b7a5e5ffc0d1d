"""An evaluation suite: prompts against a (simulated) model endpoint, resumable, JSONL out.

The endpoint is rate limited and flaky (429 with retry-after, timeouts), like a
hosted model API. The suite runs under a run id with SQLite checkpoints: the
first run is stopped part-way (as a crash or Ctrl-C would), the second run
with the same run id skips every case already scored and finishes the rest.
Results go to a JSONL file, one line per case. Run it:
``python examples/eval_suite.py [WORKDIR]``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncbatch as ab
from asyncbatch.testing import FaultInjector

RUN_ID = "eval-arith-v1"


class ModelEndpoint:
    """A simulated model API: slow, rate limited at 429, sometimes timing out."""

    def __init__(self, seed: int = 0) -> None:
        self.faults = FaultInjector(
            seed,
            rates={ab.ErrorKind.RECOVERABLE: 0.08},  # 429 Too Many Requests + retry-after
            exceptions={TimeoutError: 0.04},  # a request that never came back
            retry_after=0.05,
            latency=(0.005, 0.03),
        )
        self.calls = 0

    async def complete(self, prompt: str) -> str:
        self.calls += 1
        await self.faults.maybe_fail()  # keyed by the current job's key
        a, b = (int(x) for x in prompt.removeprefix("What is ").removesuffix("?").split(" + "))
        # The "model" is right most of the time.
        wrong = random.Random(prompt).random() < 0.1
        return str(a + b + (1 if wrong else 0))


def suite(n: int = 120) -> list[dict[str, Any]]:
    rng = random.Random(42)
    cases = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        cases.append({"id": f"case-{i:03d}", "prompt": f"What is {a} + {b}?", "expected": a + b})
    return cases


async def run_suite(workdir: Path, stop_after: int | None = None) -> ab.BatchResult[Any] | None:
    model = ModelEndpoint()

    async def evaluate(case: dict[str, Any]) -> dict[str, Any]:
        answer = await model.complete(case["prompt"])
        return {"answer": answer, "correct": answer == str(case["expected"])}

    batch: ab.Batch[dict[str, Any], dict[str, Any]] = ab.Batch(
        evaluate,
        key=lambda case: case["id"],
        run_id=RUN_ID,
        store=f"sqlite:///{workdir / 'eval.db'}",
        concurrency=16,
        timeout=1.0,
        rates={"model": ab.Rate(400, per=1.0)},
        uses=["model"],
        retry=ab.RetryPolicy(
            {ab.ErrorKind.RECOVERABLE: ab.Retry(attempts=6, backoff=ab.Backoff.exponential(0.02))},
            seed=0,
        ),
    )
    seen = 0
    async with batch.stream(suite()) as outcomes:
        async for _ in outcomes:
            seen += 1
            if stop_after is not None and seen == stop_after:
                # Leaving the block cancels the rest; everything acknowledged is checkpointed.
                print(f"first run: stopped after {seen} cases ({model.calls} model calls)")
                return None
    print(f"second run: {model.calls} model calls for the cases left")
    return outcomes.result


async def scored_cases(workdir: Path) -> list[dict[str, Any]]:
    """Every scored case of the run, read back from the store."""
    async with ab.open_store(f"sqlite:///{workdir / 'eval.db'}") as store:
        jobs = await store.jobs(RUN_ID)
    return [{"id": job.key, "status": job.status.value, **(job.result or {})} for job in jobs]


async def main(workdir: Path) -> list[dict[str, Any]]:
    await run_suite(workdir, stop_after=50)
    result = await run_suite(workdir)  # same run id: resumes
    assert result is not None
    counts = result.counts
    print(
        f"second run: {counts[ab.JobStatus.SKIPPED]} skipped (scored before), "
        f"{counts[ab.JobStatus.SUCCEEDED]} scored now, "
        f"{counts[ab.JobStatus.DEAD_LETTERED]} dead-lettered"
    )
    return await scored_cases(workdir)


if __name__ == "__main__":
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="eval-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "eval.db").unlink(missing_ok=True)
    rows = asyncio.run(main(workdir))
    out = workdir / "results.jsonl"
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scored = [r for r in rows if r["status"] == "succeeded"]
    accuracy = sum(r["correct"] for r in scored) / max(len(scored), 1)
    print(f"accuracy {accuracy:.1%} over {len(scored)} cases; results in {out}")
