//! `spark db migrate`, `spark idempotency stats|gc` and `spark bench
//! idempotency` on SQLite and PostgreSQL.

use spark_idempotency::{Claim, Config, Fingerprint, IdempotencyStore, ManualClock, PgStore, StoredResponse};

use crate::{spark, spark_with};

#[test]
fn migrate_defaults_to_an_embedded_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = spark_with(&["db", "migrate", "--json"], Some(dir.path()), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v = run.json();
    for krate in ["spark-idempotency", "spark-positions", "spark-outbox"] {
        assert!(v["crates"][krate].as_u64() >= Some(1), "{krate}: {v}");
    }
    assert_eq!(v["database"], "sqlite://spark.db");
    assert!(dir.path().join("spark.db").exists());
    let run = spark_with(&["db", "migrate", "--json"], Some(dir.path()), &[]);
    assert_eq!(run.json()["applied"], 0, "migrations run once");
    let run = spark_with(&["idempotency", "stats", "--json"], Some(dir.path()), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["live_keys"], 0);
}

#[test]
fn database_url_comes_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("env.db").display());
    let run = spark_with(&["db", "migrate", "--json"], None, &[("SPARK_DATABASE_URL", &url)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["backend"], "sqlite");
    assert!(dir.path().join("env.db").exists());
}

#[test]
fn bad_database_urls_exit_2_without_leaking_passwords() {
    let run = spark(&["db", "migrate", "--database-url", "mysql://root:hunter2@localhost/x"]);
    assert_eq!(run.code, 2);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    // Stats on a database that was never migrated say what to do.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("empty.db").display());
    let run = spark(&["idempotency", "stats", "--database-url", &url]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("spark db migrate"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_gc_on_postgres() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let run = spark(&["db", "migrate", "--database-url", &db.url, "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["backend"], "postgres");

    // Twenty keys written two days ago (expired now), three live, one in flight.
    let past =
        PgStore::new(db.pool.clone(), Config::default().with_clock(ManualClock::new(now_ms() - 172_800_000))).unwrap();
    let live = PgStore::new(db.pool.clone(), Config::default()).unwrap();
    let fp = Fingerprint::of_request("POST", "/", b"");
    for (store, n, prefix) in [(&past, 20, "old"), (&live, 3, "new")] {
        for i in 0..n {
            let Claim::Acquired(lease) = store.claim("c", &format!("{prefix}{i}").parse().unwrap(), &fp).await.unwrap()
            else {
                panic!()
            };
            store.complete(&lease, &StoredResponse::new(201, "x")).await.unwrap();
        }
    }
    let _ = live.claim("c", &"busy".parse().unwrap(), &fp).await.unwrap();

    let url = db.url.clone();
    let stats = tokio::task::spawn_blocking(move || spark(&["idempotency", "stats", "--database-url", &url, "--json"]))
        .await
        .unwrap();
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    let v = stats.json();
    assert_eq!(
        (v["live_keys"].as_u64(), v["expired_awaiting_gc"].as_u64(), v["in_flight"].as_u64()),
        (Some(4), Some(20), Some(1))
    );
    assert!(v["oldest_record_age_ms"].as_i64().unwrap() >= 172_800_000);

    let url = db.url.clone();
    let gc = tokio::task::spawn_blocking(move || {
        spark(&["idempotency", "gc", "--batch", "7", "--database-url", &url, "--json"])
    })
    .await
    .unwrap();
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert_eq!(gc.json()["deleted"], 20);
    assert_eq!(live.stats().await.unwrap().live_keys, 4);
}

#[test]
fn bench_idempotency_reports_both_phases() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let run =
        spark(&["bench", "idempotency", "--database-url", &url, "--concurrency", "2", "--seconds", "1", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v = run.json();
    assert_eq!(v["backend"], "sqlite");
    assert!(v["plain"]["transactions"].as_u64().unwrap() > 0);
    assert!(v["idempotent"]["transactions"].as_u64().unwrap() > 0);
    let ratio = v["ratio"].as_f64().unwrap();
    assert!(ratio > 0.0, "{v}");
    let run = spark(&["bench", "idempotency", "--database-url", &url, "--concurrency", "0"]);
    assert_eq!(run.code, 2);
}

/// The same bench on PostgreSQL, where the claim carries the response and
/// bounds its lock wait in one statement; it leaves neither its table nor
/// its keys behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_idempotency_on_postgres() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let url = db.url.clone();
    let run = tokio::task::spawn_blocking(move || {
        spark(&["bench", "idempotency", "--database-url", &url, "--concurrency", "4", "--seconds", "2", "--json"])
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v = run.json();
    assert_eq!(v["backend"], "postgres");
    assert!(v["plain"]["transactions"].as_u64().unwrap() > 0, "{v}");
    assert!(v["idempotent"]["transactions"].as_u64().unwrap() > 0, "{v}");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spark_idempotency_keys WHERE scope = 'spark-bench'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('spark_bench_orders')::text").fetch_one(&db.pool).await.unwrap();
    assert_eq!(table, None);
}

fn now_ms() -> i64 {
    spark_db::Clock::now_ms(&spark_db::SystemClock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_list_on_sqlite() {
    use spark_money::{Currency, Side};
    use spark_positions::{Fill, SqlitePositions};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("p.db").display());
    let migrate = spark(&["db", "migrate", "--database-url", &url, "--json"]);
    assert_eq!(migrate.code, 0, "{}", migrate.stderr);
    assert_eq!(migrate.json()["crates"]["spark-positions"], 1);

    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let book = SqlitePositions::new();
    let fill = |id: &str, instrument: &str, side, qty: &str, price: &str| Fill {
        fill_id: id.into(),
        account_id: "acc-9".into(),
        instrument: instrument.into(),
        side,
        quantity: qty.parse().unwrap(),
        price: price.parse().unwrap(),
        currency: Currency::TRY,
        price_scale: 2,
    };
    let mut tx = pool.begin().await.unwrap();
    book.apply_fill(&mut tx, &fill("1", "THYAO", Side::Buy, "100", "101.30")).await.unwrap();
    book.apply_fill(&mut tx, &fill("2", "GARAN", Side::Buy, "10", "50.00")).await.unwrap();
    book.apply_fill(&mut tx, &fill("3", "GARAN", Side::Sell, "10", "52.00")).await.unwrap();
    tx.commit().await.unwrap();
    pool.close().await;

    let run = spark(&["positions", "list", "--account", "acc-9", "--database-url", &url, "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v = run.json();
    let open = v["positions"].as_array().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["instrument"], "THYAO");
    assert_eq!(open[0]["quantity"], "100");
    assert_eq!(open[0]["average_price"], "101.30");

    let run = spark(&["positions", "list", "--account", "acc-9", "--all", "--database-url", &url]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains("GARAN") && run.stdout.contains("closed") && run.stdout.contains("20.00 TRY"),
        "{}",
        run.stdout
    );
    let run = spark(&["positions", "list", "--database-url", &url]);
    assert_eq!(run.code, 2, "--account is required");
}
