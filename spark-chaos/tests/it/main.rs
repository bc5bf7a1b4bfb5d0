//! spark-chaos against real PostgreSQL servers of the test's own.

mod proxy;
mod restore;
