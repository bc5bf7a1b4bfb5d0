-- spark-outbox: events written in the business transaction.
CREATE TABLE IF NOT EXISTS spark_outbox (
    -- Insertion order. Enqueue serializes transactions that write events for
    -- the same aggregate, so within an aggregate this is commit order.
    seq              BIGSERIAL PRIMARY KEY,
    id               UUID     NOT NULL UNIQUE,  -- UUIDv7, the message id sinks dedupe on
    aggregate_type   TEXT     NOT NULL,
    aggregate_id     TEXT     NOT NULL,
    event_type       TEXT     NOT NULL,
    payload          JSONB    NOT NULL,
    headers          JSONB    NOT NULL,
    created_at_ms    BIGINT   NOT NULL,
    status           TEXT     NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'published', 'dead')),
    attempts         INTEGER  NOT NULL DEFAULT 0,
    -- Not before this time (backoff after a failure).
    available_at_ms  BIGINT   NOT NULL,
    -- A relay's claim: other relays skip the event until this time.
    locked_until_ms  BIGINT   NOT NULL DEFAULT 0,
    locked_by        TEXT,
    last_error       TEXT,
    published_at_ms  BIGINT
);

-- The claim scans pending events in order, and checks each aggregate's head.
CREATE INDEX IF NOT EXISTS spark_outbox_pending ON spark_outbox (seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS spark_outbox_aggregate_pending
    ON spark_outbox (aggregate_type, aggregate_id, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS spark_outbox_published ON spark_outbox (published_at_ms) WHERE status = 'published';

-- Inbox for consumers: ids of messages already processed.
CREATE TABLE IF NOT EXISTS spark_inbox (
    message_id       TEXT     PRIMARY KEY,
    processed_at_ms  BIGINT   NOT NULL
);
