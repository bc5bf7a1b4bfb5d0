//! Behaviour tests of spark-idempotency against every backend: in-memory,
//! SQLite (always) and PostgreSQL (when `DATABASE_URL` is set).

mod harness;

mod conformance;
mod http;
mod postgres;
mod sqlite;
mod transactional;
