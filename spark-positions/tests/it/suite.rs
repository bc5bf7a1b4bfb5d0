//! The same behaviour on SQLite and PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use spark_money::{Currency, Decimal, Side};
use spark_positions::{Fill, PgPositions, Position, PositionFilter, PositionsError, SqlitePositions, Status, Step};
use spark_testkit::{PgTestDb, SqliteTestDb};

use crate::model::Model;

/// A book on one backend, with its database.
#[derive(Clone)]
enum Backend {
    Sqlite(Arc<SqliteTestDb>, SqlitePositions),
    Postgres(Arc<PgTestDb>, PgPositions),
}

impl Backend {
    async fn sqlite() -> Backend {
        let db = spark_testkit::sqlite().await;
        spark_positions::sqlite::migrator().run(&db.pool).await.unwrap();
        Backend::Sqlite(Arc::new(db), SqlitePositions::with_clock(|| 1_000))
    }

    async fn postgres() -> Option<Backend> {
        let db = spark_testkit::postgres().await?;
        spark_positions::postgres::migrator().run(&db.pool).await.unwrap();
        Some(Backend::Postgres(Arc::new(db), PgPositions::with_clock(|| 1_000)))
    }

    /// Applies one fill in its own transaction.
    async fn apply(&self, fill: &Fill) -> Result<Step, PositionsError> {
        match self {
            Backend::Sqlite(db, book) => {
                let mut tx = db.pool.begin_with("BEGIN IMMEDIATE").await?;
                let step = book.apply_fill(&mut tx, fill).await?;
                tx.commit().await?;
                Ok(step)
            }
            Backend::Postgres(db, book) => {
                let mut tx = db.pool.begin().await?;
                let step = book.apply_fill(&mut tx, fill).await?;
                tx.commit().await?;
                Ok(step)
            }
        }
    }

    async fn positions(&self, account: &str, filter: PositionFilter) -> Vec<Position> {
        match self {
            Backend::Sqlite(db, book) => book.positions(&db.pool, account, filter).await.unwrap(),
            Backend::Postgres(db, book) => book.positions(&db.pool, account, filter).await.unwrap(),
        }
    }

    async fn open(&self, account: &str, instrument: &str) -> Option<Position> {
        match self {
            Backend::Sqlite(db, book) => book.open_position(&db.pool, account, instrument).await.unwrap(),
            Backend::Postgres(db, book) => book.open_position(&db.pool, account, instrument).await.unwrap(),
        }
    }

    async fn exec(&self, sql: &'static str) -> Result<u64, sqlx::Error> {
        match self {
            Backend::Sqlite(db, _) => sqlx::query(sql).execute(&db.pool).await.map(|r| r.rows_affected()),
            Backend::Postgres(db, _) => sqlx::query(sql).execute(&db.pool).await.map(|r| r.rows_affected()),
        }
    }

    async fn count(&self, sql: &'static str) -> i64 {
        match self {
            Backend::Sqlite(db, _) => sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap(),
            Backend::Postgres(db, _) => sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap(),
        }
    }

    /// (signed quantity, price) of every fill in the order the book applied
    /// them: by position, then by the version each produced.
    async fn applied_order(&self) -> Vec<(Decimal, Decimal)> {
        let (pg, lite) = (
            "SELECT side, quantity::text, price::text FROM spark_position_fills ORDER BY position_id, position_version",
            "SELECT side, quantity, price FROM spark_position_fills ORDER BY position_id, position_version",
        );
        let rows: Vec<(String, String, String)> = match self {
            Backend::Sqlite(db, _) => sqlx::query_as(lite).fetch_all(&db.pool).await.unwrap(),
            Backend::Postgres(db, _) => sqlx::query_as(pg).fetch_all(&db.pool).await.unwrap(),
        };
        rows.into_iter()
            .map(|(side, q, p)| {
                let q = spark_money::parse_decimal(&q).unwrap();
                (if side == "buy" { q } else { -q }, spark_money::parse_decimal(&p).unwrap())
            })
            .collect()
    }
}

