-- The statements of exact limits in shared runs (ab.SharedRun(exact_limits=...)), by name.
--
-- Same form as postgres_shared.sql. Times are epoch seconds on the DATABASE
-- clock: $1 of every statement that reads the clock is NULL in production
-- (now() is used) and a number only in tests that inject a clock. Each
-- statement is one short transaction of its own: none is held across a call.

-- name: slots_make
-- A bulkhead of $3 slots for dependency $2 (every worker of the run makes
-- them on joining; the first one's rows stay). Slots above $3 (a resumed run
-- whose limit shrank) go.
WITH gone AS (
    DELETE FROM limit_slots WHERE run_id = $1 AND dependency = $2 AND slot >= $3
)
INSERT INTO limit_slots (run_id, dependency, slot)
SELECT $1, $2, g FROM generate_series(0, $3 - 1) AS g
ON CONFLICT (run_id, dependency, slot) DO NOTHING

-- name: rate_make
-- A rate of one start every $3 seconds for dependency $2.
INSERT INTO limit_rates (run_id, dependency, spacing) VALUES ($1, $2, $3)
ON CONFLICT (run_id, dependency) DO UPDATE SET spacing = excluded.spacing

-- name: slots_claim
-- Lease up to $5 free slots of dependency $3 for owner $4, for $6 seconds: free
-- ones and ones whose lease ran out (their worker died or is partitioned away:
-- no reaper). SKIP LOCKED lets concurrent claimers pass each other; each claim
-- raises the slot's epoch, so a late release by its previous holder is a no-op.
-- Fairness: a claimer that gets fewer than $5 records its demand (for $8 s);
-- while another worker's demand stands, a slot this owner freed less than $7 s
-- ago is left to that worker. The free slots are picked once (MATERIALIZED):
-- a subquery in UPDATE ... FROM may be rescanned per row, and a rescan skips
-- the rows this very statement locked and finds more (measured: 4 slots
-- leased for LIMIT 3).
WITH clock AS (SELECT coalesce($1::double precision, extract(epoch FROM now())) AS now),
free AS MATERIALIZED (
    SELECT f.slot FROM limit_slots f, clock
    WHERE f.run_id = $2 AND f.dependency = $3
      AND (f.owner IS NULL OR f.lease_until <= clock.now)
      AND NOT (f.released_by IS NOT DISTINCT FROM $4 AND f.released_at > clock.now - $7
               AND EXISTS (SELECT 1 FROM limit_waits w
                           WHERE w.run_id = $2 AND w.dependency = $3 AND w.owner <> $4
                             AND w.until > clock.now))
    ORDER BY f.slot
    LIMIT $5
    FOR UPDATE OF f SKIP LOCKED
),
claimed AS (
    UPDATE limit_slots s SET owner = $4, epoch = s.epoch + 1, lease_until = clock.now + $6
    FROM free, clock
    WHERE s.run_id = $2 AND s.dependency = $3 AND s.slot = free.slot
    RETURNING s.slot, s.epoch
),
wanting AS (
    INSERT INTO limit_waits (run_id, dependency, owner, until)
    SELECT $2, $3, $4, clock.now + $8 FROM clock
    WHERE (SELECT count(*) FROM claimed) < $5
    ON CONFLICT (run_id, dependency, owner) DO UPDATE SET until = excluded.until
),
served AS (
    DELETE FROM limit_waits w
    WHERE w.run_id = $2 AND w.dependency = $3 AND w.owner = $4
      AND (SELECT count(*) FROM claimed) >= $5
)
SELECT slot, epoch FROM claimed

-- name: slots_release
-- Calls ended: their slots are free at once (where owner and epoch still match).
UPDATE limit_slots s SET owner = NULL, lease_until = NULL, released_by = $2,
       released_at = coalesce($6::double precision, extract(epoch FROM now()))
FROM unnest($3::text[], $4::integer[], $5::bigint[]) AS r(dependency, slot, epoch)
WHERE s.run_id = $1 AND s.owner = $2 AND s.dependency = r.dependency AND s.slot = r.slot
  AND s.epoch = r.epoch

-- name: slots_renew
-- The heartbeat renews every slot owner $3 still holds under a live lease; the
-- ones that come back are still its own.
UPDATE limit_slots SET
    lease_until = coalesce($1::double precision, extract(epoch FROM now())) + $4
WHERE run_id = $2 AND owner = $3
  AND lease_until > coalesce($1::double precision, extract(epoch FROM now()))
RETURNING dependency, slot, epoch

-- name: slots_drop
-- A session ends: whatever it still holds is free.
WITH unwant AS (DELETE FROM limit_waits WHERE run_id = $1 AND owner = $2)
UPDATE limit_slots SET owner = NULL, lease_until = NULL WHERE run_id = $1 AND owner = $2

-- name: rate_reserve
-- Reserve $4 starts of dependency $3: the first at the next free start time (or
-- now, if that has passed), the others `spacing` apart; the row moves on past
-- them. Returns the first start and now (epoch seconds). Starts reserved by
-- every worker are `spacing` apart on the database clock.
WITH clock AS (SELECT coalesce($1::double precision, extract(epoch FROM now())) AS now)
UPDATE limit_rates r SET tat = greatest(r.tat, clock.now) + $4 * r.spacing
FROM clock
WHERE r.run_id = $2 AND r.dependency = $3
RETURNING r.tat - $4 * r.spacing AS first, clock.now AS now, r.spacing

-- name: limits_forget
-- A finished run's slots and rates go (its jobs stay).
WITH slots AS (DELETE FROM limit_slots WHERE run_id = $1),
     waits AS (DELETE FROM limit_waits WHERE run_id = $1)
DELETE FROM limit_rates WHERE run_id = $1
