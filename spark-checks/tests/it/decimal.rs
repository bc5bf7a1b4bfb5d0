//! `decimal` against a fresh PostgreSQL database.

use spark_checks::Status;
use spark_checks::checks::DecimalCheck;

use crate::{assert_status, config_for, has_finding, measurement, run};

async fn decimal_on(ddl: &str) -> Option<spark_checks::Outcome> {
    let db = spark_testkit::postgres().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.to_owned())).execute(&db.pool).await.unwrap();
    Some(run(&DecimalCheck, config_for(&db.url, "")).await)
}

#[tokio::test]
async fn a_double_precision_price_fails_naming_the_column() {
    let Some(o) =
        decimal_on("CREATE TABLE trades (id bigserial PRIMARY KEY, price double precision, qty numeric)").await
    else {
        return;
    };
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "public.trades.price is double precision"), "{o:#?}");
    assert!(!o.findings.iter().any(|f| f.message.contains("public.trades.qty")), "{o:#?}");
    assert_eq!(measurement(&o, "money_columns").value, 2.0);
    assert_eq!(measurement(&o, "exact_columns").value, 1.0);
}

#[tokio::test]
async fn numeric_money_columns_pass() {
    let Some(o) = decimal_on("CREATE TABLE trades (id bigserial PRIMARY KEY, price numeric, qty numeric(20, 8))").await
    else {
        return;
    };
    assert_status(&o, Status::Pass);
    assert_eq!(measurement(&o, "exact_columns").value, 2.0);
    assert_eq!(o.details["numeric_round_trip"], "101.30");
}

#[tokio::test]
async fn a_text_price_warns() {
    let Some(o) = decimal_on("CREATE TABLE trades (id bigserial PRIMARY KEY, price text, qty numeric)").await else {
        return;
    };
    assert_status(&o, Status::Warn);
    assert!(has_finding(&o, Status::Warn, "public.trades.price is text"), "{o:#?}");
}

#[tokio::test]
async fn sqlite_a_real_price_fails_and_text_passes() {
    let lite = spark_testkit::sqlite().await;
    sqlx::raw_sql("CREATE TABLE fills (id INTEGER PRIMARY KEY, price REAL, qty TEXT)")
        .execute(&lite.pool)
        .await
        .unwrap();
    let o = run(&DecimalCheck, config_for(&lite.url, "")).await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "main.fills.price is REAL"), "{o:#?}");
    assert!(!o.findings.iter().any(|f| f.message.contains("main.fills.qty")), "{o:#?}");

    sqlx::raw_sql("DROP TABLE fills; CREATE TABLE fills (id INTEGER PRIMARY KEY, price TEXT, qty TEXT)")
        .execute(&lite.pool)
        .await
        .unwrap();
    let o = run(&DecimalCheck, config_for(&lite.url, "")).await;
    assert_status(&o, Status::Pass);
    assert_eq!(measurement(&o, "exact_columns").value, 2.0);
}
