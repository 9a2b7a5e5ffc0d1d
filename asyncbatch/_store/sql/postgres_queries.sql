-- Every statement the PostgreSQL store runs, by name.
--
-- Each statement starts with a "-- name: NAME" line; the comment lines
-- under it say what it is for. Parameters are positional ($1, $2, ...);
-- a set-based statement takes one array per column, one element per row,
-- in the order the rows were committed. {schema} is the store's schema,
-- quoted by the store (identifiers cannot be parameters). Everything else
-- resolves through search_path, which every connection sets to the schema.

-- ------------------------------------------------------------------ schema

-- name: schema_lock
-- Serialises migrations of one schema across processes; released at commit.
-- 1633837428 is b"abat" (asyncbatch's SQLite application_id) as an int4.
SELECT pg_advisory_xact_lock(1633837428, hashtext($1::text))

-- name: schema_state
-- Whether the schema exists, is versioned, and how many tables it holds.
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1::text) AS present,
       to_regclass(format('%I.schema_version', $1::text)) IS NOT NULL AS versioned,
       (SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = $1::text) AS tables

-- name: schema_version
SELECT coalesce(max(version), 0) FROM schema_version

-- name: schema_create
-- Only when it is missing: CREATE SCHEMA needs the CREATE privilege on the
-- database even with IF NOT EXISTS, and a DBA may have made the schema for
-- a role that lacks it.
CREATE SCHEMA {schema}

-- name: schema_bootstrap
-- The version table: not a migration step, it records them.
CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version    integer PRIMARY KEY,
    asyncbatch text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: schema_version_add
INSERT INTO schema_version (version, asyncbatch) VALUES ($1, $2)

-- ------------------------------------------------------------------ runs

-- name: run_get
SELECT id, job, status, config, counts, report, created_at, updated_at
FROM runs WHERE id = $1

-- name: run_get_for_update
-- begin_run: the previous state and its lease, locked until the run is
-- marked running (so two processes cannot both take it).
SELECT id, job, status, config, counts, report, created_at, updated_at,
       owner, owned_since, heartbeat_at
FROM runs WHERE id = $1 FOR UPDATE

-- name: token_claim
-- A write that is not idempotent claims a token in its own transaction: a
-- retry (after a lost connection) that finds it claimed knows the first
-- attempt landed; one still in flight on a dead connection makes it wait.
INSERT INTO commits (token) VALUES ($1) ON CONFLICT DO NOTHING RETURNING 1

-- name: run_insert
INSERT INTO runs (id, job, status, config, counts, report, created_at, updated_at)
VALUES ($1, $2, 'running', $3, $4, NULL, $5, $6)

-- name: run_restart
-- A run started again: running, with the new job and config.
UPDATE runs SET status = 'running', job = $2, config = $3, updated_at = $4 WHERE id = $1

-- name: run_take
-- begin_run with an owner: the lease is its (since now unless it already
-- owned the run), its heartbeat now.
UPDATE runs SET owned_since = CASE WHEN owner IS NOT DISTINCT FROM $2 THEN owned_since
                                   ELSE $3 END,
                owner = $2, heartbeat_at = $3
WHERE id = $1

-- name: run_heartbeat
-- The owner renews its lease; no row: the lease was lost (or no such run).
UPDATE runs SET heartbeat_at = $3 WHERE id = $1 AND owner = $2

-- name: run_holder
SELECT owner, owned_since FROM runs WHERE id = $1

-- name: run_end
-- The run ended: its lease is released ($6), except while it rolls back.
UPDATE runs SET status = $2, counts = $3, report = $4, updated_at = $5,
                owner = CASE WHEN $6::boolean THEN NULL ELSE owner END,
                owned_since = CASE WHEN $6::boolean THEN NULL ELSE owned_since END,
                heartbeat_at = CASE WHEN $6::boolean THEN NULL ELSE heartbeat_at END
WHERE id = $1

-- name: run_touch
-- "Still making progress": a commit sets updated_at, at most once a second per run.
UPDATE runs SET updated_at = $2 WHERE id = ANY($1::text[]) AND updated_at < $2

-- name: run_exists
SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1)

-- name: runs_list
-- Newest first; runs created in the same instant, the later one first.
SELECT id, job, status, config, counts, report, created_at, updated_at
FROM runs ORDER BY created_at DESC, created_seq DESC

