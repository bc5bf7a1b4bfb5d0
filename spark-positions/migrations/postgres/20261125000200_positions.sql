-- spark-positions. Decimals are NUMERIC and travel as text in both
-- directions: SQL only adds, subtracts and compares them; every rounding
-- happens in Rust (PostgreSQL's round() breaks ties away from zero).
CREATE TABLE IF NOT EXISTS spark_positions (
    id             BIGSERIAL PRIMARY KEY,
    account_id     TEXT     NOT NULL,
    instrument     TEXT     NOT NULL,
    status         TEXT     NOT NULL CHECK (status IN ('open', 'closed')),
    -- Signed: positive long, negative short; zero only when closed.
    quantity       NUMERIC  NOT NULL,
    -- Signed exact cost of the open quantity (sum of signed qty * price,
    -- less what reductions took out).
    cost_basis     NUMERIC  NOT NULL,
    realized_pnl   NUMERIC  NOT NULL,
    currency       TEXT     NOT NULL,
    -- The most decimal places of any fill price, for the average price.
    price_scale    INTEGER  NOT NULL,
    opened_at_ms   BIGINT   NOT NULL,
    closed_at_ms   BIGINT,
    version        BIGINT   NOT NULL
);

-- The guarantee: at most one open position per account and instrument. Every
-- indexed column is NOT NULL, so NULLs cannot slip a duplicate past it.
-- On a live table, create it without blocking writes instead:
--   CREATE UNIQUE INDEX CONCURRENTLY spark_positions_one_open ...
-- (outside a transaction; sqlx runs each migration in one, so do that by hand).
CREATE UNIQUE INDEX IF NOT EXISTS spark_positions_one_open
    ON spark_positions (account_id, instrument) WHERE status = 'open';

CREATE INDEX IF NOT EXISTS spark_positions_account ON spark_positions (account_id, id);

CREATE TABLE IF NOT EXISTS spark_position_fills (
    fill_id          TEXT     PRIMARY KEY,
    position_id      BIGINT   REFERENCES spark_positions (id),
    -- The position version this fill produced: fills ordered by
    -- (position_id, position_version) replay the position exactly.
    position_version BIGINT,
    account_id       TEXT     NOT NULL,
    instrument       TEXT     NOT NULL,
    side             TEXT     NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity         NUMERIC  NOT NULL,
    price            NUMERIC  NOT NULL,
    currency         TEXT     NOT NULL,
    applied_at_ms    BIGINT   NOT NULL
);
