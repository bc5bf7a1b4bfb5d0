//! The store interface every backend implements.

use async_trait::async_trait;

use crate::{Claim, Config, Fingerprint, IdempotencyKey, Lease, Result, Stats, StoredResponse};

/// A place to claim keys and keep their outcomes: `PgStore`,
/// [`SqliteStore`](crate::SqliteStore) or [`MemoryStore`](crate::MemoryStore).
///
/// These methods are the *leased* mode: each commits on its own. The SQL
/// stores also offer the *transactional* mode (`claim_in`/`complete_in`),
/// where claim and completion ride in the caller's transaction.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` in `scope` for a request with `fingerprint`.
    ///
    /// # Errors
    ///
    /// Only when the store fails; every answer about the key is a [`Claim`].
    async fn claim(&self, scope: &str, key: &IdempotencyKey, fingerprint: &Fingerprint) -> Result<Claim>;

    /// Stores `response` as the key's outcome, if the configuration stores
    /// its status; otherwise releases the key.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::LeaseLost`](crate::IdempotencyError::LeaseLost) if
    /// another holder took over.
    async fn complete(&self, lease: &Lease, response: &StoredResponse) -> Result<()>;

    /// Ends the claim so that a retry executes again (taking over with a
    /// higher fencing number; the record and its fingerprint stay until the
    /// TTL).
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::LeaseLost`](crate::IdempotencyError::LeaseLost) if
    /// another holder took over.
    async fn release(&self, lease: &Lease) -> Result<()>;

    /// Deletes records past their TTL, `batch_size` per statement, until none
    /// is left; returns how many it deleted. Live keys are never touched.
    ///
    /// # Errors
    ///
    /// When the store fails; batches deleted before that stay deleted.
    async fn gc(&self, batch_size: u32) -> Result<u64>;

    /// Counts for operators.
    ///
    /// # Errors
    ///
    /// When the store fails.
    async fn stats(&self) -> Result<Stats>;

    /// The store's configuration.
    fn config(&self) -> &Config;
}
