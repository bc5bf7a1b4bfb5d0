-- spark-idempotency: one record per (scope, key). See the PostgreSQL
-- migration for the meaning of each column.
CREATE TABLE IF NOT EXISTS spark_idempotency_keys (
    scope            TEXT    NOT NULL,
    key              TEXT    NOT NULL,
    fingerprint      BLOB    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('in_flight', 'completed')),
    fencing          INTEGER NOT NULL,
    first_fencing    INTEGER NOT NULL,
    lease_until_ms   INTEGER NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    expires_at_ms    INTEGER NOT NULL,
    response_status  INTEGER,
    response_headers TEXT,
    response_body    BLOB,
    PRIMARY KEY (scope, key)
);

CREATE INDEX IF NOT EXISTS spark_idempotency_keys_expires_at
    ON spark_idempotency_keys (expires_at_ms);
