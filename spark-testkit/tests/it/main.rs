//! The test servers against the real binaries: a private PostgreSQL cluster
//! and a pgBouncer in front of one.

mod cluster;
mod pgbouncer;
