"""The dashboard's JSON API: runs, one run's charts, the dead-letter queue, actions.

Reads (GET) are plain store reads. ``POST /api/dlq/redrive`` runs the chosen
entries again with the job their run stored (``RunInfo.job``, when it can be
imported here) through `ab.redrive`; ``POST /api/dlq/purge`` deletes chosen
entries and needs ``"confirm": true`` in its body besides the token the app
checks (`_app`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from aiohttp import web

from asyncbatch._errors import ConfigError
from asyncbatch._observe._fingerprint import fingerprint
from asyncbatch._result import DeadLetter
from asyncbatch._run._batch import redrive
from asyncbatch._store import RunInfo, Store
from asyncbatch._store._dashboard import (
    DURATION_EDGES,
    DeadLetterFacet,
    dlq_facets,
    dlq_page,
    job_stats,
    purge_ids,
)
from asyncbatch._version import __version__

__all__ = ["SETTINGS", "JobLoader", "Settings", "routes"]

JobLoader = Callable[[str], Callable[[Any], Any]]

_DONE = ("succeeded", "dead_lettered", "failed", "compensated")
_RATE_WINDOW = 10.0  # seconds of samples behind a running run's rate
_MAX_BUCKETS = 60
_PAGE = 100
_MAX_PAGE = 500


class _Rates:
    """Jobs/s of running runs, from the done counts seen by recent requests."""

    def __init__(self) -> None:
        self._seen: dict[str, deque[tuple[float, int]]] = {}

    def rate(self, run_id: str, done: int, now: float) -> float | None:
        samples = self._seen.setdefault(run_id, deque())
        if not samples or samples[-1][0] < now - 0.2:
            samples.append((now, done))
        while len(samples) > 2 and samples[1][0] < now - _RATE_WINDOW:
            samples.popleft()
        t0, d0 = samples[0]
        if now - t0 < 0.5:
            return None
        return max(done - d0, 0) / (now - t0)


_COST_SHARE = 40
"""An answer that took t seconds to compute is reused for at least 40·t: each kept answer
costs the dashboard at most ~2.5% of one core, however large the run grows."""


class _Cache:
    """Answers reused for a while, so many open pages cost the store one query per interval.

    Requests for the same key wait for the one that is computing it (a lock
    per key), then share its answer while it is younger than ``ttl`` or
    `_COST_SHARE` times what it cost (a run of millions of jobs refreshes
    less often rather than taking a core).
    """

    def __init__(self) -> None:
        self._items: dict[Hashable, tuple[float, Any]] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}

    async def get(self, key: Hashable, ttl: float, make: Callable[[], Awaitable[Any]]) -> Any:
        if ttl <= 0:
            return await make()
        async with self._locks.setdefault(key, asyncio.Lock()):
            hit = self._items.get(key)
            if hit is not None and time.monotonic() < hit[0]:
                return hit[1]
            start = time.monotonic()
            value = await make()
            now = time.monotonic()
            self._items[key] = (now + max(ttl, _COST_SHARE * (now - start)), value)
            return value


@dataclass(slots=True, kw_only=True)
class Settings:
    """What the handlers share: the store, the action rules, and some caches."""

    store: Store
    token: str
    read_only: bool
    load_job: JobLoader | None
    loopback_only: bool
    refresh: float = 1.0
    """Seconds a run's counts (and the runs list) are reused; charts of a running run 10x that."""
    rates: _Rates = field(default_factory=_Rates)
    cache: _Cache = field(default_factory=_Cache)
    jobs: dict[str, Callable[[Any], Any] | str] = field(default_factory=dict)

    async def facets(self) -> list[DeadLetterFacet]:
        """The DLQ's counts per run, kind, error type and status."""
        return await dlq_facets(self.store)

    def findable(self, ref: str) -> str:
        """Why the run's job cannot be redriven here, or "" when its module can be found.

        Looks the module up without importing it (the run page asks every
        second; importing a job's module may be slow or have side effects).
        """
        if not ref:
            return "the run stored no importable job (it was defined in __main__ or a closure)"
        if self.load_job is None:
            return "this dashboard was started without job imports"
        found = self.jobs.get(ref)
        if isinstance(found, str):
            return found
        module = ref.partition(":")[0]
        if found is None and module not in sys.modules:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, "")  # as the CLI's job loader does
            try:
                spec = importlib.util.find_spec(module)
            except (ImportError, ValueError) as exc:
                return f"cannot import {ref}: {exc}"
            if spec is None:
                return f"cannot import {ref}: no module named {module!r}"
        return ""

    def job(self, ref: str) -> Callable[[Any], Any] | str:
        """The job a run stored, or why it cannot be had (a sentence)."""
        if not ref:
            return "the run stored no importable job (it was defined in __main__ or a closure)"
        if self.load_job is None:
            return "this dashboard was started without job imports"
        found = self.jobs.get(ref)
        if found is None:  # failures are kept too: importing again would fail again
            try:
                found = self.load_job(ref)
            except Exception as exc:  # the loader's own error, shown on the page
                found = f"cannot import {ref}: {exc}"
            self.jobs[ref] = found
        return found


