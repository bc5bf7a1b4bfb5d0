-- spark-outbox: dead letters written before dead letters blocked their
-- aggregate did not hold anything back: the events behind them were
-- published. Under the new default (`DeadLetterPolicy::Block`) they would
-- suddenly stop every later event of their aggregate after the upgrade, so
-- they are recorded as skipped by this migration; they stay listed, and
-- `spark outbox retry <id>` still requeues one. They are recognisable:
-- every failure recorded since the relay-fencing migration sets
-- `first_failed_at_ms`.
UPDATE spark_outbox
   SET skipped_by = 'migration 20261126091800 (dead before dead letters blocked)',
       skipped_at_ms = (extract(epoch FROM now()) * 1000)::bigint
 WHERE status = 'dead' AND skipped_at_ms IS NULL AND first_failed_at_ms IS NULL;
