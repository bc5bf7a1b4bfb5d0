//! An in-memory store for unit tests of code that uses idempotency.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::types::retry_after;
use crate::{
    Claim, Config, Fingerprint, IdempotencyKey, IdempotencyStore, Lease, Result, Stats, StoredResponse, metrics,
};

/// Keeps records in a `HashMap` behind a mutex, with exactly the semantics
/// of the SQL stores (it passes the same conformance suite). Nothing survives
/// the process: use it in tests, not in production.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use spark_idempotency::{Claim, Fingerprint, IdempotencyKey, IdempotencyStore, MemoryStore, StoredResponse};
///
/// let store = MemoryStore::new(Default::default())?;
/// let key: IdempotencyKey = "order-1".parse()?;
/// let fp = Fingerprint::of_request("POST", "/v1/orders", b"{}");
/// let Claim::Acquired(lease) = store.claim("client-a", &key, &fp).await? else { unreachable!() };
/// store.complete(&lease, &StoredResponse::new(201, "created")).await?;
/// assert_eq!(store.claim("client-a", &key, &fp).await?, Claim::Replay(StoredResponse::new(201, "created")));
/// # Ok::<(), spark_idempotency::IdempotencyError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    config: Config,
    records: Mutex<HashMap<(String, String), Record>>,
}

#[derive(Debug, Clone)]
struct Record {
    fingerprint: Fingerprint,
    fencing: i64,
    lease_until_ms: i64,
    created_at_ms: i64,
    expires_at_ms: i64,
    response: Option<StoredResponse>,
}

impl MemoryStore {
    /// An empty store.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::Config`](crate::IdempotencyError::Config) for a
    /// configuration that cannot work.
    pub fn new(config: Config) -> Result<MemoryStore> {
        config.validate()?;
        Ok(MemoryStore { config, records: Mutex::new(HashMap::new()) })
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Record>> {
        // A panic while holding the lock cannot leave a record half-written
        // (every update is a single assignment), so a poisoned lock is safe
        // to keep using.
        self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, scope: &str, key: &IdempotencyKey, fingerprint: &Fingerprint) -> Result<Claim> {
        let now = self.config.now_ms();
        let mut records = self.records();
        let id = (scope.to_owned(), key.as_str().to_owned());
        let lease = |fencing, takeover| Lease {
            scope: scope.to_owned(),
            key: key.clone(),
            fencing,
            lease_until_ms: self.config.lease_until(now),
            takeover,
        };
        let claim = match records.get_mut(&id) {
            Some(rec) if rec.expires_at_ms > now => {
                if rec.fingerprint != *fingerprint {
                    Claim::Mismatch
                } else if let Some(response) = &rec.response {
                    Claim::Replay(response.clone())
                } else if rec.lease_until_ms > now {
                    Claim::InFlight { retry_after: retry_after(rec.lease_until_ms, now) }
                } else {
                    rec.fencing += 1;
                    rec.lease_until_ms = self.config.lease_until(now);
                    // The record lives at least as long as the new lease, so
                    // GC cannot take it from under its holder.
                    rec.expires_at_ms = rec.expires_at_ms.max(rec.lease_until_ms);
                    Claim::Acquired(lease(rec.fencing, true))
                }
            }
            existing => {
                // Absent, or past its TTL and so treated as absent; the
                // fencing number keeps growing so an old holder stays fenced.
                let fencing = existing.map_or(0, |rec| rec.fencing) + 1;
                records.insert(
                    id,
                    Record {
                        fingerprint: *fingerprint,
                        fencing,
                        lease_until_ms: self.config.lease_until(now),
                        created_at_ms: now,
                        expires_at_ms: self.config.expires_at(now),
                        response: None,
                    },
                );
                Claim::Acquired(lease(fencing, false))
            }
        };
        metrics::claim(&claim);
        Ok(claim)
    }

    async fn complete(&self, lease: &Lease, response: &StoredResponse) -> Result<()> {
        if !self.config.stores(response.status) {
            return self.release(lease).await;
        }
        let mut records = self.records();
        match records.get_mut(&(lease.scope.clone(), lease.key.as_str().to_owned())) {
            Some(rec) if rec.fencing == lease.fencing && rec.response.is_none() => {
                rec.response = Some(response.clone());
                metrics::completion("stored");
                Ok(())
            }
            _ => {
                metrics::completion("lease_lost");
                Err(lease.lost())
            }
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let mut records = self.records();
        let id = (lease.scope.clone(), lease.key.as_str().to_owned());
        match records.get_mut(&id) {
            // End the lease but keep the record, as the SQL stores do: the
            // retry takes over with a higher fencing number.
            Some(rec) if rec.fencing == lease.fencing && rec.response.is_none() && rec.lease_until_ms != 0 => {
                rec.lease_until_ms = 0;
                metrics::completion("released");
                Ok(())
            }
            _ => {
                metrics::completion("lease_lost");
                Err(lease.lost())
            }
        }
    }

    async fn gc(&self, batch_size: u32) -> Result<u64> {
        let now = self.config.now_ms();
        // A batch of 0 would delete nothing and never finish; as in the SQL
        // stores it means 1.
        let batch = usize::try_from(batch_size.max(1)).unwrap_or(usize::MAX);
        let mut deleted = 0u64;
        loop {
            // Batches, as in the SQL stores, so the lock is never held long.
            let mut records = self.records();
            let expired: Vec<_> = records
                .iter()
                .filter(|(_, r)| r.expires_at_ms <= now && !(r.response.is_none() && r.lease_until_ms > now))
                .map(|(k, _)| k.clone())
                .take(batch)
                .collect();
            for k in &expired {
                records.remove(k);
            }
            deleted += expired.len() as u64;
            if expired.len() < batch {
                break;
            }
        }
        metrics::gc(deleted);
        Ok(deleted)
    }

    async fn stats(&self) -> Result<Stats> {
        let now = self.config.now_ms();
        let records = self.records();
        let live = records.values().filter(|r| r.expires_at_ms > now);
        let stats = Stats {
            live_keys: live.clone().count() as u64,
            expired_awaiting_gc: records.values().filter(|r| r.expires_at_ms <= now).count() as u64,
            in_flight: live.filter(|r| r.response.is_none()).count() as u64,
            oldest_record_age_ms: records.values().map(|r| now - r.created_at_ms).max(),
        };
        metrics::stats(&stats);
        Ok(stats)
    }

    fn config(&self) -> &Config {
        &self.config
    }
}
