//! Behaviour tests of the canary engine: recorded scenarios with their
//! expected decisions, properties over generated noise, a real Prometheus
//! queried through the HTTP source, and rollbacks against loopback webhook
//! and Slack receivers.

mod export;
mod prometheus;
mod properties;
mod rollback;
mod scenarios;
mod watch;
