//! Behaviour tests of spark-positions: the arithmetic against an independent
//! model, and the same suite on SQLite and PostgreSQL.

mod model;
mod suite;
