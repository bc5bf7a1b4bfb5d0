-- spark-idempotency: one record per (scope, key).
-- Times are Unix milliseconds from the application's clock, so PostgreSQL and
-- SQLite behave identically and tests can drive time.
CREATE TABLE IF NOT EXISTS spark_idempotency_keys (
    scope            TEXT     NOT NULL,
    key              TEXT     NOT NULL,
    fingerprint      BYTEA    NOT NULL,
    state            TEXT     NOT NULL CHECK (state IN ('in_flight', 'completed')),
    -- Incremented on every takeover: a completion must present the current
    -- value, so a holder whose lease was taken over cannot complete.
    fencing          BIGINT   NOT NULL,
    -- The fencing number this record's current request started with; a
    -- claim whose fencing differs took over an earlier attempt.
    first_fencing    BIGINT   NOT NULL,
    lease_until_ms   BIGINT   NOT NULL,
    created_at_ms    BIGINT   NOT NULL,
    expires_at_ms    BIGINT   NOT NULL,
    response_status  INTEGER,
    response_headers TEXT,
    response_body    BYTEA,
    PRIMARY KEY (scope, key)
)
-- Every record is updated once (completion) soon after its insert. Free space
-- on the page lets that be a HOT update, with no new index entries.
WITH (fillfactor = 80);

-- GC and stats scan by expiry.
CREATE INDEX IF NOT EXISTS spark_idempotency_keys_expires_at
    ON spark_idempotency_keys (expires_at_ms);
