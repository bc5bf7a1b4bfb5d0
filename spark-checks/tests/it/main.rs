//! spark-checks against real servers.
