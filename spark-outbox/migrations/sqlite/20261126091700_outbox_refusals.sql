-- spark-outbox on SQLite: refusals apart from attempts; see the PostgreSQL migration.
ALTER TABLE spark_outbox ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
