//! The outbox against real PostgreSQL, real NATS JetStream and a real HTTP
//! webhook on loopback. The relay's guarantees are one suite, written once
//! and run against both backends (`suite.rs`); `postgres.rs` and `sqlite.rs`
//! hold what only one backend does.

mod claims;
mod common;
mod suite;

mod inbox;
mod nats;
mod postgres;
mod relay;
mod scenarios;
mod sqlite;
mod webhook;