SETTINGS = web.AppKey("settings", Settings)
routes = web.RouteTableDef()


def _settings(request: web.Request) -> Settings:
    return request.app[SETTINGS]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=repr))


def _done(counts: dict[str, int]) -> int:
    return sum(int(counts.get(s, 0)) for s in _DONE)


def _run_json(s: Settings, r: RunInfo, now: float) -> dict[str, Any]:
    done = _done(r.counts)
    total = r.config.get("total")
    report = r.report or {}
    if r.status == "running":
        rate = s.rates.rate(r.run_id, done, now)
    else:
        took = float(report.get("duration") or 0.0) or (r.updated_at - r.created_at)
        rate = done / took if took > 0 else None
    return {
        "run_id": r.run_id,
        "job": r.job,
        "status": r.status,
        "counts": r.counts,
        "done": done,
        "total": total if isinstance(total, int) else None,
        "rate": rate,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "concurrency": r.config.get("concurrency"),
    }


@routes.get("/api/info")
async def info(request: web.Request) -> web.Response:
    """The store, the version and whether actions are allowed."""
    s = _settings(request)
    return _json(
        {
            "store": _redacted(s.store.url),
            "version": __version__,
            "read_only": s.read_only,
            "duration_edges": list(DURATION_EDGES),
        }
    )


def _redacted(url: str) -> str:
    """The store URL without a password."""
    if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.split("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url


@routes.get("/api/runs")
async def runs(request: web.Request) -> web.Response:
    """Every run, newest first (``?status=`` keeps one status)."""
    s = _settings(request)
    wanted = request.query.get("status") or None
    now = time.time()
    every = await s.cache.get("runs", s.refresh, s.store.list_runs)
    found = [_run_json(s, r, now) for r in every if wanted is None or r.status == wanted]
    return _json({"runs": found})


_LIVE_SAMPLE = 2_000  # dead letters read to group a running run's failures


async def _live_groups(store: Store, run_id: str) -> dict[str, Any]:
    """A running run's dead letters so far, grouped as its report will group them.

    By (kind, error type, message fingerprint), with up to 5 sample keys; from
    its first `_LIVE_SAMPLE` open entries (``sampled`` says how many were read).
    """
    entries = await dlq_page(store, None, _LIVE_SAMPLE, run_id=run_id, status="dead")
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in entries:
        k = (e.kind.value, e.error_type, fingerprint(e.message))
        g = groups.setdefault(
            k,
            {"kind": k[0], "error_type": k[1], "fingerprint": k[2], "example": e.message,
             "count": 0, "sample_keys": [], "first_seen": e.created_at},
        )  # fmt: skip
        g["count"] += 1
        if len(g["sample_keys"]) < 5:
            g["sample_keys"].append(e.key)
        g["last_seen"] = e.created_at
    ordered = sorted(groups.values(), key=lambda g: -int(g["count"]))
    return {"groups": ordered, "sampled": len(entries), "complete": len(entries) < _LIVE_SAMPLE}


async def _one_run(s: Settings, run_id: str) -> RunInfo:
    """The run from the runs list every page shares (one count of running runs per
    interval however many pages are open), or from the store if it is newer."""
    every: list[RunInfo] = await s.cache.get("runs", s.refresh, s.store.list_runs)
    for r in every:
        if r.run_id == run_id:
            return r
    return await s.store.get_run(run_id)  # UnknownRun: 404


@routes.get("/api/runs/{run_id}")
async def run(request: web.Request) -> web.Response:
    """One run: counts, progress, its stored report, its DLQ by kind and type, redrive."""
    s = _settings(request)
    run_id = request.match_info["run_id"]

    r = await _one_run(s, run_id)
    facets = [f for f in await s.cache.get("facets", s.refresh, s.facets) if f.run_id == run_id]
    data = _run_json(s, r, time.time())
    why = s.findable(r.job)
    data.update(
        config=r.config,
        report=r.report,
        dead_letters=(
            await s.cache.get(("live", run_id), s.refresh, lambda: _live_groups(s.store, run_id))
            if r.status == "running"
            else None
        ),
        dlq_open=sum(f.count for f in facets if f.status == "dead"),
        redrive={"ok": not why, "reason": why},
    )
    return _json(data)


def _nice_width(span: float) -> float:
    """A bucket width (1, 2, 5 x 10^n seconds, at least 1 s) giving at most 60 buckets."""
    raw = max(span / _MAX_BUCKETS, 1.0)
    e = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0, 10.0):
        if raw <= m * e:
            return m * e
    return 10.0 * e  # pragma: no cover - the loop always returns


