-- spark-outbox on SQLite; see the PostgreSQL migration for each column.
CREATE TABLE IF NOT EXISTS spark_outbox (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    headers          TEXT    NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'published', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    available_at_ms  INTEGER NOT NULL,
    locked_until_ms  INTEGER NOT NULL DEFAULT 0,
    locked_by        TEXT,
    last_error       TEXT,
    published_at_ms  INTEGER
);

CREATE INDEX IF NOT EXISTS spark_outbox_pending ON spark_outbox (seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS spark_outbox_aggregate_pending
    ON spark_outbox (aggregate_type, aggregate_id, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS spark_outbox_published ON spark_outbox (published_at_ms) WHERE status = 'published';

CREATE TABLE IF NOT EXISTS spark_inbox (
    message_id       TEXT    PRIMARY KEY,
    processed_at_ms  INTEGER NOT NULL
);
