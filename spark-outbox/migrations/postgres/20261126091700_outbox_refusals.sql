-- spark-outbox: count the sink's refusals (permanent errors) apart from all
-- failed attempts. `max_permanent_attempts` is about refusals only: an event
-- that failed transiently through an outage must still get its few tries
-- when the receiver, mid-deploy, refuses it once.
ALTER TABLE spark_outbox ADD COLUMN IF NOT EXISTS refusals INTEGER NOT NULL DEFAULT 0;
