-- spark-outbox: key the inbox by (consumer, message_id), so two consumers
-- of one message each process it once. Rows recorded before belong to the
-- consumer 'default' (`Inbox::default()`); the column keeps that default so
-- a binary that does not name its consumer still writes there.
ALTER TABLE spark_inbox ADD COLUMN IF NOT EXISTS consumer TEXT NOT NULL DEFAULT 'default';
ALTER TABLE spark_inbox DROP CONSTRAINT IF EXISTS spark_inbox_pkey;
ALTER TABLE spark_inbox ADD CONSTRAINT spark_inbox_pkey PRIMARY KEY (consumer, message_id);
