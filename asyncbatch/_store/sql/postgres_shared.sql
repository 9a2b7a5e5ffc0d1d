-- The statements of shared runs (many workers, one run), by name.
--
-- Same form as postgres_queries.sql. Leases use the DATABASE clock (now()),
-- never a worker's: workers on machines whose clocks disagree still agree on
-- who holds a chunk. $n are positional; arrays are one element per row.

-- ------------------------------------------------------------------ the run

-- name: run_share
-- The coordinator makes (or resumes) the run as a shared one; a resume
-- enqueues its input again, so input_done goes back to false.
UPDATE runs SET shared = true, input_done = false, abort_reason = NULL WHERE id = $1

-- name: run_state
-- What a worker's heartbeat reads: the run's status, whether it is shared,
-- its whole input is enqueued, an abort was decided, and the open chunks.
SELECT r.status, r.shared, r.input_done, r.abort_reason, r.job, r.config,
       (SELECT count(*) FROM chunks c WHERE c.run_id = r.id AND c.state <> 'done') AS open,
       (SELECT count(*) FROM chunks c
         WHERE c.run_id = r.id AND c.state = 'claimed' AND c.lease_until > now()) AS held
FROM runs r WHERE r.id = $1

-- name: runs_shared_open
-- `asyncbatch worker --all`: running shared runs of a job ($1) with work to claim.
SELECT r.id FROM runs r
WHERE r.shared AND r.status = 'running' AND r.abort_reason IS NULL AND r.job = $1
  AND EXISTS (SELECT 1 FROM chunks c WHERE c.run_id = r.id AND c.state <> 'done')
ORDER BY r.created_at, r.created_seq

-- name: run_input_done
UPDATE runs SET input_done = true WHERE id = $1

-- name: run_abort
-- An abort is ONE compare-and-swap: the first reason wins, every worker's
-- heartbeat sees it. Returns the reason that stands.
UPDATE runs SET abort_reason = coalesce(abort_reason, $2) WHERE id = $1 RETURNING abort_reason

-- name: run_finish
-- The run finishes by compare-and-swap: only while it runs, its input is
-- all enqueued, no abort was decided and every chunk is done. The winner
-- (one row back) writes the counts and report and deletes the chunks.
UPDATE runs SET status = 'finished', updated_at = $2
WHERE id = $1 AND status = 'running' AND input_done AND abort_reason IS NULL
  AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.run_id = $1 AND c.state <> 'done')
RETURNING id

-- name: run_close
-- The winner of run_finish (or the coordinator after an abort's rollback):
-- counts from SQL aggregates, the report, the lease released.
UPDATE runs SET counts = $2, report = $3, owner = NULL, owned_since = NULL,
                heartbeat_at = NULL
WHERE id = $1

-- name: run_counts
SELECT status, count(*) AS n FROM jobs WHERE run_id = $1 GROUP BY status

-- ------------------------------------------------------------------ chunks

-- name: chunks_add
-- The coordinator enqueues a stretch of input. A chunk is named by its first
-- input position, so a coordinator that resumes after a crash while it was
-- enqueueing writes the same chunks again and the existing ones stay ($6:
-- their keys may have finished already, so a claim looks them up). A resume
-- whose input grew meets an old, shorter tail chunk under the same name: it
-- takes the longer key list, is claimable again, and its epoch moves on so
-- a worker holding the old list cannot mark it done.
-- Sent with executemany: one pipelined round trip for many chunks.
INSERT INTO chunks (run_id, no, keys, idxs, payloads, lookup)
VALUES ($1, $2, $3::text[], $4::bigint[], $5, $6)
ON CONFLICT (run_id, no) DO UPDATE SET
    keys = excluded.keys, idxs = excluded.idxs, payloads = excluded.payloads,
    lookup = true, state = 'pending', owner = NULL, lease_until = NULL,
    epoch = chunks.epoch + 1
WHERE cardinality(excluded.keys) > cardinality(chunks.keys)

-- name: chunks_claim
-- Claim up to $2 chunks of run $1: pending ones, and claimed ones whose
-- lease expired (their worker died or is partitioned away: no reaper
-- needed). SKIP LOCKED lets concurrent claimers pass each other. Each claim
-- raises the epoch, the fencing token the claimer's writes must carry.
-- Keys that already have a finished row (statuses $5), or that an earlier
-- holder handed back as a retry row, come back in `done` for chunks that were
-- claimed before or enqueued by a resume.
WITH claimed AS (
    UPDATE chunks c SET state = 'claimed', owner = $3, epoch = c.epoch + 1,
                        lease_until = now() + make_interval(secs => $4)
    FROM (SELECT o.run_id, o.no FROM chunks o
          WHERE o.run_id = $1 AND o.state <> 'done'
            AND (o.state = 'pending' OR o.lease_until <= now())
            AND (o.due_at IS NULL OR o.due_at <= now())
            -- a chunk whose items stay with the coordinator: only it claims it ($6)
            AND (o.payloads <> 'local:' OR o.no = ANY($6::bigint[]))
            -- nothing is claimed once an abort stands (a worker's heartbeat may not
            -- have read it yet: it would start jobs the abort has stopped)
            AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = $1 AND r.abort_reason IS NOT NULL)
          ORDER BY o.no
          LIMIT $2
          FOR UPDATE SKIP LOCKED) AS s
    WHERE c.run_id = s.run_id AND c.no = s.no
    RETURNING c.no, c.epoch, c.keys, c.idxs, c.payloads, c.lookup, c.retry
)
SELECT k.no, k.epoch, k.keys, k.idxs, k.payloads, k.retry,
       CASE WHEN k.epoch > 1 OR k.lookup
            THEN ARRAY(SELECT j.key FROM jobs j
                       WHERE j.run_id = $1 AND j.key = ANY(k.keys) AND j.status = ANY($5::text[])
                       UNION
                       -- handed back as a retry by the chunk's earlier holder: that row runs it
                       SELECT r.keys[1] FROM chunks r
                       WHERE r.run_id = $1 AND r.no < 0 AND r.no <> k.no AND r.state <> 'done'
                         AND r.keys[1] = ANY(k.keys))
            ELSE '{}'::text[] END AS done
