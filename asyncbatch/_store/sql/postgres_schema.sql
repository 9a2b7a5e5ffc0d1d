-- The asyncbatch PostgreSQL schema, as migration steps applied in order.
--
-- Each step starts with a "-- migration: N <what it does>" line and runs in
-- one transaction, under pg_advisory_xact_lock, with search_path set to the
-- store's schema (?schema=NAME, default asyncbatch). The schema version is
-- the highest N in schema_version. To change the schema, APPEND a step:
-- never edit a released one. A database migrated by a newer asyncbatch
-- (a version above the last step here) is refused with a hint to upgrade.
--
-- Values (results, payloads, configs, reports, attempt histories) are JSON
-- TEXT, exactly as the SQLite store keeps them: they come back byte for byte
-- (key order, number spelling), and the server never parses them.
-- Timestamps are epoch seconds (double precision) from the store's clock.

-- migration: 1 runs, jobs, the dead-letter queue, commit tokens
CREATE TABLE runs (
    id          text PRIMARY KEY,
    job         text NOT NULL DEFAULT '',
    status      text NOT NULL,
    config      text NOT NULL DEFAULT '{}',
    counts      text NOT NULL DEFAULT '{}',
    report      text,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL,
    -- list_runs' tie-break: later rows first when created_at is equal
    created_seq bigint GENERATED ALWAYS AS IDENTITY
);

-- Completion order of every job of every run. One sequence, not a counter
-- row: concurrent writers never queue on one hot row for their seq.
CREATE SEQUENCE job_seq AS bigint CACHE 1;

-- No foreign key from jobs to runs: its trigger runs once per inserted row
-- and measured a quarter of a group commit's server time. Each commit checks
-- instead, once, that its runs exist (commit_begin), and asyncbatch never
-- deletes a run. (dlq keeps its foreign key: it is written rarely.)
CREATE TABLE jobs (
    run_id             text NOT NULL,
    key                text NOT NULL,
    idx                bigint,
    status             text NOT NULL,
    attempts           integer NOT NULL DEFAULT 0,
    duration           double precision NOT NULL DEFAULT 0,
    result             text,
    has_result         boolean NOT NULL DEFAULT false,
    payload            text,
    payload_is_repr    boolean NOT NULL DEFAULT false,
    seq                bigint NOT NULL,
    kind               text,
    error_type         text,
    message            text,
    compensation_error text,
    updated_at         double precision NOT NULL,
    PRIMARY KEY (run_id, key)
);
-- jobs in completion order (rollback walks it backwards)
CREATE INDEX jobs_run_seq ON jobs (run_id, seq);

CREATE TABLE dlq (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key             text NOT NULL,
    payload         text,
    payload_is_repr boolean NOT NULL DEFAULT false,
    kind            text,
    error_type      text,
    message         text,
    traceback       text,
    attempts        text NOT NULL DEFAULT '[]',
    redrive_count   integer NOT NULL DEFAULT 0,
    status          text NOT NULL DEFAULT 'dead',
    created_at      double precision NOT NULL,
    updated_at      double precision NOT NULL
);
CREATE INDEX dlq_run_status ON dlq (run_id, status);
-- A success resolves its job's open entry: every commit probes this index
-- for its succeeded keys, and it only holds the (few) unresolved entries.
CREATE INDEX dlq_open ON dlq (run_id, key) WHERE status <> 'resolved';

-- One row per group commit that landed, so a commit retried after a lost
-- connection (did the COMMIT reach the server?) is applied exactly once.
-- Rows older than an hour are deleted by the store now and then.
CREATE TABLE commits (
    token       text PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT now()
);

-- migration: 2 run ownership: the lease of the one process running the run
-- The owner (host:pid:token), since when it has owned the run, and its last
-- heartbeat, as in the SQLite store (its migration step 2).
ALTER TABLE runs
    ADD COLUMN owner        text,
    ADD COLUMN owned_since  double precision,
    ADD COLUMN heartbeat_at double precision;