-- name: runs_live_counts
-- Counts of running (or crashed) runs, from the jobs they committed.
SELECT run_id, status, count(*) AS n
FROM jobs WHERE run_id = ANY($1::text[]) GROUP BY run_id, status

-- ------------------------------------------------------------------ jobs

-- name: jobs_count
SELECT status, count(*) AS n FROM jobs WHERE run_id = $1 GROUP BY status

-- name: jobs_finished
-- What a resume skips: jobs that reached one of the statuses in $2.
SELECT key, status, result, has_result, attempts, seq, payload, idx
FROM jobs WHERE run_id = $1 AND status = ANY($2::text[])

-- name: jobs_lookup
-- The finished jobs (statuses $2) among a batch of admitted keys ($3), no
-- payloads: a resume asks this per batch, so its memory stays bounded.
SELECT key, status, result, has_result, attempts, seq, NULL AS payload, idx
FROM jobs WHERE run_id = $1 AND status = ANY($2::text[]) AND key = ANY($3::text[])

-- name: jobs_last_seq
-- The highest completion order the run has stored (0 for none).
SELECT coalesce(max(seq), 0) FROM jobs WHERE run_id = $1

-- name: jobs_in_order
SELECT key, status, result, has_result, attempts, seq, payload, idx
FROM jobs WHERE run_id = $1 ORDER BY seq

-- ------------------------------------------------------------------ group commit
-- One transaction per flush: commit_begin, then per segment (a stretch of
-- records in which no job appears twice) job_copy, job_success or job_upsert,
-- job_compensate,
-- dlq_dead, dlq_resolve_by_id, dlq_resolve_by_key, each for every row of
-- the segment at once; then run_touch and, now and then, commits_forget.

-- name: commit_begin
-- The commit's token (a retried commit that had landed finds it: nothing to
-- do; one still in flight on a dead connection makes this wait for it); the
-- runs of $2 that do not exist (the commit then writes nothing); and those
-- with unresolved DLQ entries (only their successes can resolve one, so
-- dlq_resolve_by_key is skipped for the others: most runs, most commits).
-- Each run is a probe of runs' primary key (an EXCEPT against all of runs
-- scanned the whole table every commit: 5 ms a commit with 20,000 runs).
WITH token AS (
    INSERT INTO commits (token) VALUES ($1) ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM token) = 1 AS fresh,
       ARRAY(SELECT r.id FROM unnest($2::text[]) AS r(id)
             WHERE NOT EXISTS (SELECT 1 FROM runs WHERE runs.id = r.id)) AS missing,
       ARRAY(SELECT r.id FROM unnest($2::text[]) AS r(id)
             WHERE EXISTS (SELECT 1 FROM dlq
                           WHERE dlq.run_id = r.id AND dlq.status <> 'resolved')) AS open

-- name: job_upsert
-- Jobs finished (again): each row is replaced, except that a redriven job
-- (no idx) keeps its input position; seq follows the order of the arrays.
INSERT INTO jobs (run_id, key, idx, status, attempts, duration, result, has_result,
                  payload, payload_is_repr, seq, kind, error_type, message,
                  compensation_error, updated_at)
SELECT u.run_id, u.key, u.idx, u.status, u.attempts, u.duration, u.result,
       u.result IS NOT NULL, u.payload, u.payload_is_repr, nextval('job_seq'), u.kind,
       u.error_type, u.message, u.compensation_error, $14
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::integer[],
            $6::double precision[], $7::text[], $8::text[], $9::boolean[], $10::text[],
            $11::text[], $12::text[], $13::text[])
     WITH ORDINALITY AS u(run_id, key, idx, status, attempts, duration, result, payload,
                          payload_is_repr, kind, error_type, message, compensation_error, ord)
ORDER BY u.ord
ON CONFLICT (run_id, key) DO UPDATE SET
    idx = coalesce(excluded.idx, jobs.idx), status = excluded.status,
    attempts = excluded.attempts, duration = excluded.duration,
    result = excluded.result, has_result = excluded.has_result,
    payload = excluded.payload, payload_is_repr = excluded.payload_is_repr,
    seq = excluded.seq, kind = excluded.kind, error_type = excluded.error_type,
    message = excluded.message, compensation_error = excluded.compensation_error,
    updated_at = excluded.updated_at

