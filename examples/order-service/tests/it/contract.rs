//! The idempotency contract battery of spark-checks against the service
//! over real HTTP (axum serving the app on a loopback port), on SQLite and
//! PostgreSQL.
//!
//! The 5xx case needs the service to fail after it claimed a key. The test
//! arranges that in the database, not in the service: a trigger refuses
//! the insert of any order for account `desk-fail`, so that order's
//! transaction (claim, order, event, fill) fails halfway and the handler
//! answers 500, through the same code path as any database failure. Every
//! other account is untouched, so nothing races. The battery then clears
//! the fault (drops the trigger) and retries the same order under the same
//! key, which must be accepted as new.

use std::sync::Arc;

use order_service::{Database, app};
use serde_json::json;
use spark_checks::contract::{self, Auth, CaseStatus, ContractOptions, Credential, EffectCounter, Fault, HookError};

use super::{Service, T1, T2, state};

/// The account the trigger refuses.
const FAILING_ACCOUNT: &str = "desk-fail";

const SQLITE_TRIGGER: &str = "CREATE TRIGGER contract_fail BEFORE INSERT ON order_service_orders \
     WHEN NEW.account_id = 'desk-fail' BEGIN SELECT RAISE(ABORT, 'injected failure'); END;";

const POSTGRES_TRIGGER: &str = "CREATE FUNCTION contract_fail() RETURNS trigger LANGUAGE plpgsql AS \
     $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$; \
     CREATE TRIGGER contract_fail BEFORE INSERT ON order_service_orders FOR EACH ROW \
     WHEN (NEW.account_id = 'desk-fail') EXECUTE FUNCTION contract_fail();";

/// Orders in the table: the effect of an accepted order.
struct Orders(Database);

#[async_trait::async_trait]
impl EffectCounter for Orders {
    async fn count(&self) -> Result<u64, HookError> {
        let sql = "SELECT COUNT(*) FROM order_service_orders";
        let n: i64 = match &self.0 {
            Database::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
            Database::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
        };
        Ok(u64::try_from(n)?)
    }
}

/// Makes orders for `desk-fail` fail inside their transaction.
async fn install_failing_account(db: &Database) {
    let sql = match db {
        Database::Postgres(_) => POSTGRES_TRIGGER,
        Database::Sqlite(_) => SQLITE_TRIGGER,
    };
    exec(db, sql).await.unwrap();
}

async fn exec(db: &Database, sql: &'static str) -> Result<(), sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(sql);
    match db {
        Database::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
        Database::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
    }
}

/// The trigger as a fault the battery clears: dropping it lets the same
/// order through.
struct FailingAccount(Database);

#[async_trait::async_trait]
impl Fault for FailingAccount {
    async fn clear(&self) -> Result<(), HookError> {
        let sql = match &self.0 {
            Database::Postgres(_) => "DROP TRIGGER contract_fail ON order_service_orders",
            Database::Sqlite(_) => "DROP TRIGGER contract_fail",
        };
        Ok(exec(&self.0, sql).await?)
    }
}

/// An order both test clients may place (acc-1 is shared), variant `n`.
fn order(account: &str, n: u64) -> serde_json::Value {
    json!({ "account_id": account, "symbol": "THYAO", "side": "buy", "quantity": n.to_string(), "price": "101.30" })
}

async fn passes_the_whole_battery(s: Service) {
    install_failing_account(&s.db).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = app(state(&s.db)).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let auth = Auth::new(Credential::Bearer(T1.into())).with_other(Credential::Bearer(T2.into()));
    let mut options = ContractOptions::new(auth, Arc::new(|n| order("acc-1", n)));
    options.make_failing_request = Some(Arc::new(|n| order(FAILING_ACCOUNT, n)));
    options.fault = Some(Arc::new(FailingAccount(s.db.clone())));
    options.count_effects = Some(Arc::new(Orders(s.db.clone())));
    let report = contract::idempotency(&url, options).await.unwrap();
    println!("{}", report.table());
    for case in &report.cases {
        assert_eq!(case.status, CaseStatus::Pass, "{}: {}\n{}", case.name, case.detail, report.table());
    }
    assert_eq!(report.cases.len(), contract::IDEMPOTENCY_CASES.len());
    assert!(report.passed());
    assert_eq!(report.outcome().status, spark_checks::Status::Pass);
    // The failed attempt left nothing behind; its retry made one order.
    let failed = match &s.db {
        Database::Postgres(p) => {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM order_service_orders WHERE account_id = 'desk-fail'")
                .fetch_one(p)
                .await
                .unwrap()
        }
        Database::Sqlite(p) => {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM order_service_orders WHERE account_id = 'desk-fail'")
                .fetch_one(p)
                .await
                .unwrap()
        }
    };
    assert_eq!(failed, 1);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_passes_the_idempotency_contract() {
    passes_the_whole_battery(super::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_passes_the_idempotency_contract() {
    let Some(s) = super::postgres().await else { return };
    passes_the_whole_battery(s).await;
}