FROM claimed k ORDER BY k.no

-- name: chunks_positions
-- Where keys $2 stand in run $1's input (a duplicate key's first position);
-- rare (a key hash met twice while enqueueing), so a scan of the run's chunks.
SELECT u.key, min(u.idx) FROM chunks c, unnest(c.keys, c.idxs) AS u(key, idx)
WHERE c.run_id = $1 AND c.no >= 0 AND u.key = ANY($2::text[])
GROUP BY u.key

-- name: chunks_renew
-- The heartbeat renews this worker's leases where owner and epoch still match
-- and the lease has not run out; the chunks that come back are still its own.
UPDATE chunks c SET lease_until = now() + make_interval(secs => $5)
FROM unnest($2::bigint[], $3::bigint[]) AS h(no, epoch)
WHERE c.run_id = $1 AND c.no = h.no AND c.epoch = h.epoch AND c.owner = $4
  AND c.state = 'claimed' AND c.lease_until > now()
RETURNING c.no

-- name: chunks_fence
-- The fence of a group commit, first in its transaction: chunks_renew for
-- the chunks whose records it writes, and those whose every key now has its
-- row ($6) are marked done at once. Only the records of chunks that come
-- back are written; the rows stay locked to the end of the transaction, so
-- nobody claims them while it writes.
UPDATE chunks c SET
    lease_until = CASE WHEN h.done THEN NULL ELSE now() + make_interval(secs => $5) END,
    state = CASE WHEN h.done THEN 'done' ELSE 'claimed' END,
    owner = CASE WHEN h.done THEN NULL ELSE c.owner END
FROM unnest($2::bigint[], $3::bigint[], $6::boolean[]) AS h(no, epoch, done)
WHERE c.run_id = $1 AND c.no = h.no AND c.epoch = h.epoch AND c.owner = $4
  AND c.state = 'claimed' AND c.lease_until > now()
RETURNING c.no

-- name: chunks_retry
-- Retries handed back to the run by a group commit (after chunks_fence, for
-- keys of chunks it kept): a one-key chunk each, claimable by any worker from
-- due_at on (database clock), named below zero so they never meet the input's.
INSERT INTO chunks (run_id, no, keys, idxs, payloads, due_at, retry)
SELECT $1, u.no, ARRAY[u.key], ARRAY[u.idx], u.payload, now() + make_interval(secs => u.delay),
       u.retry
FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::double precision[],
            $7::text[]) AS u(no, key, idx, payload, delay, retry)
ON CONFLICT (run_id, no) DO NOTHING

-- name: chunks_release
-- A worker that stops lets its unfinished chunks go at once (no wait for the lease).
UPDATE chunks SET lease_until = now()
WHERE run_id = $1 AND owner = $2 AND state = 'claimed' AND no = ANY($3::bigint[])
  AND epoch = ANY($4::bigint[])

-- name: chunks_holders
-- The owners holding chunks of run $1 under a lease that has not run out.
SELECT DISTINCT owner FROM chunks
WHERE run_id = $1 AND state = 'claimed' AND lease_until > now()

-- name: chunks_free
-- The chunks of owners $2 that are known gone (a process of this host that
-- no longer exists): claimable at once, no wait for their lease.
UPDATE chunks SET lease_until = now()
WHERE run_id = $1 AND state = 'claimed' AND owner = ANY($2::text[])

-- name: chunks_forget
-- A finished run keeps its jobs; its chunks go.
DELETE FROM chunks WHERE run_id = $1

-- name: workers_forget
-- ...and so do its workers' rows (their reports are merged into the run's).
DELETE FROM workers WHERE run_id = $1

-- ------------------------------------------------------------------ workers

-- name: worker_beat
-- A worker's heartbeat: its counts (and, when it stops, its report).
INSERT INTO workers (run_id, owner, counts, report, state, beat_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (run_id, owner) DO UPDATE SET
    counts = excluded.counts, report = coalesce(excluded.report, workers.report),
    state = excluded.state, beat_at = excluded.beat_at

-- name: workers_counts
-- Every worker's counts, for a run-wide error budget.
SELECT counts FROM workers WHERE run_id = $1

-- name: workers_reports
SELECT report FROM workers WHERE run_id = $1 AND report IS NOT NULL ORDER BY owner

-- name: workers_live
-- Workers of the run that beat within $2 seconds and have not stopped.
SELECT count(*) FROM workers
WHERE run_id = $1 AND state = 'working' AND beat_at > now() - make_interval(secs => $2)
