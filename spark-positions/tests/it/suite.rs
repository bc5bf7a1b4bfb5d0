//! The same behaviour on SQLite and PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use spark_db::ManualClock;
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
        Backend::Sqlite(Arc::new(db), SqlitePositions::with_clock(ManualClock::new(1_000)))
    }

    async fn postgres() -> Option<Backend> {
        let db = spark_testkit::postgres().await?;
        spark_positions::postgres::migrator().run(&db.pool).await.unwrap();
        Some(Backend::Postgres(Arc::new(db), PgPositions::with_clock(ManualClock::new(1_000))))
    }

    /// The same database, with a book on `clock`.
    fn with_clock(&self, clock: ManualClock) -> Backend {
        match self {
            Backend::Sqlite(db, _) => Backend::Sqlite(db.clone(), SqlitePositions::with_clock(clock)),
            Backend::Postgres(db, _) => Backend::Postgres(db.clone(), PgPositions::with_clock(clock)),
        }
    }

    /// Applies `fills` one after the other in one transaction, which it
    /// commits whatever each fill's outcome: a caller that carries on after
    /// a refused fill.
    async fn apply_in_one_transaction(&self, fills: &[&Fill]) -> Vec<Result<Step, PositionsError>> {
        let mut out = Vec::new();
        match self {
            Backend::Sqlite(db, book) => {
                let mut tx = db.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
                for f in fills {
                    out.push(book.apply_fill(&mut tx, f).await);
                }
                tx.commit().await.unwrap();
            }
            Backend::Postgres(db, book) => {
                let mut tx = db.pool.begin().await.unwrap();
                for f in fills {
                    out.push(book.apply_fill(&mut tx, f).await);
                }
                tx.commit().await.unwrap();
            }
        }
        out
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

    /// Applies `fills` in one transaction through `apply_fill_or_roll_back`,
    /// committing if every one applied; the outcome of each fill tried.
    async fn apply_or_roll_back(&self, fills: &[&Fill]) -> Vec<Result<Step, PositionsError>> {
        let mut out = Vec::new();
        macro_rules! run {
            ($book:expr, $begin:expr) => {{
                let mut tx = $begin.await.unwrap();
                for f in fills {
                    match $book.apply_fill_or_roll_back(tx, f).await {
                        Ok((back, step)) => {
                            tx = back;
                            out.push(Ok(step));
                        }
                        Err(e) => {
                            out.push(Err(e));
                            return out;
                        }
                    }
                }
                tx.commit().await.unwrap();
            }};
        }
        match self {
            Backend::Sqlite(db, book) => run!(book, db.pool.begin_with("BEGIN IMMEDIATE")),
            Backend::Postgres(db, book) => run!(book, db.pool.begin()),
        }
        out
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
        price_scale: 2,
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
    without_the_index_the_concurrency_check_fails,
    bad_fills_are_typed_errors,
    refused_fills_give_their_id_back,
    average_price_uses_the_instruments_price_scale,
    timestamps_come_from_the_injected_clock,
    trailing_zeros_change_no_position,
    an_unrepresentable_sum_is_an_overflow,
    an_average_that_rounds_to_zero_is_an_error_not_flat,
    a_position_in_28_place_quantities_reduces,
    price_scale_edges,
    fills_join_the_callers_transaction_and_savepoints,
    a_trimmed_sum_keeps_the_same_places_on_both_backends,
    a_fill_without_a_savepoint_rolls_back_its_whole_transaction,
    a_concurrent_repeat_of_an_uncommitted_fill_is_already_applied,
    the_schema_holds_what_the_book_relies_on,
);

impl Backend {
    fn database(&self) -> spark_db::Database {
        match self {
            Backend::Sqlite(db, _) => db.database(),
            Backend::Postgres(db, _) => db.database(),
        }
    }
}

/// The guarantees the book relies on, asserted on the schema itself with
/// the checks an operator runs: the partial unique index, exact money
/// columns, the migrations as embedded. Each assertion is shown to fail
/// once the schema is broken.
async fn the_schema_holds_what_the_book_relies_on(b: Backend) {
    use spark_checks::schema;
    let db = b.database();
    let index = || {
        schema::assert_partial_unique_index(&db, "spark_positions", &["account_id", "instrument"], "status = 'open'")
    };
    index().await.unwrap();
    let money = schema::assert_money_columns_exact(&db, schema::DEFAULT_MONEY_PATTERN).await.unwrap();
    assert!(money >= 5, "quantity, cost_basis, realized_pnl, price_scale, fills' quantity and price: {money}");
    let migrator = spark_positions::MIGRATIONS.migrator(db.backend()).unwrap();
    schema::assert_migrations_applied(&db, &migrator).await.unwrap();

    b.exec("DROP INDEX spark_positions_one_open").await.unwrap();
    let err = index().await.unwrap_err().to_string();
    assert!(err.contains("spark_positions") && err.contains("status = 'open'"), "{err}");
    b.exec("ALTER TABLE spark_position_fills ADD COLUMN fee_estimate REAL").await.unwrap();
    let err = schema::assert_money_columns_exact(&db, schema::DEFAULT_MONEY_PATTERN).await.unwrap_err().to_string();
    assert!(err.contains("spark_position_fills.fee_estimate"), "{err}");
}

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

/// The most open rows any one (account, instrument) has. Grouped, so that it
/// would see a duplicate that a plain count of open rows cannot tell from two
/// instruments.
const MOST_OPEN_PER_KEY: &str = "SELECT COALESCE(MAX(n), 0) FROM
    (SELECT COUNT(*) AS n FROM spark_positions WHERE status = 'open' GROUP BY account_id, instrument) AS per_key";

/// What a concurrent run saw.
struct Run {
    /// The most open rows of one key that the monitor saw while the writers
    /// ran.
    most_open_seen: i64,
    /// The same after the run.
    most_open_after: i64,
    /// How many of the naive writers managed to insert their open row.
    naive_inserted: usize,
    /// The signed quantity each book task applied, or its error.
    book: Vec<Result<Decimal, PositionsError>>,
}

impl Run {
    /// What the run says is wrong with the one-open-position guarantee.
    fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.most_open_seen > 1 {
            out.push(format!("the monitor saw {} open positions for one key at once", self.most_open_seen));
        }
        if self.most_open_after > 1 {
            out.push(format!("{} open positions for one key after the run", self.most_open_after));
        }
        if self.naive_inserted > 1 {
            out.push(format!("{} racing inserts of the same open position all succeeded", self.naive_inserted));
        }
        out
    }
}

