-- Prices and quantities become NUMERIC on PostgreSQL, so the database keeps
-- them exact and can compare and sum them (`spark check decimal` warns on
-- money in text). NUMERIC keeps the scale it was given: '101.30' reads back
-- as '101.30'. SQLite keeps canonical decimal text: it has no exact type.
ALTER TABLE order_service_orders
    ALTER COLUMN quantity TYPE NUMERIC USING quantity::numeric,
    ALTER COLUMN price TYPE NUMERIC USING price::numeric;
