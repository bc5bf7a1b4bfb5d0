//! The test servers against the real binaries: a private PostgreSQL cluster.

mod cluster;
