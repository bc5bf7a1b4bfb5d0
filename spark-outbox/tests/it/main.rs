//! The outbox against real PostgreSQL, real NATS JetStream and a real HTTP
//! webhook on loopback; SQLite through the same suite where it applies.

mod claims;
mod common;

mod inbox;
mod nats;
mod postgres;
mod relay;
mod sqlite;
mod webhook;
