//! Pact contracts of the order service, and what verifies them against the
//! real thing.
//!
//! Two consumers hold contracts with the order service, kept as pact files
//! in `pacts/` (Pact specification V4):
//!
//! - `trading-ui`, over HTTP ([`ui`]): place an order, replay it under the
//!   same `Idempotency-Key`, read it back, read the account's positions,
//!   and the problem+json shapes of an off-tick price (422), a malformed
//!   key (400) and a missing token (401).
//! - `order-webhook-receiver`, a message ([`webhook`]): the
//!   `order.accepted` event as a webhook receives it from the outbox relay,
//!   its body and its `Idempotency-Key`, `X-Spark-Event-Type` and
//!   `X-Spark-Signature` headers.
//!
//! The provider side is [`provider::Provider`]: the order service's own
//! router on a loopback port over a fresh SQLite or PostgreSQL database,
//! with provider states set up through the service's API and reset in the
//! database directly; and [`message::MessageProvider`], which answers the
//! Pact verifier with what the real relay delivered to a capturing webhook
//! ([`webhook::WebhookSink`]).
//!
//! The Pact tests themselves (`tests/pact`) need the `pact` feature, which
//! is off by default so that `cargo test --workspace` never builds the Pact
//! crates:
//!
//! ```sh
//! cargo test -p order-service-contracts --features pact
//! PACT_UPDATE=1 cargo test -p order-service-contracts --features pact   # rewrite pacts/
//! ```
//!
//! This library has no Pact dependency: the consumers' code, the provider
//! harness and the message provider are plain Rust over the workspace's
//! crates, and the unit tests beside them run in every build.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use order_service_contracts::provider::{Backend, Provider};
//! use order_service_contracts::ui::TradingUi;
//!
//! let provider = Provider::start(Backend::Sqlite, |app| app).await?.expect("SQLite never skips");
//! let ui = TradingUi::new(provider.url(), Some(order_service_contracts::provider::TOKEN))?;
//! let positions = ui.positions(order_service_contracts::provider::ACCOUNT).await?;
//! assert!(positions.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `pact` (off): builds the `pact` test binary with `pact_consumer`,
//!   `pact_verifier` and `pact_models`.

pub mod message;
pub mod provider;
pub mod ui;
pub mod webhook;
