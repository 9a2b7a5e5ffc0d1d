-- The statements that stream a shared run's finished jobs (many writers)
-- in completion order, by name. Same form as postgres_queries.sql.
--
-- A job's seq comes from one sequence that every writer draws from inside
-- its own commit transaction, so rows become visible out of seq order: a
-- reader that moved its cursor past seq 101 would never see a 100 that
-- commits later. The reader therefore only reads up to a *settled* seq: it
-- notes the sequence's value L (stream_seq), then the transactions that
-- hold a write lock on the jobs table (stream_writers: every statement
-- that draws from job_seq is an INSERT INTO jobs, which takes that lock
-- before it draws); once none of them is still there (stream_pending = 0),
-- no row with seq <= L can appear any more.

-- name: stream_seq
-- The highest seq drawn so far, by any writer (0 before the first).
SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM job_seq

-- name: stream_writers
-- The transactions writing the jobs table right now.
SELECT coalesce(array_agg(DISTINCT virtualtransaction), '{}'::text[]) FROM pg_locks
WHERE locktype = 'relation' AND relation = 'jobs'::regclass AND mode = 'RowExclusiveLock'
  AND granted AND virtualtransaction IS NOT NULL

-- name: stream_pending
-- How many of the transactions $1 (stream_writers) still write the jobs table.
SELECT count(DISTINCT virtualtransaction) FROM pg_locks
WHERE locktype = 'relation' AND relation = 'jobs'::regclass AND mode = 'RowExclusiveLock'
  AND virtualtransaction = ANY($1::text[])

-- name: stream_page
-- The next page of run $1's jobs in completion order: seq in ($2, $3].
SELECT key, status, result, has_result, attempts, seq, idx, duration, kind
FROM jobs WHERE run_id = $1 AND seq > $2 AND seq <= $3
ORDER BY seq LIMIT $4

-- name: stream_counts
-- Run $1's jobs per status, split at seq $2: those at or below it were
-- finished by an earlier invocation of the run.
SELECT status, seq <= $2 AS earlier, count(*) AS n FROM jobs WHERE run_id = $1
GROUP BY status, seq <= $2
