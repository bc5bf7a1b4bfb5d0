-- The example service's own table. Decimals as text: the service never
-- computes with them in SQL.
CREATE TABLE IF NOT EXISTS order_service_orders (
    order_id       TEXT    PRIMARY KEY,
    client_id      TEXT    NOT NULL,
    account_id     TEXT    NOT NULL,
    symbol         TEXT    NOT NULL,
    side           TEXT    NOT NULL,
    quantity       TEXT    NOT NULL,
    price          TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL
);
