//! Scenario fixtures (filled in below).
