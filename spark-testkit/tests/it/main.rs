//! The test servers against the real binaries: a private PostgreSQL cluster,
//! a pgBouncer in front of one, Prometheus and Alertmanager.

mod cluster;
mod pgbouncer;
mod prometheus;