-- name: job_success
-- The commonest segment, plain successes of one run ($1): job_upsert with
-- its empty columns left out, 5 arrays instead of 13 to encode and unnest.
INSERT INTO jobs (run_id, key, idx, status, attempts, duration, result, has_result, seq,
                  updated_at)
SELECT $1, u.key, u.idx, 'succeeded', u.attempts, u.duration, u.result, u.result IS NOT NULL,
       nextval('job_seq'), $7
FROM unnest($2::text[], $3::bigint[], $4::integer[], $5::double precision[], $6::text[])
     WITH ORDINALITY AS u(key, idx, attempts, duration, result, ord)
ORDER BY u.ord
ON CONFLICT (run_id, key) DO UPDATE SET
    idx = coalesce(excluded.idx, jobs.idx), status = excluded.status,
    attempts = excluded.attempts, duration = excluded.duration,
    result = excluded.result, has_result = excluded.has_result,
    payload = NULL, payload_is_repr = false, seq = excluded.seq, kind = NULL,
    error_type = NULL, message = NULL, compensation_error = NULL,
    updated_at = excluded.updated_at

-- name: job_copy
-- job_success for a run this store created (a fresh run's jobs have no rows
-- yet): the rows go in by binary COPY (asyncpg's copy_records_to_table sends
-- exactly this statement; the store takes the column list from here), no
-- unnest and no ON CONFLICT's speculative insertion. seq is the column's
-- default, nextval('job_seq') (schema step 4), computed row by row in the
-- order of the rows. Should a row exist after all, the unique violation
-- aborts the transaction and the store redoes the commit with job_success.
COPY jobs (run_id, key, idx, status, attempts, duration, result, has_result, updated_at)
FROM STDIN (FORMAT binary)

-- name: job_compensate
-- How compensations went (same arrays as job_upsert): a job keeps its
-- completion order, result and payload; only its status and
-- compensation_error change.
INSERT INTO jobs (run_id, key, idx, status, attempts, duration, result, has_result,
                  payload, payload_is_repr, seq, kind, error_type, message,
                  compensation_error, updated_at)
SELECT u.run_id, u.key, u.idx, u.status, u.attempts, u.duration, u.result,
       u.result IS NOT NULL, u.payload, u.payload_is_repr, nextval('job_seq'), u.kind,
       u.error_type, u.message, u.compensation_error, $14
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::integer[],
            $6::double precision[], $7::text[], $8::text[], $9::boolean[], $10::text[],
            $11::text[], $12::text[], $13::text[])
     WITH ORDINALITY AS u(run_id, key, idx, status, attempts, duration, result, payload,
                          payload_is_repr, kind, error_type, message, compensation_error, ord)
ORDER BY u.ord
ON CONFLICT (run_id, key) DO UPDATE SET
    status = excluded.status, compensation_error = excluded.compensation_error,
    updated_at = excluded.updated_at

-- name: dlq_dead
-- Dead-lettered jobs: a redriven one ($3: the entry it came from) updates
-- that entry, a job with an unresolved entry (re-run by retry_dead=) updates
-- it, any other gets a new entry. An update keeps the entry's created_at and
-- payload, appends the new attempts to its history (JSON arrays joined as
-- text) and counts a re-run of a "dead" entry as a redrive. In an UPDATE
-- every expression sees the OLD row.
WITH d AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::boolean[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
        WITH ORDINALITY AS d(run_id, key, redrive_of, payload, payload_is_repr, kind,
                             error_type, message, traceback, attempts, ord)
), t AS (
    SELECT d.*,
           CASE WHEN d.redrive_of IS NOT NULL
                THEN (SELECT e.id FROM dlq e WHERE e.id = d.redrive_of)
                ELSE (SELECT max(e.id) FROM dlq e
                      WHERE e.run_id = d.run_id AND e.key = d.key AND e.status <> 'resolved')
           END AS target
    FROM d
), updated AS (
    UPDATE dlq SET
        redrive_count = dlq.redrive_count + (dlq.status = 'dead')::integer,
        status = 'dead',
        attempts = CASE WHEN dlq.attempts = '[]' THEN t.attempts
                        WHEN t.attempts = '[]' THEN dlq.attempts
                        ELSE left(dlq.attempts, -1) || ',' || substr(t.attempts, 2) END,
        kind = t.kind, error_type = t.error_type, message = t.message,
        traceback = t.traceback,
        payload_is_repr = CASE WHEN dlq.payload IS NULL THEN t.payload_is_repr
                               ELSE dlq.payload_is_repr END,
        payload = coalesce(dlq.payload, t.payload),
        updated_at = $11
    FROM t WHERE dlq.id = t.target
    RETURNING dlq.id
)
INSERT INTO dlq (run_id, key, payload, payload_is_repr, kind, error_type, message,
                 traceback, attempts, created_at, updated_at)
