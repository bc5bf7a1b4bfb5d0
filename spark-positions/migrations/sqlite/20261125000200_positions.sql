-- spark-positions. SQLite has no exact decimal type: decimals are TEXT and
-- every computation happens in Rust. See the PostgreSQL migration for the
-- meaning of each column.
CREATE TABLE IF NOT EXISTS spark_positions (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     TEXT    NOT NULL,
    instrument     TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('open', 'closed')),
    quantity       TEXT    NOT NULL,
    cost_basis     TEXT    NOT NULL,
    realized_pnl   TEXT    NOT NULL,
    currency       TEXT    NOT NULL,
    price_scale    INTEGER NOT NULL,
    opened_at_ms   INTEGER NOT NULL,
    closed_at_ms   INTEGER,
    version        INTEGER NOT NULL
);

-- The guarantee: at most one open position per account and instrument.
CREATE UNIQUE INDEX IF NOT EXISTS spark_positions_one_open
    ON spark_positions (account_id, instrument) WHERE status = 'open';

CREATE INDEX IF NOT EXISTS spark_positions_account ON spark_positions (account_id, id);

CREATE TABLE IF NOT EXISTS spark_position_fills (
    fill_id          TEXT    PRIMARY KEY,
    position_id      INTEGER REFERENCES spark_positions (id),
    position_version INTEGER,
    account_id       TEXT    NOT NULL,
    instrument       TEXT    NOT NULL,
    side             TEXT    NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity         TEXT    NOT NULL,
    price            TEXT    NOT NULL,
    currency         TEXT    NOT NULL,
    applied_at_ms    INTEGER NOT NULL
);
