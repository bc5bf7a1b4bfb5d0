//! The service behind a real pgBouncer.
//!
//! pgBouncer 1.18 (Debian 12) does not track protocol-level prepared
//! statements, and sqlx prepares every parameterised statement under a name,
//! statement cache on or off; through a *transaction* pool that gives
//! "prepared statement sqlx_s_N already exists" errors and results of other
//! clients' statements (measured; `spark check` fails such a URL). So on
//! 1.18 the service runs behind a *session* pool, with migrations and the
//! relay's LISTEN going to PostgreSQL directly; pgBouncer >= 1.21 with
//! `max_prepared_statements` allows transaction pooling.

use std::sync::Arc;

use order_service::{Database, app};
use spark_testkit::pgbouncer::{Pgbouncer, PoolMode};

use crate::{Service, T1, body, state};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_flow_through_a_session_pool_with_parallel_retries() {
    let Some(direct) = spark_testkit::postgres().await else { return };
    let Some(bouncer) = Pgbouncer::builder(&direct.url).pool_mode(PoolMode::Session).default_pool_size(4).start().await
    else {
        return;
    };
    // Migrations go to PostgreSQL directly; the service's pool through
    // pgBouncer. A session pool gives each client connection a server
    // connection for its whole life, so the service's pool must not be
    // larger than pgBouncer's: a fifth connection would wait for a server
    // until its acquire timeout (a 503, seen with 8).
    order_service::migrate(&direct.database()).await.unwrap();
    let name = direct.url.rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
    let db = Database::connect(&bouncer.url(&name), 4).await.unwrap();
    let s = Arc::new(Service { router: app(state(&db)), db, sqlite: None, pg: None });

    // 20 orders, each sent three times at once with the same key.
    let mut tasks = Vec::new();
    for i in 0..20 {
        for _ in 0..3 {
            let s = Arc::clone(&s);
            tasks.push(tokio::spawn(async move {
                let r = s.order(Some(T1), Some(&format!("bouncer-{i}")), &body("acc-1", "10", "101.30")).await;
                (r.status.as_u16(), r.body)
            }));
        }
    }
    // A retry is replayed (the same 201 and body) or, while the first is
    // in flight, a 409; never a second order.
    let mut orders = std::collections::BTreeSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert!(matches!(status, 201 | 409), "{status}: {body}");
        if status == 201 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            orders.insert(v["order_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(orders.len(), 20, "one order per key");
    // Counted directly on PostgreSQL: orders, keys, events, one position, fills.
    let direct_service =
        Service { router: app(state(&direct.database())), db: direct.database(), sqlite: None, pg: None };
    assert_eq!(direct_service.recorded().await, [20, 20, 20, 1, 20]);
    assert!(bouncer.log().contains("login attempt"), "the orders went through pgBouncer");
}