@routes.get("/api/runs/{run_id}/charts")
async def charts(request: web.Request) -> web.Response:
    """Throughput over time (jobs/s per bucket) and job durations by status."""
    s = _settings(request)
    r = await _one_run(s, request.match_info["run_id"])
    running = r.status == "running"
    # A finished run's charts never change: keep them while its updated_at stays.
    key = ("charts", r.run_id, None if running else r.updated_at)
    ttl = 10 * s.refresh if running else 3600.0
    return _json(await s.cache.get(key, ttl, lambda: _charts(s, r)))


async def _charts(s: Settings, r: RunInfo) -> dict[str, Any]:
    start = r.created_at
    end = max(time.time() if r.status == "running" else r.updated_at, start + 1.0)
    width = _nice_width(end - start)
    stats = await job_stats(s.store, r.run_id, start=start, width=width)
    counts = stats.throughput
    n = max(int((end - start) // width) + 1, max(counts, default=0) + 1)
    series = [counts.get(i, 0) / width for i in range(min(n, _MAX_BUCKETS * 2))]
    return {
        "start": start,
        "width": width,
        "throughput": series,
        "durations": {
            "edges": list(DURATION_EDGES),
            "by_status": stats.durations,
        },
    }


def _float(value: str | None, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name} must be epoch seconds, got {value!r}") from None


def _filters(q: Any) -> dict[str, Any]:
    status = q.get("status", "dead")
    return {
        "run_id": q.get("run_id") or None,
        "kind": q.get("kind") or None,
        "error_type": q.get("error_type") or None,
        "status": None if status in ("all", "") else status,
        "since": _float(q.get("since"), "since"),
        "until": _float(q.get("until"), "until"),
    }


def _facet_matches(f: DeadLetterFacet, filters: dict[str, Any]) -> bool:
    et = filters["error_type"]
    return (
        (filters["run_id"] is None or f.run_id == filters["run_id"])
        and (filters["kind"] is None or f.kind == filters["kind"])
        and (filters["status"] is None or f.status == filters["status"])
        and (et is None or f.error_type == et or f.error_type.endswith("." + et))
    )


def _summary(e: DeadLetter) -> dict[str, Any]:
    message = " ".join(e.message.split())
    return {
        "id": e.id,
        "run_id": e.run_id,
        "key": e.key,
        "kind": e.kind.value,
        "error_type": e.error_type,
        "message": message[:300] + ("…" if len(message) > 300 else ""),
        "attempts": len(e.attempts),
        "redrive_count": e.redrive_count,
        "status": e.status,
        "created_at": e.created_at,
        "payload_is_repr": e.payload_is_repr,
    }


@routes.get("/api/dlq")
async def dlq(request: web.Request) -> web.Response:
    """A page of matching entries (``after``: the last id seen), how many match, the facets."""
    s = _settings(request)
    q = request.query
    filters = _filters(q)
    after = q.get("after")
    try:
        limit = min(max(int(q.get("limit", _PAGE)), 1), _MAX_PAGE)
        after_id = int(after) if after else None
    except ValueError:
        raise ConfigError("after and limit must be integers") from None
    page = await dlq_page(s.store, after_id, limit, **filters)
    facets = await dlq_facets(s.store, since=filters["since"], until=filters["until"])
    total = sum(f.count for f in facets if _facet_matches(f, filters))

    def tally(name: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in facets:
            value = getattr(f, name)
            out[value] = out.get(value, 0) + f.count
        return dict(sorted(out.items()))

    return _json(
        {
            "entries": [_summary(e) for e in page],
            "next_after": page[-1].id if len(page) == limit else None,
            "total": total,
            "facets": {
                "run_id": tally("run_id"),
                "kind": tally("kind"),
                "error_type": tally("error_type"),
                "status": tally("status"),
            },
        }
    )


@routes.get("/api/dlq/export")
async def export(request: web.Request) -> web.StreamResponse:
    """Matching entries as a JSONL download (``store.dlq.export``, streamed from a temp file)."""
    s = _settings(request)
    filters = _filters(request.query)
    folder = await anyio.to_thread.run_sync(tempfile.mkdtemp)
    try:
        path = os.path.join(folder, "dlq.jsonl")
        await s.store.dlq.export(path, **filters)
        name = f"dlq-{filters['run_id'] or 'all'}.jsonl".replace('"', "")
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{name}"',
            }
        )
        await response.prepare(request)
        async with await anyio.open_file(path, "rb") as f:
            while chunk := await f.read(1 << 16):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, folder)


