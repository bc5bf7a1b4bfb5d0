//! The base every Spark crate stands on: one database handle and one clock.
//!
//! - [`Database`] connects to PostgreSQL (production) or embedded SQLite (the
//!   default) from a URL, and runs every crate's [`Migrations`] in one call.
//! - [`Clock`] is the one source of time; engines take a [`SharedClock`] so
//!   tests drive a [`ManualClock`] instead of sleeping.
//! - [`redact_url`] keeps passwords out of every message.
//!
//! ```
//! use std::time::Duration;
//! use spark_db::{Clock, ManualClock, SharedClock};
//!
//! let clock = ManualClock::new(0);
//! let shared: SharedClock = std::sync::Arc::new(clock.clone());
//! clock.advance(Duration::from_millis(1500));
//! assert_eq!(shared.now_ms(), 1500);
//! ```
//!
//! # Features
//!
//! - `sqlite` (default): the embedded backend, SQLite bundled.
//! - `postgres`: the production backend.
//!
//! [`Database`] exists when at least one backend is enabled; the clock and
//! [`Migrations`] always do.

mod clock;
mod database;
mod error;
mod url;

pub use crate::clock::{Clock, ManualClock, SharedClock, SystemClock, duration_ms, system_clock};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use crate::database::Database;
pub use crate::database::{Backend, Migrations};
pub use crate::error::{DbError, error_chain, is_unavailable};
pub use crate::url::{is_loopback_host, redact_url};
