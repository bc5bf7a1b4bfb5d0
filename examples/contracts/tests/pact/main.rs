//! The Pact contracts of the order service, one test binary (feature
//! `pact`):
//!
//! - `consumer_ui`, `consumer_webhook`: the consumers' tests. Each builds
//!   its contract with `pact_consumer`, runs the consumer's own code
//!   ([`order_service_contracts::ui`], [`order_service_contracts::webhook`])
//!   against it, writes the pact to a temporary directory and compares it
//!   with the committed one in `pacts/` (`PACT_UPDATE=1` rewrites that).
//! - `provider_ui`, `provider_webhook`: `pact_verifier` replays the
//!   committed pacts against the real service (SQLite always, PostgreSQL
//!   when `DATABASE_URL` is set) and against what the real outbox relay
//!   delivers to a webhook; and shows that a deliberate change to a field
//!   fails the verification.

mod consumer_ui;
mod consumer_webhook;
mod examples;
mod pact_file;
mod provider_ui;
mod provider_webhook;
mod verify;