@routes.get("/api/dlq/{id}")
async def entry(request: web.Request) -> web.Response:
    """One entry: payload, traceback, every attempt; and whether it can be redriven here."""
    s = _settings(request)
    try:
        id_ = int(request.match_info["id"])
    except ValueError:
        raise ConfigError("a dead letter id is an integer") from None
    e = await s.store.dlq.get(id_)
    r = await s.store.get_run(e.run_id)
    job = s.job(r.job)
    data = e.to_dict()
    data["redrive"] = {
        "ok": not isinstance(job, str) and not e.payload_is_repr,
        "reason": job
        if isinstance(job, str)
        else ("only the repr of the payload was kept" if e.payload_is_repr else ""),
    }
    return _json(data)


async def _ids(request: web.Request) -> tuple[list[int], dict[str, Any]]:
    try:
        body = await request.json()
    except ValueError:
        raise ConfigError('the body must be JSON: {"ids": [1, 2, ...]}') from None
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
        raise ConfigError('give the entries as {"ids": [1, 2, ...]}')
    return ids, body


@routes.post("/api/dlq/purge")
async def purge(request: web.Request) -> web.Response:
    """Delete the chosen entries (any status); the body must say ``"confirm": true``."""
    s = _settings(request)
    ids, body = await _ids(request)
    if body.get("confirm") is not True:
        raise ConfigError('purging deletes entries for good: send "confirm": true')
    return _json({"purged": await purge_ids(s.store, ids)})


@routes.post("/api/dlq/redrive")
async def redrive_entries(request: web.Request) -> web.Response:
    """Run the chosen ``"dead"`` entries again with their run's job; one redrive per run."""
    s = _settings(request)
    ids, _ = await _ids(request)
    by_run: dict[str, list[DeadLetter]] = {}
    for id_ in dict.fromkeys(ids):
        e = await s.store.dlq.get(id_)
        by_run.setdefault(e.run_id, []).append(e)
    jobs: dict[str, Callable[[Any], Any]] = {}
    for run_id in by_run:
        r = await s.store.get_run(run_id)
        job = s.job(r.job)
        if isinstance(job, str):
            return _json(
                {
                    "error": f"run {run_id}: {job}; redrive it with "
                    f"`asyncbatch dlq redrive MODULE:FUNC --run-id {run_id}`"
                },
                status=409,
            )
        jobs[run_id] = job
    out = []
    for run_id, entries in by_run.items():
        chosen = [e.id for e in entries if e.status == "dead" and not e.payload_is_repr]
        resolved = dead = 0
        if chosen:
            r = await s.store.get_run(run_id)
            concurrency = r.config.get("concurrency")
            result = await redrive(
                jobs[run_id],
                store=s.store,
                run_id=run_id,
                ids=chosen,
                concurrency=concurrency if isinstance(concurrency, int) else 100,
            )
            resolved = sum(1 for o in result.outcomes if o.status.value == "succeeded")
            dead = len(result.outcomes) - resolved
        out.append(
            {
                "run_id": run_id,
                "resolved": resolved,
                "dead": dead,
                "skipped": len(entries) - len(chosen),
            }
        )
    return _json(
        {
            "runs": out,
            "resolved": sum(o["resolved"] for o in out),
            "dead": sum(o["dead"] for o in out),
            "skipped": sum(o["skipped"] for o in out),
        }
    )