SELECT t.run_id, t.key, t.payload, t.payload_is_repr, t.kind, t.error_type, t.message,
       t.traceback, t.attempts, $11, $11
FROM t WHERE t.target IS NULL ORDER BY t.ord

-- name: dlq_resolve_by_id
-- Redriven jobs that succeeded resolve the entry they came from.
UPDATE dlq SET redrive_count = dlq.redrive_count + (dlq.status = 'dead')::integer,
               status = 'resolved', updated_at = $2
WHERE dlq.id = ANY($1::bigint[])

-- name: dlq_resolve_by_key
-- Any other success resolves its job's unresolved entries (retry_dead=);
-- a probe of the small partial index dlq_open per succeeded job.
UPDATE dlq SET redrive_count = dlq.redrive_count + (dlq.status = 'dead')::integer,
               status = 'resolved', updated_at = $3
FROM unnest($1::text[], $2::text[]) AS s(run_id, key)
WHERE dlq.run_id = s.run_id AND dlq.key = s.key AND dlq.status <> 'resolved'

-- name: commits_forget
-- Tokens only matter while a commit may still be retried (seconds): keep an hour.
DELETE FROM commits WHERE committed_at < now() - interval '1 hour'

-- ------------------------------------------------------------------ dead-letter queue
-- The filters of dlq.list/export/purge: each is ignored when its parameter
-- is NULL. $3 (error_type) matches the qualified name or its last dotted
-- parts; $5 (since) is inclusive, $6 (until) exclusive; LIMIT NULL is none.

-- name: dlq_purge
DELETE FROM dlq WHERE id IN (
    SELECT id FROM dlq
    WHERE ($1::text IS NULL OR run_id = $1)
      AND ($2::text IS NULL OR kind = $2)
      AND ($3::text IS NULL OR error_type = $3 OR right(error_type, length($3) + 1) = '.' || $3)
      AND ($4::text IS NULL OR status = $4)
      AND ($5::double precision IS NULL OR created_at >= $5)
      AND ($6::double precision IS NULL OR created_at < $6)
    ORDER BY id
    LIMIT $7::bigint
)

-- name: dlq_page
-- dlq.list (no $7) and one page of export: the filters ($1-$6), entries
-- after id $7 (keyset pagination by the primary key, never OFFSET), at most $8.
SELECT id, run_id, key, payload, payload_is_repr, kind, error_type, message, traceback,
       attempts, redrive_count, status, created_at
FROM dlq
WHERE ($1::text IS NULL OR run_id = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND ($3::text IS NULL OR error_type = $3 OR right(error_type, length($3) + 1) = '.' || $3)
  AND ($4::text IS NULL OR status = $4)
  AND ($5::double precision IS NULL OR created_at >= $5)
  AND ($6::double precision IS NULL OR created_at < $6)
  AND ($7::bigint IS NULL OR id > $7)
ORDER BY id
LIMIT $8::bigint

-- name: dlq_get
SELECT id, run_id, key, payload, payload_is_repr, kind, error_type, message, traceback,
       attempts, redrive_count, status, created_at
FROM dlq WHERE id = $1

-- name: dlq_mark_redriven
-- redrive() starts: the entries leave "dead" (unknown ids are ignored). Like
-- a group commit it claims a token ($3) in the same transaction, so a retry
-- after a lost connection does not count the redrive twice.
WITH token AS (
    INSERT INTO commits (token) VALUES ($3) ON CONFLICT DO NOTHING RETURNING 1
)
UPDATE dlq SET status = 'redriven', redrive_count = redrive_count + 1, updated_at = $2
WHERE id = ANY($1::bigint[]) AND EXISTS (SELECT 1 FROM token)

-- name: dlq_undead_redriven
-- A process takes the run (begin_run): entries a redrive that died left
-- "redriven" are dead again, so they can be redriven again.
UPDATE dlq SET status = 'dead', updated_at = $2 WHERE run_id = $1 AND status = 'redriven'