fn fill(id: &str, side: Side, qty: &str, price: &str) -> Fill {
    Fill {
        fill_id: id.to_owned(),
        account_id: "acc-1".to_owned(),
        instrument: "THYAO".to_owned(),
        side,
        quantity: qty.parse().unwrap(),
        price: price.parse().unwrap(),
        currency: Currency::TRY,
    }
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(b) = super::Backend::postgres().await else { return };
                    super::$name(b).await;
                }
            )*
        }
    };
}

on_both!(
    lifecycle_open_increase_reduce_close_flip,
    reapplying_every_fill_changes_nothing,
    direct_sql_cannot_open_a_second_position,
    concurrent_fills_keep_one_open_position_and_exact_pnl,
    bad_fills_are_typed_errors,
);

async fn lifecycle_open_increase_reduce_close_flip(b: Backend) {
    assert!(matches!(b.apply(&fill("f1", Side::Buy, "100", "10.00")).await.unwrap(), Step::Open(_)));
    assert!(matches!(b.apply(&fill("f2", Side::Buy, "50", "11.00")).await.unwrap(), Step::Increase(_)));
    let open = b.open("acc-1", "THYAO").await.unwrap();
    assert_eq!((open.quantity().to_string(), open.cost_basis().to_string()), ("150".into(), "1550.00".into()));
    // 1550 / 150 = 10.333… -> 10.33 (two places, the prices' scale).
    assert_eq!(open.average_price().unwrap().unwrap().to_string(), "10.33");
    assert!(matches!(b.apply(&fill("f3", Side::Sell, "50", "12.00")).await.unwrap(), Step::Reduce(_)));
    let open = b.open("acc-1", "THYAO").await.unwrap();
    assert_eq!(open.realized_pnl().to_string(), "83.33 TRY");
    assert!(matches!(b.apply(&fill("f4", Side::Sell, "100", "9.00")).await.unwrap(), Step::Close(_)));
    assert!(b.open("acc-1", "THYAO").await.is_none());
    // Short 30 at 9.50, then buy 40 at 9.00: flip to long 10.
    b.apply(&fill("f5", Side::Sell, "30", "9.50")).await.unwrap();
    assert!(matches!(b.apply(&fill("f6", Side::Buy, "40", "9.00")).await.unwrap(), Step::Flip { .. }));
    let all = b.positions("acc-1", PositionFilter::All).await;
    assert_eq!(all.len(), 3);
    let (long, short, first) = (&all[0], &all[1], &all[2]);
    assert_eq!((long.status(), long.quantity().to_string()), (Status::Open, "10".into()));
    assert_eq!((short.status(), short.realized_pnl().to_string()), (Status::Closed, "15.00 TRY".to_owned()));
    assert_eq!((first.status(), first.realized_pnl().to_string()), (Status::Closed, "-50.00 TRY".to_owned()));
    assert_eq!(first.closed_at_ms(), Some(1_000));
    assert_eq!(b.positions("acc-1", PositionFilter::Open).await.len(), 1);
    assert!(b.positions("nobody", PositionFilter::All).await.is_empty());
}

async fn reapplying_every_fill_changes_nothing(b: Backend) {
    let fills = [
        fill("a", Side::Buy, "10", "5.00"),
        fill("b", Side::Sell, "4", "5.50"),
        fill("c", Side::Sell, "10", "4.00"),
        fill("d", Side::Buy, "2", "4.10"),
    ];
    for f in &fills {
        b.apply(f).await.unwrap();
    }
    let before = b.positions("acc-1", PositionFilter::All).await;
    for f in &fills {
        assert!(matches!(b.apply(f).await, Err(PositionsError::AlreadyApplied { fill_id }) if fill_id == f.fill_id));
    }
    assert_eq!(b.positions("acc-1", PositionFilter::All).await, before);
}

