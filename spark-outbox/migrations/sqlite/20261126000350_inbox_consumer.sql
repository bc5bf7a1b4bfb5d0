-- spark-outbox on SQLite: key the inbox by (consumer, message_id); see the
-- PostgreSQL migration. SQLite cannot change a primary key in place, so the
-- table is rebuilt; existing rows move to the consumer 'default'.
CREATE TABLE spark_inbox_by_consumer (
    consumer         TEXT    NOT NULL DEFAULT 'default',
    message_id       TEXT    NOT NULL,
    processed_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
INSERT INTO spark_inbox_by_consumer (consumer, message_id, processed_at_ms)
    SELECT 'default', message_id, processed_at_ms FROM spark_inbox;
DROP TABLE spark_inbox;
ALTER TABLE spark_inbox_by_consumer RENAME TO spark_inbox;
