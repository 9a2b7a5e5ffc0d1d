"""Values a store cannot write as they are fail (or mark) only their own job, never the run.

A lone surrogate (``"\\udcff"``, what `os.fsdecode` makes of a non-UTF-8 file
name) is not UTF-8, so a SQLite driver refuses the text; an item nested
deeper than the recursion limit breaks `json` and `repr`. Either used to fail
the whole commit group (every other job of it lost, every resume failing the
same way) or crash the run. Now each is stored in a safe form: the other jobs
of the group are committed, the run completes and resumes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from stores import RUN_PATHS, store_url

import asyncbatch as ab

S, D, K = ab.JobStatus.SUCCEEDED, ab.JobStatus.DEAD_LETTERED, ab.JobStatus.SKIPPED
BAD_NAME = os.fsdecode(b"report-\xff.csv")  # "report-\udcff.csv"


def _deep(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


@pytest.fixture(params=RUN_PATHS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ab.Store]:
    async with ab.open_store(store_url(request, tmp_path, request.param)) as s:
        yield s


ITEMS: list[dict[str, Any]] = [
    *({"name": f"plain-{i}"} for i in range(6)),
    {"name": "surrogate-result"},
    {"name": BAD_NAME},  # the key itself holds the surrogate
    {"name": "surrogate-message"},
    {"name": "surrogate-payload", "file": BAD_NAME},
    {"name": "deep", "tree": _deep(10_000)},
]


async def job(item: dict[str, Any]) -> Any:
    name = item["name"]
    if name == "surrogate-result":
        return BAD_NAME
    if name == "surrogate-message":
        raise ab.PermanentError(f"cannot open {BAD_NAME}")
    if "file" in item or name == "deep":
        raise ab.PermanentError("bad item")
    return {"name": name}


def _key(item: dict[str, Any]) -> str:
    return str(item["name"])


async def test_values_that_are_not_utf8_or_too_deep_do_not_fail_the_group(
    store: ab.Store,
) -> None:
    with pytest.warns(RuntimeWarning, match="nested too deeply"):
        first = await ab.run_batch(job, ITEMS, key=_key, store=store, run_id="odd", concurrency=4)

    assert first.counts[S] == 8
    assert first.counts[D] == 3
    stored = {j.key: j for j in await store.jobs("odd")}
    assert len(stored) == len(ITEMS)  # every job of every group was committed
    assert stored["surrogate-result"].result == BAD_NAME  # exactly, not a replacement char
    assert (await store.get_run("odd")).status == "finished"

    dead = {d.key: d for d in await store.dlq.list(run_id="odd")}
    assert dead["surrogate-payload"].payload == {"name": "surrogate-payload", "file": BAD_NAME}
    assert dead["surrogate-message"].message == "cannot open report-\\udcff.csv"
    assert "report-\\udcff.csv" in dead["surrogate-message"].traceback
    assert dead["deep"].payload_is_repr
    assert dead["deep"].payload.startswith("{'name': 'deep'")


async def test_a_run_with_unstorable_values_resumes_with_nothing_to_do(store: ab.Store) -> None:
    with pytest.warns(RuntimeWarning, match="nested too deeply"):
        await ab.run_batch(job, ITEMS, key=_key, store=store, run_id="odd")

    again = await ab.run_batch(job, ITEMS, key=_key, store=store, run_id="odd")

    assert again.counts[K] == len(ITEMS)  # the surrogate key is found again, too
    by_key = {o.key: o for o in again.outcomes}
    assert by_key["surrogate-result"].result == BAD_NAME
    assert by_key["report-\\udcff.csv"].status is K  # keys are stored (and shown) escaped


async def test_a_result_too_deep_to_store_is_not_stored_and_fails_nothing(
    store: ab.Store,
) -> None:
    async def deep_result(x: int) -> Any:
        return _deep(10_000) if x == 1 else x

    with pytest.warns(RuntimeWarning, match="JSON cannot hold"):  # named, once for the run
        result = await ab.run_batch(deep_result, range(3), store=store, run_id="deep")

    assert result.counts[S] == 3
    stored = {j.key: j for j in await store.jobs("deep")}
    assert stored["0"].result == 0
    assert stored["2"].result == 2
    assert not stored["1"].has_result


async def test_an_error_whose_message_is_too_deep_to_print_fails_only_its_job(
    store: ab.Store,
) -> None:
    async def job(x: int) -> int:
        if x == 1:
            raise ab.PermanentError(_deep(10_000))  # str() of it raises RecursionError
        return x

    result = await ab.run_batch(job, range(3), store=store, run_id="deep-error")

    assert (result.counts[S], result.counts[D]) == (2, 1)
    (dead,) = await store.dlq.list(run_id="deep-error")
    assert dead.message == "<PermanentError(list) nested too deeply to show>"
    assert (await store.get_run("deep-error")).status == "finished"


NUL_ITEMS: list[dict[str, Any]] = [
    {"name": "plain"},
    {"name": "nul-result"},
    {"name": "nul\x00key"},  # PostgreSQL's text cannot hold a NUL
    {"name": "nul-message"},
    {"name": "nul-payload", "file": "a\x00b"},
]


async def nul_job(item: dict[str, Any]) -> Any:
    name = item["name"]
    if name == "nul-result":
        return {"text": "a\x00b", "k\x00": 1}
    if name == "nul-message":
        raise ab.PermanentError("cannot open a\x00b")
    if "file" in item:
        raise ab.PermanentError("bad item")
    return name


async def test_a_nul_character_anywhere_fails_nothing_and_resumes(store: ab.Store) -> None:
    first = await ab.run_batch(nul_job, NUL_ITEMS, key=_key, store=store, run_id="nul")

    assert (first.counts[S], first.counts[D]) == (3, 2)
    stored = {j.key: j for j in await store.jobs("nul")}
    assert set(stored) == {"plain", "nul-result", "nul\\x00key", "nul-message", "nul-payload"}
    assert stored["nul-result"].result == {"text": "a\x00b", "k\x00": 1}  # JSON keeps it exactly
    assert stored["nul\\x00key"].result == "nul\x00key"
    dead = {d.key: d for d in await store.dlq.list(run_id="nul")}
    assert dead["nul-message"].message == "cannot open a\\x00b"  # escaped, like a surrogate
    assert dead["nul-payload"].payload == {"name": "nul-payload", "file": "a\x00b"}
    assert (await store.get_run("nul")).status == "finished"

    again = await ab.run_batch(nul_job, NUL_ITEMS, key=_key, store=store, run_id="nul")

    assert again.counts[K] == len(NUL_ITEMS)  # the NUL key is found again
    by_key = {o.key: o for o in again.outcomes}
    assert by_key["nul-result"].result == {"text": "a\x00b", "k\x00": 1}
