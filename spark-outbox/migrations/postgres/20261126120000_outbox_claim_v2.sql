-- spark-outbox v2: claims that cost the same at any backlog, and an enqueue
-- that does not NOTIFY while the relays are busy anyway.

-- The aggregate as one integer: the key the enqueue's advisory lock takes,
-- computed by PostgreSQL for every row however it is written. The claim
-- looks an aggregate up by it; two aggregates whose keys collide (2^-64)
-- are merely ordered together.
ALTER TABLE spark_outbox ADD COLUMN IF NOT EXISTS agg_key BIGINT
    GENERATED ALWAYS AS (hashtextextended(aggregate_type || chr(31) || aggregate_id, 7151)) STORED;

-- 'held': pending, but queued behind an older event of its aggregate that
-- cannot go yet (backing off, or a dead letter under the blocking policy).
-- Held rows leave the index the claim scans, so a long queue behind one
-- stuck aggregate costs the other aggregates nothing; they are made
-- pending again when the event ahead of them is published or skipped.
ALTER TABLE spark_outbox DROP CONSTRAINT IF EXISTS spark_outbox_status_check;
ALTER TABLE spark_outbox ADD CONSTRAINT spark_outbox_status_check
    CHECK (status IN ('pending', 'held', 'published', 'dead'));

DROP INDEX IF EXISTS spark_outbox_aggregate_pending;
DROP INDEX IF EXISTS spark_outbox_aggregate_blocking;
-- Everything that can hold an aggregate back, by aggregate and order.
CREATE INDEX IF NOT EXISTS spark_outbox_aggregate
    ON spark_outbox (agg_key, seq) WHERE status IN ('pending', 'held', 'dead');
CREATE INDEX IF NOT EXISTS spark_outbox_held ON spark_outbox (agg_key) WHERE status = 'held';

-- A queue table: rows are written once, locked, and deleted. Room on each
-- page keeps the remaining updates (a failure, a hold) HOT, and the table
-- is vacuumed by row counts, not by a fraction of its size (a fraction of
-- a table that was briefly large lets dead rows pile up for hours).
ALTER TABLE spark_outbox SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 50000,
    autovacuum_vacuum_cost_delay = 0
);

-- Relays that are waiting for work. A NOTIFY serializes the commits of
-- every notifying transaction (PostgreSQL takes a database-wide lock for
-- it until the commit is flushed), so enqueues NOTIFY only while some relay
-- waits; a relay that is draining a backlog claims again without being
-- told.
CREATE TABLE IF NOT EXISTS spark_outbox_relays (
    relay       TEXT    PRIMARY KEY,
    idle        BOOLEAN NOT NULL,
    seen_at_ms  BIGINT  NOT NULL
);

-- Runs at commit (a deferred constraint trigger), so it reads the relays'
-- state as late as possible: a relay that went idle while the business
-- transaction was still running is told.
CREATE OR REPLACE FUNCTION spark_outbox_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM spark_outbox_relays WHERE idle) THEN
        PERFORM pg_notify('spark_outbox', '');
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS spark_outbox_wake ON spark_outbox;
CREATE CONSTRAINT TRIGGER spark_outbox_wake AFTER INSERT ON spark_outbox
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION spark_outbox_wake();