/// 64 book tasks apply 4 fills each to acc-1/THYAO while 8 naive writers
/// (code that bypasses the crate: check, then insert, in two statements)
/// race to open acc-2/GARAN, and a monitor polls the most open rows per key.
async fn run_concurrently(b: &Backend) -> Run {
    const NAIVE: usize = 8;
    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (b, done) = (b.clone(), done.clone());
        tokio::spawn(async move {
            let mut most = 0;
            // Bounded: the writers finish long before.
            for _ in 0..1_000_000 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                most = most.max(b.count(MOST_OPEN_PER_KEY).await);
                tokio::task::yield_now().await;
            }
            most
        })
    };
    // Every naive writer checks before any of them inserts, so without the
    // index all of them insert: the race is certain, not left to timing.
    let barrier = Arc::new(tokio::sync::Barrier::new(NAIVE));
    let naive: Vec<_> = (0..NAIVE)
        .map(|_| {
            let (b, barrier) = (b.clone(), barrier.clone());
            tokio::spawn(async move {
                let open = b
                    .count("SELECT COUNT(*) FROM spark_positions WHERE account_id = 'acc-2' AND instrument = 'GARAN' AND status = 'open'")
                    .await;
                barrier.wait().await;
                open == 0
                    && b.exec(
                        "INSERT INTO spark_positions (account_id, instrument, status, quantity, cost_basis, realized_pnl, currency, price_scale, opened_at_ms, version)
                         VALUES ('acc-2', 'GARAN', 'open', 1, 1, 0, 'TRY', 2, 0, 1)",
                    )
                    .await
                    .is_ok()
            })
        })
        .collect();
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
                    b.apply(&f).await?;
                    signed += q;
                }
                Ok(signed)
            })
        })
        .collect();
    let mut book = Vec::new();
    for t in tasks {
        book.push(t.await.unwrap());
    }
    let mut naive_inserted = 0;
    for n in naive {
        naive_inserted += usize::from(n.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    Run {
        most_open_seen: monitor.await.unwrap(),
        most_open_after: b.count(MOST_OPEN_PER_KEY).await,
        naive_inserted,
        book,
    }
}

async fn concurrent_fills_keep_one_open_position_and_exact_pnl(b: Backend) {
    let run = run_concurrently(&b).await;
    assert_eq!(run.violations(), Vec::<String>::new());
    assert_eq!(run.naive_inserted, 1, "the index lets exactly one racing insert through");
    let mut total = Decimal::ZERO;
    for signed in &run.book {
        total += signed.as_ref().unwrap();
    }

    let open_qty = b.open("acc-1", "THYAO").await.map_or(Decimal::ZERO, |p| p.quantity());
    assert_eq!(open_qty, total, "final quantity is the sum of signed fills");

    // Replay the fills in the order the book applied them.
    let mut model = Model::with_price_scale(2);
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

/// The check above can fail: with the partial unique index dropped, the same
/// run reports duplicate open positions.
async fn without_the_index_the_concurrency_check_fails(b: Backend) {
    b.exec("DROP INDEX spark_positions_one_open").await.unwrap();
    let run = run_concurrently(&b).await;
    let violations = run.violations();
    assert!(!violations.is_empty(), "the check must fail without the index");
    assert!(run.most_open_after > 1, "{violations:?}");
    assert_eq!(run.naive_inserted, 8, "{violations:?}");
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

/// A refused fill leaves nothing behind: the same fill id, corrected or not,
/// is judged again instead of being `AlreadyApplied`, whether the caller
/// carries on in the same transaction or commits it.
async fn refused_fills_give_their_id_back(b: Backend) {
    b.apply(&fill("a", Side::Buy, "10", "5.00")).await.unwrap();
    let mut usd = fill("b", Side::Buy, "1", "5.00");
    usd.currency = Currency::USD;
    let corrected = fill("b", Side::Buy, "1", "5.00");
    // Refused, then corrected under the same id, in one transaction.
    let out = b.apply_in_one_transaction(&[&usd, &corrected]).await;
    assert!(matches!(out[0], Err(PositionsError::CurrencyMismatch { .. })), "{:?}", out[0]);
    assert!(matches!(out[1], Ok(Step::Increase(_))), "{:?}", out[1]);
    assert_eq!(b.open("acc-1", "THYAO").await.unwrap().quantity().to_string(), "11");

    // Refused in a transaction the caller commits anyway: the identical fill
    // is refused again for what it is, then the corrected one applies.
    usd.fill_id = "c".into();
    let out = b.apply_in_one_transaction(&[&usd]).await;
    assert!(matches!(out[0], Err(PositionsError::CurrencyMismatch { .. })), "{:?}", out[0]);
    let again = b.apply(&usd).await;
    assert!(matches!(again, Err(PositionsError::CurrencyMismatch { .. })), "{again:?}");
    b.apply(&fill("c", Side::Sell, "1", "5.00")).await.unwrap();

    // An invalid fill (a price finer than the instrument's scale), then the
    // corrected one.
    let out =
        b.apply_in_one_transaction(&[&fill("d", Side::Buy, "1", "5.005"), &fill("d", Side::Buy, "1", "5.01")]).await;
    assert!(matches!(out[0], Err(PositionsError::PriceScale { .. })), "{:?}", out[0]);
    assert!(out[1].is_ok(), "{:?}", out[1]);

    // Only the fills that applied are recorded, and a real repeat is still
    // AlreadyApplied.
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_position_fills").await, 4);
    assert!(matches!(b.apply(&corrected).await, Err(PositionsError::AlreadyApplied { .. })));
    assert_eq!(b.open("acc-1", "THYAO").await.unwrap().quantity().to_string(), "11");
}

/// The average is rounded, half-even, to the instrument's price scale that
/// the fills carry, not to the places the prices happen to be written with.
async fn average_price_uses_the_instruments_price_scale(b: Backend) {
    // 3 at 10.1 and 1 at 10.2: 40.5 / 4 = 10.125, a tie at two places.
    b.apply(&fill("a", Side::Buy, "3", "10.1")).await.unwrap();
    b.apply(&fill("b", Side::Buy, "1", "10.2")).await.unwrap();
    let open = b.open("acc-1", "THYAO").await.unwrap();
    assert_eq!(open.price_scale(), 2);
    assert_eq!(open.average_price().unwrap().unwrap().to_string(), "10.12");
    // A reduction at prices written with one place still rounds the cost
    // taken out to the price scale, on both backends: 40.5 * 1/4 = 10.125 ->
    // 10.12; 40.5 - 10.12 = 30.38; 30.38 / 3 = 10.1266… -> 10.13.
    b.apply(&fill("c", Side::Sell, "1", "10.3")).await.unwrap();
    let open = b.open("acc-1", "THYAO").await.unwrap();
    assert_eq!((open.price_scale(), open.cost_basis().to_string()), (2, "30.38".to_owned()));
    assert_eq!(open.realized_pnl().amount().to_string(), "0.18");
    assert_eq!(open.average_price().unwrap().unwrap().to_string(), "10.13");
    // A flip opens the rest at the fill's scale.
    let mut flip = fill("d", Side::Sell, "4", "10.5");
    flip.price_scale = 3;
    b.apply(&flip).await.unwrap();
    let open = b.open("acc-1", "THYAO").await.unwrap();
    assert_eq!((open.quantity().to_string(), open.price_scale()), ("-1".to_owned(), 3));
    assert_eq!(open.average_price().unwrap().unwrap().to_string(), "10.500");
}

/// Every timestamp comes from the clock the book was given.
async fn timestamps_come_from_the_injected_clock(b: Backend) {
    let clock = ManualClock::new(5_000);
    let b = b.with_clock(clock.clone());
    b.apply(&fill("a", Side::Buy, "10", "5.00")).await.unwrap();
    clock.set(7_000);
    b.apply(&fill("b", Side::Sell, "10", "5.10")).await.unwrap();
    let all = b.positions("acc-1", PositionFilter::All).await;
    assert_eq!((all[0].opened_at_ms(), all[0].closed_at_ms()), (5_000, Some(7_000)));
    assert_eq!(b.count("SELECT MIN(applied_at_ms) FROM spark_position_fills").await, 5_000);
    assert_eq!(b.count("SELECT MAX(applied_at_ms) FROM spark_position_fills").await, 7_000);
}

/// The same fills written with other trailing zeros (`10.1` / `10.10`,
/// `1` / `1.0000000000000000000000000000`) give the same position: the cost
/// taken out by a reduction is rounded to the price scale, not to the places
/// the prices were written with, and a quantity whose trailing zeros overflow
/// the sum at 28 places still adds.
async fn trailing_zeros_change_no_position(b: Backend) {
    let at = |account: &str, instrument: &str, mut f: Fill| {
        f.fill_id = format!("{account}-{instrument}-{}", f.fill_id);
        f.account_id = account.to_owned();
        f.instrument = instrument.to_owned();
        f
    };
    let written = [
        ("short", ["10.1", "10.0", "10", "1", "1"]),
        ("padded", ["10.10", "10.00", "10.000", "1.0000000000000000000000000000", "1.00"]),
    ];
    for (account, [p1, p2, p3, one, unit]) in written {
        b.apply(&at(account, "X", fill("a", Side::Buy, "1", p1))).await.unwrap();
        b.apply(&at(account, "X", fill("b", Side::Buy, "2", p2))).await.unwrap();
        b.apply(&at(account, "X", fill("c", Side::Sell, "1", p3))).await.unwrap();
        b.apply(&at(account, "Y", fill("a", Side::Buy, "10000000000", unit))).await.unwrap();
        b.apply(&at(account, "Y", fill("b", Side::Buy, one, unit))).await.unwrap();
        b.apply(&at(account, "Y", fill("c", Side::Sell, one, unit))).await.unwrap();
    }
    for instrument in ["X", "Y"] {
        let short = b.open("short", instrument).await.unwrap();
        let padded = b.open("padded", instrument).await.unwrap();
        assert_eq!(short.quantity(), padded.quantity(), "{instrument}");
        assert_eq!(short.cost_basis(), padded.cost_basis(), "{instrument}");
        assert_eq!(short.realized_pnl(), padded.realized_pnl(), "{instrument}");
        assert_eq!(short.average_price().unwrap(), padded.average_price().unwrap(), "{instrument}");
    }
    // 30.1 / 3 = 10.0333… taken out as 10.03 (price scale 2) on both.
    let x = b.open("padded", "X").await.unwrap();
    assert_eq!((x.cost_basis(), x.realized_pnl().amount()), (Decimal::new(2007, 2), Decimal::new(-3, 2)));
    assert_eq!(b.open("padded", "Y").await.unwrap().quantity(), Decimal::new(10_000_000_000, 0));
}

/// A sum with more significant places than a Decimal holds is refused as an
/// overflow on both backends (PostgreSQL's NUMERIC would hold it, but it
/// could not be read back), and the position is unchanged.
async fn an_unrepresentable_sum_is_an_overflow(b: Backend) {
    b.apply(&fill("a", Side::Buy, "10000000000", "1")).await.unwrap();
    let tiny = fill("b", Side::Buy, "0.0000000000000000000000000001", "1");
    let out = b.apply(&tiny).await;
    assert!(matches!(out, Err(PositionsError::Money(spark_money::MoneyError::Overflow { .. }))), "{out:?}");
    let open = b.open("acc-1", "THYAO").await.unwrap();
    assert_eq!((open.quantity().to_string(), open.version()), ("10000000000".to_owned(), 1));
}

/// A later fill that lowers the price scale (0.4 at one place, then a fill at
/// zero places) leaves an open position whose average rounds to 0: that is a
/// typed error, never `None`, which reads as "no open position".
async fn an_average_that_rounds_to_zero_is_an_error_not_flat(b: Backend) {
    let mut buy = fill("a", Side::Buy, "1", "0.4");
    buy.price_scale = 1;
    b.apply(&buy).await.unwrap();
    let mut sell = fill("b", Side::Sell, "0.5", "1");
    sell.price_scale = 0;
    b.apply(&sell).await.unwrap();
    let open = b.open("acc-1", "THYAO").await.unwrap();
    assert_eq!((open.quantity().to_string(), open.price_scale()), ("0.5".to_owned(), 0));
    let avg = open.average_price();
    assert!(matches!(avg, Err(PositionsError::Money(spark_money::MoneyError::NonPositivePrice { .. }))), "{avg:?}");
}

/// What a position shows, without the database id (sequences differ between
/// backends once a refused insert is rolled back).
fn shown(p: &Position) -> String {
    format!(
        "{} {} {} q={} cost={} realized={} scale={} avg={:?} opened={} closed={:?} v={}",
        p.account_id(),
        p.instrument(),
        p.status(),
        p.quantity(),
        p.cost_basis(),
        p.realized_pnl().amount(),
        p.price_scale(),
        p.average_price().map(|a| a.map(|a| a.get())).map_err(|e| e.to_string()),
        p.opened_at_ms(),
        p.closed_at_ms(),
        p.version(),
    )
}

fn shown_step(s: &Result<Step, PositionsError>) -> String {
    let book = |b: &spark_positions::model::Book| format!("{}/{}/{}", b.quantity, b.cost_basis, b.realized);
    match s {
        Ok(Step::Open(b)) => format!("open {}", book(b)),
        Ok(Step::Increase(b)) => format!("increase {}", book(b)),
        Ok(Step::Reduce(b)) => format!("reduce {}", book(b)),
        Ok(Step::Close(b)) => format!("close {}", book(b)),
        Ok(Step::Flip { closed, opened }) => format!("flip {} {}", book(closed), book(opened)),
        Err(e) => format!("error {e}"),
    }
}

/// `mantissa * 10^-scale`, written with `pad` more trailing zeros.
fn written(mantissa: i64, scale: u32, pad: u32) -> String {
    let mut d = Decimal::new(mantissa, scale);
    d.rescale(scale + pad);
    d.to_string()
}

/// Random fill sequences (long, short, flips, prices with more places than
/// the scale, quantities and prices with extra trailing zeros, a price scale
/// that changes) applied to a SQLite and a PostgreSQL book: every step and
/// every position, open and closed, is the same on both.
#[test]
fn sqlite_and_postgres_agree_on_any_fills() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let Some(pg) = rt.block_on(Backend::postgres()) else { return };
    let lite = rt.block_on(Backend::sqlite());
    let fills = prop::collection::vec(
        (
            any::<bool>(),
            prop_oneof![1i64..=400, 1_000_000_000i64..=10_000_000_000],
            0u32..=2,
            prop_oneof![0u32..=4, 20u32..=26],
            1i64..=20_000,
            0u32..=3,
            0u32..=4,
            prop_oneof![4 => 0u32..=3, 1 => Just(28u32), 1 => Just(29u32), 1 => Just(u32::MAX)],
        ),
        1..30,
    );
    let case = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config { cases: 64, failure_persistence: None, ..Config::default() });
    runner
        .run(&fills, |fills| {
            let account = format!("acc-{}", case.fetch_add(1, Ordering::SeqCst));
            rt.block_on(async {
                for (i, (buy, q, qs, qpad, p, ps, ppad, price_scale)) in fills.into_iter().enumerate() {
                    let side = if buy { Side::Buy } else { Side::Sell };
                    let mut f = fill(&format!("{account}-{i}"), side, &written(q, qs, qpad), &written(p, ps, ppad));
                    f.account_id.clone_from(&account);
                    f.price_scale = price_scale;
                    let (a, b) = (lite.apply(&f).await, pg.apply(&f).await);
                    prop_assert_eq!(shown_step(&a), shown_step(&b), "fill {:?}", f);
                    let (a, b) = (
                        lite.positions(&account, PositionFilter::All).await,
                        pg.positions(&account, PositionFilter::All).await,
                    );
                    let (a, b): (Vec<_>, Vec<_>) = (a.iter().map(shown).collect(), b.iter().map(shown).collect());
                    prop_assert_eq!(a, b, "after fill {:?}", f);
                }
                Ok(())
            })
        })
        .unwrap();
    drop((pg, lite));
}

/// A quantity with 28 places is legal: reducing it takes out
/// `cost * q / Q`, whose exact terms exceed 128 bits although the share
/// (here exactly 5) fits. It used to be refused as an overflow.
async fn a_position_in_28_place_quantities_reduces(b: Backend) {
    b.apply(&fill("a", Side::Buy, "1.2345678901234567890123456789", "10.00")).await.unwrap();
    let out = b.apply(&fill("b", Side::Sell, "0.5", "10.00")).await;
    assert!(matches!(out, Ok(Step::Reduce(_))), "{out:?}");
    let open = b.open("acc-1", "THYAO").await.unwrap();
    assert_eq!(open.quantity().to_string(), "0.7345678901234567890123456789");
    assert_eq!(open.cost_basis().to_string(), "7.345678901234567890123456789");
    assert!(open.realized_pnl().amount().is_zero());
    assert_eq!(open.average_price().unwrap().unwrap().to_string(), "10.00");
}

/// Scale 0 takes a price written `10.00` (the same number as `10`) and
/// averages to whole units; 28 is the most a Decimal carries; 29 and above
/// are a typed error that leaves nothing behind.
async fn price_scale_edges(b: Backend) {
    let mut f = fill("a", Side::Buy, "3", "10.00");
    f.price_scale = 0;
    b.apply(&f).await.unwrap();
    let mut g = fill("b", Side::Buy, "1", "11");
    g.price_scale = 0;
    b.apply(&g).await.unwrap();
    // 41 / 4 = 10.25 -> 10 at 0 places.
    assert_eq!(b.open("acc-1", "THYAO").await.unwrap().average_price().unwrap().unwrap().to_string(), "10");
    for (id, qty, price) in [("c1", "2", "1.0000000000000000000000000001"), ("c2", "1", "1")] {
        let mut fine = fill(id, Side::Buy, qty, price);
        fine.instrument = "Z".to_owned();
        fine.price_scale = 28;
        b.apply(&fine).await.unwrap();
    }
    let open = b.open("acc-1", "Z").await.unwrap();
    assert_eq!(open.price_scale(), 28);
    // 3.0000000000000000000000000002 / 3 = 1.0000000000000000000000000000666…
    assert_eq!(open.average_price().unwrap().unwrap().to_string(), "1.0000000000000000000000000001");
    for scale in [29, u32::MAX] {
        let mut bad = fill("d", Side::Buy, "1", "10");
        bad.price_scale = scale;
        let out = b.apply(&bad).await;
        assert!(matches!(out, Err(PositionsError::PriceScale { price_scale, .. }) if price_scale == scale), "{out:?}");
    }
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_position_fills WHERE fill_id = 'd'").await, 0);
}

/// Inside the caller's transaction, one savepoint deep (a caller that uses
/// savepoints of its own): a refused fill rolls back only itself, the
/// caller's own write and the good fills around it stay, and the caller's
/// rollback takes everything back, the applied fill's id included.
async fn fills_join_the_callers_transaction_and_savepoints(b: Backend) {
    b.exec("CREATE TABLE caller_orders (id TEXT PRIMARY KEY)").await.unwrap();
    // Refused after its id was claimed: only the savepoint takes the claim back.
    let mut refused = fill("x", Side::Buy, "1", "5.00");
    refused.currency = Currency::USD;
    let (good, later) = (fill("a", Side::Buy, "10", "5.00"), fill("b", Side::Buy, "1", "5.00"));
    macro_rules! run {
        ($db:expr, $book:expr, $begin:expr, $commit:expr) => {{
            let mut tx = $begin;
            sqlx::query("INSERT INTO caller_orders (id) VALUES ('o1')").execute(&mut *tx).await.unwrap();
            let mut inner = sqlx::Connection::begin(&mut *tx).await.unwrap();
            $book.apply_fill(&mut inner, &good).await.unwrap();
            assert!(matches!(
                $book.apply_fill(&mut inner, &refused).await,
                Err(PositionsError::CurrencyMismatch { .. })
            ));
            $book.apply_fill(&mut inner, &later).await.unwrap();
            inner.commit().await.unwrap();
            sqlx::query("INSERT INTO caller_orders (id) VALUES ('o2')").execute(&mut *tx).await.unwrap();
            if $commit { tx.commit().await.unwrap() } else { tx.rollback().await.unwrap() }
        }};
    }
    for commit in [false, true] {
        match &b {
            Backend::Sqlite(db, book) => run!(db, book, db.pool.begin_with("BEGIN IMMEDIATE").await.unwrap(), commit),
            Backend::Postgres(db, book) => run!(db, book, db.pool.begin().await.unwrap(), commit),
        }
        let expected = if commit { (2, 2) } else { (0, 0) };
        let got = (
            b.count("SELECT COUNT(*) FROM caller_orders").await,
            b.count("SELECT COUNT(*) FROM spark_position_fills").await,
        );
        assert_eq!(got, expected, "commit = {commit}");
    }
    assert_eq!(b.open("acc-1", "THYAO").await.unwrap().quantity().to_string(), "11");
}

/// 0.01000 × 1.000000000000000000000 has 26 places; adding 803 makes the cost
/// too long for a Decimal until its trailing zeros go (803.01). PostgreSQL's
/// NUMERIC kept them, so the next sum came back as 6682.73 there and
/// 6682.7300000 on SQLite: equal values, different text in every listing.
async fn a_trimmed_sum_keeps_the_same_places_on_both_backends(b: Backend) {
    b.apply(&fill("a", Side::Buy, "1.000000000000000000000", "0.01000")).await.unwrap();
    b.apply(&fill("b", Side::Buy, "11", "73")).await.unwrap();
    assert_eq!(b.open("acc-1", "THYAO").await.unwrap().cost_basis().to_string(), "803.01");
    b.apply(&fill("c", Side::Buy, "4.60000", "1278.20")).await.unwrap();
    let open = b.open("acc-1", "THYAO").await.unwrap();
    assert_eq!(
        (open.quantity().to_string(), open.cost_basis().to_string()),
        ("16.600000000000000000000".into(), "6682.7300000".into())
    );
}

/// `apply_fill_or_roll_back` applies like `apply_fill`, and a refused fill
/// takes the whole transaction with it: the fills before it in the same
/// transaction are gone and every id is free again.
async fn a_fill_without_a_savepoint_rolls_back_its_whole_transaction(b: Backend) {
    let out = b
        .apply_or_roll_back(&[
            &fill("a", Side::Buy, "100", "10.00"),
            &fill("b", Side::Buy, "50", "11.00"),
            &fill("c", Side::Sell, "50", "12.00"),
        ])
        .await;
    assert!(matches!(out[..], [Ok(Step::Open(_)), Ok(Step::Increase(_)), Ok(Step::Reduce(_))]), "{out:?}");
    let open = b.open("acc-1", "THYAO").await.unwrap();
    assert_eq!((open.quantity().to_string(), open.realized_pnl().to_string()), ("100".into(), "83.33 TRY".into()));
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_position_fills WHERE position_id IS NOT NULL").await, 3);

    // A fill in another currency after one that applied: both are gone.
    let mut usd = fill("e", Side::Buy, "1", "5.00");
    usd.currency = Currency::USD;
    let out = b.apply_or_roll_back(&[&fill("d", Side::Buy, "1", "10.00"), &usd]).await;
    assert!(matches!(out[..], [Ok(Step::Increase(_)), Err(PositionsError::CurrencyMismatch { .. })]), "{out:?}");
    assert_eq!(b.open("acc-1", "THYAO").await.unwrap().quantity().to_string(), "100");
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_position_fills").await, 3);
    // Their ids are free; a repeat is still AlreadyApplied, and changes nothing.
    let out = b.apply_or_roll_back(&[&fill("d", Side::Buy, "1", "10.00"), &fill("e", Side::Sell, "101", "9.00")]).await;
    assert!(matches!(out[..], [Ok(Step::Increase(_)), Ok(Step::Close(_))]), "{out:?}");
    let out = b.apply_or_roll_back(&[&fill("a", Side::Buy, "100", "10.00")]).await;
    assert!(matches!(out[..], [Err(PositionsError::AlreadyApplied { .. })]), "{out:?}");
    assert!(b.open("acc-1", "THYAO").await.is_none());
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_position_fills WHERE position_id IS NOT NULL").await, 5);
}

/// A fill id applied by a transaction that has not committed yet: the same
/// fill in another transaction waits for it and is then `AlreadyApplied`,
/// never added a second time (PostgreSQL's one-statement claim checks the
/// recorded ids before it adds, and must still refuse the fill it added
/// while the first transaction was open).
async fn a_concurrent_repeat_of_an_uncommitted_fill_is_already_applied(b: Backend) {
    b.apply(&fill("a", Side::Buy, "10", "10.00")).await.unwrap();
    let repeat = fill("b", Side::Buy, "5", "10.00");
    macro_rules! race {
        ($db:expr, $book:expr, $begin:literal) => {{
            let mut first = $db.pool.begin_with($begin).await.unwrap();
            assert!(matches!($book.apply_fill(&mut first, &repeat).await, Ok(Step::Increase(_))));
            let (db, book, f) = ($db.clone(), $book.clone(), repeat.clone());
            let second = tokio::spawn(async move {
                let mut tx = db.pool.begin_with($begin).await?;
                let out = book.apply_fill(&mut tx, &f).await;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(out)
            });
            // Long enough for the second transaction to reach the position
            // row (or, on SQLite, the write lock) and wait there.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            first.commit().await.unwrap();
            second.await.unwrap().unwrap()
        }};
    }
    let second = match &b {
        Backend::Sqlite(db, book) => race!(db, book, "BEGIN IMMEDIATE"),
        Backend::Postgres(db, book) => race!(db, book, "BEGIN"),
    };
    assert!(matches!(second, Err(PositionsError::AlreadyApplied { .. })), "{second:?}");
    assert_eq!(b.open("acc-1", "THYAO").await.unwrap().quantity().to_string(), "15");
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_position_fills").await, 2);
}
