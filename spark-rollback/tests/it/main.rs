//! Behaviour tests of the canary engine: recorded scenarios with their
//! expected decisions, properties over generated noise, and a real
//! Prometheus queried through the HTTP source.

mod export;
mod prometheus;
mod properties;
mod scenarios;
