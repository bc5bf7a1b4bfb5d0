//! `clock` against a fresh PostgreSQL database: sequences behind their
//! column or near its limit, and the node's offset from the server.

use std::sync::Arc;

use spark_checks::checks::ClockCheck;
use spark_checks::{Context, Outcome, Status};
use spark_db::Clock;

use crate::{assert_status, config_for, has_finding, measurement, run, run_in};

/// The sequence checks must not depend on this machine's NTP state.
const NO_NTP: &str = "[clock]\nntp = false\n";

/// 2^31, the size of an `integer` column's positive range (plus one).
const INT4: f64 = 2_147_483_648.0;

async fn clock_on(ddl: &str) -> Option<Outcome> {
    let db = spark_testkit::postgres().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.to_owned())).execute(&db.pool).await.unwrap();
    Some(run(&ClockCheck, config_for(&db.url, NO_NTP)).await)
}

/// The judged measurement of sequence `seq` (`public.name`).
fn used<'a>(o: &'a Outcome, seq: &str) -> &'a spark_checks::Measurement {
    o.measurements
        .iter()
        .find(|m| m.name.starts_with(&format!("{seq} used of ")))
        .unwrap_or_else(|| panic!("no usage measurement for {seq} in {o:#?}"))
}

#[tokio::test]
async fn a_sequence_behind_its_column_fails() {
    let Some(o) = clock_on(
        "CREATE TABLE orders (id serial PRIMARY KEY, note text);
         INSERT INTO orders (note) SELECT 'n' || g FROM generate_series(1, 50) g;
         SELECT setval('orders_id_seq', 10);",
    )
    .await
    else {
        return;
    };
    assert_status(&o, Status::Fail);
    assert!(
        has_finding(
            &o,
            Status::Fail,
            "sequence public.orders_id_seq would hand out 11 but public.orders.id already holds 50"
        ),
        "{o:#?}"
    );
    // The offset against a server on this machine is no part of the verdict.
    assert_eq!(measurement(&o, "offset_ms").status, Status::Pass, "{o:#?}");
}

#[tokio::test]
async fn a_sequence_ahead_of_its_column_passes() {
    let Some(o) = clock_on(
        "CREATE TABLE orders (id serial PRIMARY KEY, note text);
         INSERT INTO orders (note) SELECT 'n' || g FROM generate_series(1, 50) g;",
    )
    .await
    else {
        return;
    };
    assert_status(&o, Status::Pass);
    assert_eq!(measurement(&o, "sequences").value, 1.0);
}

#[tokio::test]
async fn an_int4_sequence_at_80_percent_warns() {
    let value = (0.8 * INT4) as i64;
    let Some(o) =
        clock_on(&format!("CREATE TABLE orders (id serial PRIMARY KEY); SELECT setval('orders_id_seq', {value});"))
            .await
    else {
        return;
    };
    assert_status(&o, Status::Warn);
    let m = used(&o, "public.orders_id_seq");
    assert_eq!(m.status, Status::Warn, "{m:?}");
    assert!((m.value - 80.0).abs() < 0.01, "{m:?}");
}

#[tokio::test]
async fn an_int4_sequence_at_95_percent_fails() {
    let value = (0.95 * INT4) as i64;
    let Some(o) =
        clock_on(&format!("CREATE TABLE orders (id serial PRIMARY KEY); SELECT setval('orders_id_seq', {value});"))
            .await
    else {
        return;
    };
    assert_status(&o, Status::Fail);
    let m = used(&o, "public.orders_id_seq");
    assert_eq!(m.status, Status::Fail, "{m:?}");
    assert!((m.value - 95.0).abs() < 0.01, "{m:?}");
}

#[tokio::test]
async fn a_bigint_sequence_on_an_int4_column_counts_against_the_column() {
    let value = (0.8 * INT4) as i64;
    let Some(o) = clock_on(&format!(
        "CREATE TABLE orders (id integer PRIMARY KEY);
         CREATE SEQUENCE orders_seq AS bigint OWNED BY orders.id;
         ALTER TABLE orders ALTER COLUMN id SET DEFAULT nextval('orders_seq');
         SELECT setval('orders_seq', {value});"
    ))
    .await
    else {
        return;
    };
    assert_status(&o, Status::Warn);
    let m = used(&o, "public.orders_seq");
    assert_eq!(m.status, Status::Warn, "{m:?}");
    assert!(m.name.contains("(integer)"), "{m:?}");
    assert!((m.value - 80.0).abs() < 0.01, "{m:?}");
}

/// The system clock moved by a fixed amount.
#[derive(Debug)]
struct Skewed(i64);

impl Clock for Skewed {
    fn now_ms(&self) -> i64 {
        spark_db::SystemClock.now_ms() + self.0
    }
}

#[tokio::test]
async fn a_node_300_ms_ahead_fails() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let ctx = Context::new(config_for(&db.url, NO_NTP)).with_clock(Arc::new(Skewed(300)));
    let o = run_in(&ClockCheck, ctx).await;
    assert_status(&o, Status::Fail);
    let offset = measurement(&o, "offset_ms");
    assert_eq!(offset.status, Status::Fail, "{offset:?}");
    assert!((offset.value - 300.0).abs() < 50.0, "{offset:?}");
    // The node is ahead: the server is behind it.
    let signed = o.details["offset_signed_ms"].as_f64().unwrap();
    assert!(signed < -250.0, "{signed}");
    eprintln!(
        "measured: skewed offset_ms = {:.1}, round_trip_ms = {:.1}",
        offset.value,
        measurement(&o, "round_trip_ms").value
    );
}

#[tokio::test]
async fn the_system_clock_is_within_100_ms_of_a_local_server() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let o = run(&ClockCheck, config_for(&db.url, NO_NTP)).await;
    let offset = measurement(&o, "offset_ms");
    assert_eq!(offset.status, Status::Pass, "{o:#?}");
    assert!(offset.value < 100.0, "{offset:?}");
    assert_status(&o, Status::Pass);
    eprintln!(
        "measured: system offset_ms = {:.1}, round_trip_ms = {:.1}",
        offset.value,
        measurement(&o, "round_trip_ms").value
    );
}

#[tokio::test]
async fn the_kernel_ntp_state_is_reported_when_asked() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let o = run(&ClockCheck, config_for(&db.url, "[clock]\nntp = true\n")).await;
    let ntp = &o.details["ntp"];
    assert!(ntp.is_object(), "{o:#?}");
    assert!(ntp["synchronised"].is_boolean() && ntp["esterror_us"].is_i64(), "{ntp}");
    measurement(&o, "ntp_estimated_error_ms");
    eprintln!("measured: ntp = {ntp}");

    let off = run(&ClockCheck, config_for(&db.url, NO_NTP)).await;
    assert!(off.details.get("ntp").is_none(), "{off:#?}");
}
