-- spark-outbox relays on SQLite; see the PostgreSQL migration for each column.
ALTER TABLE spark_outbox ADD COLUMN claim_token TEXT;
ALTER TABLE spark_outbox ADD COLUMN first_failed_at_ms INTEGER;
ALTER TABLE spark_outbox ADD COLUMN skipped_by TEXT;
ALTER TABLE spark_outbox ADD COLUMN skipped_at_ms INTEGER;

CREATE INDEX IF NOT EXISTS spark_outbox_aggregate_blocking
    ON spark_outbox (aggregate_type, aggregate_id, seq) WHERE status = 'dead' AND skipped_at_ms IS NULL;