async fn direct_sql_cannot_open_a_second_position(b: Backend) {
    b.apply(&fill("a", Side::Buy, "10", "5.00")).await.unwrap();
    let err = b
        .exec(
            "INSERT INTO spark_positions (account_id, instrument, status, quantity, cost_basis, realized_pnl, currency, price_scale, opened_at_ms, version)
             VALUES ('acc-1', 'THYAO', 'open', 1, 1, 0, 'TRY', 0, 0, 1)",
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, sqlx::Error::Database(db) if db.is_unique_violation()), "{err}");
    // Closed rows are history and may repeat; a NULL status is refused.
    b.exec(
        "INSERT INTO spark_positions (account_id, instrument, status, quantity, cost_basis, realized_pnl, currency, price_scale, opened_at_ms, version)
         VALUES ('acc-1', 'THYAO', 'closed', 0, 0, 0, 'TRY', 0, 0, 1)",
    )
    .await
    .unwrap();
    assert!(
        b.exec(
            "INSERT INTO spark_positions (account_id, instrument, status, quantity, cost_basis, realized_pnl, currency, price_scale, opened_at_ms, version)
             VALUES ('acc-1', NULL, 'open', 0, 0, 0, 'TRY', 0, 0, 1)",
        )
        .await
        .is_err()
    );
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_positions WHERE status = 'open'").await, 1);
}

async fn concurrent_fills_keep_one_open_position_and_exact_pnl(b: Backend) {
    // 64 tasks, 4 fills each, buys and sells of varying size and price.
    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (b, done) = (b.clone(), done.clone());
        tokio::spawn(async move {
            let mut max_open = 0;
            while !done.load(Ordering::SeqCst) {
                max_open = max_open.max(b.count("SELECT COUNT(*) FROM spark_positions WHERE status = 'open'").await);
                tokio::task::yield_now().await;
            }
            max_open
        })
    };
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let b = b.clone();
            tokio::spawn(async move {
                let mut signed = Decimal::ZERO;
                for i in 0..4 {
                    let side = if (t + i) % 3 == 0 { Side::Sell } else { Side::Buy };
                    let qty = format!("{}", 1 + (t * 7 + i * 3) % 40);
                    let price = format!("{}.{:02}", 100 + (t + i) % 9, (t * 13 + i) % 100);
                    let f = fill(&format!("t{t}-{i}"), side, &qty, &price);
                    let q = f.signed_quantity();
                    b.apply(&f).await.unwrap();
                    signed += q;
                }
                signed
            })
        })
        .collect();
    let mut total = Decimal::ZERO;
    for t in tasks {
        total += t.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert!(monitor.await.unwrap() <= 1, "two open positions were seen at once");
    assert!(b.count("SELECT COUNT(*) FROM spark_positions WHERE status = 'open'").await <= 1);

    let open_qty = b.open("acc-1", "THYAO").await.map_or(Decimal::ZERO, |p| p.quantity());
    assert_eq!(open_qty, total, "final quantity is the sum of signed fills");

    // Replay the fills in the order the book applied them.
    let mut model = Model::default();
    let order = b.applied_order().await;
    assert_eq!(order.len(), 256);
    for (q, p) in order {
        model.apply(q, p);
    }
    let all = b.positions("acc-1", PositionFilter::All).await;
    let realized: Decimal = all.iter().map(|p| p.realized_pnl().amount()).sum();
    assert_eq!(realized, model.realized, "realized PnL equals the model's");
    let cost = b.open("acc-1", "THYAO").await.map_or(Decimal::ZERO, |p| p.cost_basis());
    assert_eq!(cost, model.cost);
    assert_eq!(model.realized, model.cost + model.cash);
}

async fn bad_fills_are_typed_errors(b: Backend) {
    b.apply(&fill("a", Side::Buy, "10", "5.00")).await.unwrap();
    let mut usd = fill("b", Side::Buy, "1", "5.00");
    usd.currency = Currency::USD;
    assert!(matches!(b.apply(&usd).await, Err(PositionsError::CurrencyMismatch { .. })));
    usd.fill_id = "c".into();
    usd.side = Side::Sell;
    assert!(matches!(b.apply(&usd).await, Err(PositionsError::CurrencyMismatch { .. })));
    assert!(matches!(b.apply(&fill("z", Side::Buy, "0", "5.00")).await, Err(PositionsError::InvalidFill { .. })));
    assert_eq!(b.open("acc-1", "THYAO").await.unwrap().quantity().to_string(), "10");
}