-- migration: 3 shared runs: the input as leased chunks, one row per worker
-- A run worked by many processes (run_batch(..., shared=True) and
-- `asyncbatch worker`): its input is written as chunk rows that workers
-- claim with a lease (database clock) and an epoch (the fencing token: a
-- worker's writes count only while its epoch is the chunk's). Jobs still get
-- one row each in jobs when they finish, written by the group commit.
ALTER TABLE runs
    ADD COLUMN shared       boolean NOT NULL DEFAULT false,
    ADD COLUMN input_done   boolean NOT NULL DEFAULT false,
    ADD COLUMN abort_reason text;

CREATE TABLE chunks (
    run_id      text NOT NULL,
    no          bigint NOT NULL,               -- input position of its first item
    keys        text[] NOT NULL,
    idxs        bigint[] NOT NULL,
    payloads    text NOT NULL,                 -- a JSON array, one item per key
    state       text NOT NULL DEFAULT 'pending',  -- pending | claimed | done
    owner       text,
    lease_until timestamptz,
    epoch       bigint NOT NULL DEFAULT 0,
    lookup      boolean NOT NULL DEFAULT false,   -- keys may have finished before: look them up
    -- A retry handed back to the run (its backoff is longer than half a lease):
    -- one key, claimable from due_at on, with the job's attempts so far in retry.
    due_at      timestamptz,
    retry       text,
    PRIMARY KEY (run_id, no)
);
-- What a claim scans: only the chunks not done yet, of any run (a database
-- holding many finished runs keeps this index small: their chunks are deleted).
CREATE INDEX chunks_open ON chunks (run_id, no) WHERE state <> 'done';

-- Each worker's counts (summed for run-wide error budgets) and report (merged
-- into the run's report when it finishes), written by its heartbeat.
CREATE TABLE workers (
    run_id   text NOT NULL,
    owner    text NOT NULL,
    counts   text NOT NULL DEFAULT '{}',
    report   text,
    state    text NOT NULL DEFAULT 'working',   -- working | stopped
    beat_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, owner)
);

-- migration: 4 jobs.seq defaults to the sequence: a fresh run's successes arrive by COPY
-- A run this store created has no job rows yet, so its plain successes are
-- written by a binary COPY into jobs (no unnest, no ON CONFLICT: a fifth
-- less server time a row, and asyncpg encodes the rows without an array
-- parameter's per-element checks). COPY cannot call nextval itself, but it
-- computes the default of every column it is not given, row by row in the
-- order the rows come: so seq still follows completion order.
ALTER TABLE jobs ALTER COLUMN seq SET DEFAULT nextval('job_seq');

-- migration: 5 exact limits of shared runs: concurrency slots and rate reservations
-- ab.SharedRun(exact_limits=...): a dependency's bulkhead and rate limit hold
-- across every worker of the run. A bulkhead of N is N slot rows a worker
-- leases for one call (owner, epoch, lease_until on the database clock as
-- epoch seconds: a dead worker's slots come back when its lease runs out).
-- A rate is one row holding the next free start time (tat, GCRA): a worker
-- reserves k starts, spaced `spacing` seconds apart, in one UPDATE.
-- limit_waits is the demand: workers that found too few free slots lately, so
-- that a worker which frees a slot leaves it to them for a moment (fairness).
CREATE TABLE limit_slots (
    run_id      text NOT NULL,
    dependency  text NOT NULL,
    slot        integer NOT NULL,
    owner       text,
    epoch       bigint NOT NULL DEFAULT 0,
    lease_until double precision,
    released_by text,                -- who freed it last, and when: see limit_waits
    released_at double precision,
    PRIMARY KEY (run_id, dependency, slot)
);
-- A worker's heartbeat renews (and a release finds) its slots by owner.
CREATE INDEX limit_slots_owner ON limit_slots (run_id, owner) WHERE owner IS NOT NULL;

CREATE TABLE limit_waits (
    run_id     text NOT NULL,
    dependency text NOT NULL,
    owner      text NOT NULL,
    until      double precision NOT NULL,  -- renewed by each unsatisfied claim
    PRIMARY KEY (run_id, dependency, owner)
);

CREATE TABLE limit_rates (
    run_id     text NOT NULL,
    dependency text NOT NULL,
    spacing    double precision NOT NULL,   -- seconds between two starts (per / n)
    tat        double precision NOT NULL DEFAULT 0,  -- the next free start (epoch seconds)
    PRIMARY KEY (run_id, dependency)
);
