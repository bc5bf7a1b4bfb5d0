-- spark-outbox relays: claim tokens, failure time, dead letters that block.

-- The token of the claim holding the row. Every completion (published,
-- failed, released) requires it, so a relay whose lease ran out and whose
-- events were claimed again changes nothing when it finishes late.
ALTER TABLE spark_outbox ADD COLUMN IF NOT EXISTS claim_token TEXT;
-- When the event first failed: transient failures are retried for a time
-- budget measured from here, not for a count.
ALTER TABLE spark_outbox ADD COLUMN IF NOT EXISTS first_failed_at_ms BIGINT;
-- Who released the aggregate past this dead letter, and when (`spark outbox
-- skip`). An unskipped dead letter holds back the rest of its aggregate.
ALTER TABLE spark_outbox ADD COLUMN IF NOT EXISTS skipped_by TEXT;
ALTER TABLE spark_outbox ADD COLUMN IF NOT EXISTS skipped_at_ms BIGINT;

-- The claim checks each aggregate for a blocking dead letter.
CREATE INDEX IF NOT EXISTS spark_outbox_aggregate_blocking
    ON spark_outbox (aggregate_type, aggregate_id, seq) WHERE status = 'dead' AND skipped_at_ms IS NULL;
