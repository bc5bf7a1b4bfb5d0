-- spark-outbox on SQLite: dead letters from before dead letters blocked are
-- recorded as skipped; see the PostgreSQL migration.
UPDATE spark_outbox
   SET skipped_by = 'migration 20261126091800 (dead before dead letters blocked)',
       skipped_at_ms = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
 WHERE status = 'dead' AND skipped_at_ms IS NULL AND first_failed_at_ms IS NULL;
