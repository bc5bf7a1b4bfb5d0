//! spark-chaos against real PostgreSQL servers of the test's own.

mod restore;
