//! Behaviour tests of spark-money: golden vectors, property tests, serde and
//! heap-allocation checks.

mod allocations;
mod golden;
mod props;
