//! One store per test on a chosen backend, with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use spark_idempotency::{Config, IdempotencyStore, ManualClock, MemoryStore, PgStore, SqliteStore};
use spark_testkit::{PgTestDb, SqliteTestDb};

/// Where a test's store lives; the guard keeps a database alive.
#[allow(dead_code, reason = "the guards are held for their Drop")]
pub(crate) enum Db {
    Memory,
    Sqlite(SqliteTestDb),
    Postgres(Box<PgTestDb>),
}

pub(crate) struct Harness {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) clock: ManualClock,
    /// Keeps the database alive for the test.
    pub(crate) _db: Db,
}

pub(crate) const START_MS: i64 = 1_800_000_000_000;
pub(crate) const LEASE: Duration = Duration::from_secs(30);
pub(crate) const TTL: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn config(clock: &ManualClock) -> Config {
    Config::new()
        .with_clock(clock.clone())
        .with_lease(LEASE)
        .with_ttl(TTL)
        .with_lock_timeout(Duration::from_millis(300))
}

impl Harness {
    pub(crate) async fn memory() -> Harness {
        let clock = ManualClock::new(START_MS);
        let store = MemoryStore::new(config(&clock)).unwrap();
        Harness { store: Arc::new(store), clock, _db: Db::Memory }
    }

    pub(crate) async fn sqlite() -> Harness {
        let clock = ManualClock::new(START_MS);
        let db = spark_testkit::sqlite().await;
        let store = SqliteStore::new(db.pool.clone(), config(&clock)).unwrap();
        store.migrate().await.unwrap();
        Harness { store: Arc::new(store), clock, _db: Db::Sqlite(db) }
    }

    pub(crate) async fn postgres() -> Option<Harness> {
        let clock = ManualClock::new(START_MS);
        let db = spark_testkit::postgres().await?;
        let store = PgStore::new(db.pool.clone(), config(&clock)).unwrap();
        store.migrate().await.unwrap();
        Some(Harness { store: Arc::new(store), clock, _db: Db::Postgres(Box::new(db)) })
    }
}

/// Runs each named test function (taking a `Harness`) on every backend.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(crate::harness::Harness::memory().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(crate::harness::Harness::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(h) = crate::harness::Harness::postgres().await else { return };
                    super::$name(h).await;
                }
            )*
        }
    };
}

pub(crate) use on_every_backend;
