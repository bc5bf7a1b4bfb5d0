//! Claims, leases, stored responses, configuration and the clock.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{IdempotencyError, IdempotencyKey};

/// What a claim on a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a claim must be acted on: execute, replay, or answer 409/422"]
pub enum Claim {
    /// The caller holds the key: execute the work, then
    /// [`complete`](crate::IdempotencyStore::complete) or
    /// [`release`](crate::IdempotencyStore::release) with this lease.
    Acquired(Lease),
    /// The first request completed: answer with its stored response.
    Replay(StoredResponse),
    /// The first request is still running (HTTP 409 with `Retry-After`).
    InFlight {
        /// When a retry may find the first outcome or an expired lease.
        retry_after: Duration,
    },
    /// The key was used with a different request (HTTP 422).
    Mismatch,
}

/// The right to execute the work for one key, until `lease_until`.
///
/// The fencing number grows with every takeover; a completion must present
/// the current one, so a holder that was taken over cannot overwrite the
/// outcome of the one that replaced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub(crate) scope: String,
    pub(crate) key: IdempotencyKey,
    pub(crate) fencing: i64,
    pub(crate) lease_until_ms: i64,
    pub(crate) takeover: bool,
}

impl Lease {
    /// The scope (principal) the key belongs to.
    #[must_use]
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The key.
    #[must_use]
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// The fencing number: 1 for a first claim, higher after takeovers.
    #[must_use]
    pub const fn fencing(&self) -> i64 {
        self.fencing
    }

    /// Whether this claim took over an earlier attempt whose lease expired
    /// (a crash) or was released (a failed, retryable outcome).
    #[must_use]
    pub const fn is_takeover(&self) -> bool {
        self.takeover
    }

    pub(crate) fn lost(&self) -> IdempotencyError {
        IdempotencyError::LeaseLost { scope: self.scope.clone(), key: self.key.to_string(), fencing: self.fencing }
    }
}

/// The outcome stored for replay: status, selected headers and body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The headers worth replaying (such as `content-type` and `location`).
    pub headers: Vec<(String, String)>,
    /// The body, byte for byte.
    pub body: Vec<u8>,
}

impl StoredResponse {
    /// A response with no headers.
    #[must_use]
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> StoredResponse {
        StoredResponse { status, headers: Vec::new(), body: body.into() }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> StoredResponse {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub(crate) fn headers_json(&self) -> String {
        // A Vec of string pairs always serializes.
        serde_json::to_string(&self.headers).unwrap_or_else(|_| "[]".to_owned())
    }

    pub(crate) fn from_columns(
        key: &str,
        status: Option<i32>,
        headers: Option<String>,
        body: Option<Vec<u8>>,
    ) -> Result<StoredResponse, IdempotencyError> {
        let corrupt = |reason: String| IdempotencyError::Corrupt { key: key.to_owned(), reason };
        let status = status.ok_or_else(|| corrupt("completed without a status".to_owned()))?;
        let status = u16::try_from(status).map_err(|_| corrupt(format!("status {status} out of range")))?;
        let headers = match headers {
            Some(json) => serde_json::from_str(&json).map_err(|e| corrupt(format!("headers: {e}")))?,
            None => Vec::new(),
        };
        Ok(StoredResponse { status, headers, body: body.unwrap_or_default() })
    }
}

/// Which outcomes are stored and replayed; the others release the key so
/// that a retry executes again.
///
/// The default stores definitive outcomes: 2xx, 3xx and 4xx other than 408
/// (timeout), 409 (conflict) and 429 (rate limited); 5xx, 408 and 429 release
/// the key.
#[must_use]
pub fn is_definitive(status: u16) -> bool {
    (200..500).contains(&status) && !matches!(status, 408 | 409 | 429)
}

pub use spark_db::{Clock, ManualClock, SystemClock};

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How long keys live, how long a claim is held, and what is stored.
#[derive(Clone)]
pub struct Config {
    ttl: Duration,
    lease: Duration,
    lock_timeout: Duration,
    store_status: fn(u16) -> bool,
    clock: Arc<dyn Clock>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ttl: Duration::from_secs(24 * 60 * 60),
            lease: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(2),
            store_status: is_definitive,
            clock: Arc::new(SystemClock),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .field("lock_timeout", &self.lock_timeout)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The defaults: keys live 24 h, a claim is leased for 30 s, a duplicate
    /// waits at most 2 s on a transaction holding its key, and definitive
    /// outcomes ([`is_definitive`]) are stored.
    #[must_use]
    pub fn new() -> Config {
        Config::default()
    }

    /// How long a key is remembered (default 24 h). After that the same key
    /// is a new request.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Config {
        self.ttl = ttl;
        self
    }

    /// How long a claim is held before a retry may take it over (default
    /// 30 s). Make it longer than the work takes, or the work may run twice.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Config {
        self.lease = lease;
        self
    }

    /// In transactional mode, how long a duplicate waits for the transaction
    /// that holds its key before it is answered "in flight" (default 2 s).
    #[must_use]
    pub fn with_lock_timeout(mut self, lock_timeout: Duration) -> Config {
        self.lock_timeout = lock_timeout;
        self
    }

    /// Which statuses are stored and replayed (default [`is_definitive`]).
    #[must_use]
    pub fn with_store_policy(mut self, store_status: fn(u16) -> bool) -> Config {
        self.store_status = store_status;
        self
    }

    /// The clock (default the system clock).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Config {
        self.clock = Arc::new(clock);
        self
    }

    /// The key lifetime.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The lease length.
    #[must_use]
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The transactional-mode wait bound.
    #[must_use]
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout
    }

    /// Whether an outcome with `status` is stored for replay.
    #[must_use]
    pub fn stores(&self, status: u16) -> bool {
        (self.store_status)(status)
    }

    /// The current time in Unix milliseconds.
    #[must_use]
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub(crate) fn validate(&self) -> Result<(), IdempotencyError> {
        if self.lease.is_zero() {
            return Err(IdempotencyError::Config { reason: "the lease must be longer than zero" });
        }
        if self.ttl <= self.lease {
            return Err(IdempotencyError::Config { reason: "the TTL must be longer than the lease" });
        }
        Ok(())
    }

    pub(crate) fn lease_until(&self, now_ms: i64) -> i64 {
        now_ms.saturating_add(duration_ms(self.lease))
    }

    pub(crate) fn expires_at(&self, now_ms: i64) -> i64 {
        now_ms.saturating_add(duration_ms(self.ttl))
    }
}

/// The time left on an in-flight lease, rounded up to whole seconds (at
/// least one) for `Retry-After`.
pub(crate) fn retry_after(lease_until_ms: i64, now_ms: i64) -> Duration {
    let ms = lease_until_ms.saturating_sub(now_ms).max(1);
    Duration::from_secs(u64::try_from(ms).unwrap_or(1).div_ceil(1000))
}

/// What the store holds, for operators (`spark idempotency stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Records whose TTL has not passed.
    pub live_keys: u64,
    /// Records past their TTL, waiting for GC.
    pub expired_awaiting_gc: u64,
    /// Live records still in flight.
    pub in_flight: u64,
    /// Age of the oldest record, in milliseconds, if there is one.
    pub oldest_record_age_ms: Option<i64>,
}
