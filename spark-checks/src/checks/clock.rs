//! `clock`: node vs database time, the kernel's NTP state, and sequence
//! headroom (a sequence near its column's limit, or behind its column).

use spark_db::Database;
use sqlx::Row as _;

use crate::check::{Check, Direction, Measurement, Outcome, Status, Threshold};
use crate::checks::{ntp, quote_ident, sql_error};
use crate::context::Context;

/// Node vs database offset (best of N round trips, compensated by half the
/// round trip), the kernel's NTP state through `adjtimex`, and every
/// sequence owned by a column: used share of the column's range, and
/// `last_value` not below the column's `max()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClockCheck;

#[async_trait::async_trait]
impl Check for ClockCheck {
    fn id(&self) -> &'static str {
        "clock"
    }

    async fn run(&self, ctx: &Context) -> Outcome {
        let cfg = &ctx.config().clock;
        let mut o = Outcome::new(self.id());
        if cfg.ntp {
            kernel_ntp(&mut o, cfg.ntp_error_fail_ms);
        }
        // Without a database only the kernel's NTP state is measured.
        let Some(db) = crate::checks::database(ctx, &mut o).await else { return o.finish("") };
        let offset = offset(&mut o, ctx, &db).await;
        let sequences = match &db {
            Database::Postgres(pool) => sequences(&mut o, ctx, pool).await,
            Database::Sqlite(_) => 0,
        };
        let summary = match offset {
            Some(ms) => format!("node is {ms:+.1} ms from the database; {sequences} sequence(s) with headroom"),
            None => format!("{sequences} sequence(s) with headroom"),
        };
        o.finish(&summary)
    }
}

fn kernel_ntp(o: &mut Outcome, fail_ms: u64) {
    match ntp::read() {
        Ok(state) => {
            o.detail(
                "ntp",
                serde_json::json!({
                    "synchronised": state.synchronised,
                    "state": state.state,
                    "esterror_us": state.esterror_us,
                    "maxerror_us": state.maxerror_us,
                }),
            );
            #[allow(clippy::cast_precision_loss, reason = "microseconds of clock error, far below 2^52")]
            let est_ms = state.esterror_us as f64 / 1000.0;
            if state.synchronised {
                // "Estimated error >= limit fails": at the limit is a failure.
                let threshold = Threshold::at_least(None, Some(fail_ms as f64));
                o.measure(Measurement::judged("ntp_estimated_error_ms", est_ms, "ms", threshold));
            } else {
                // An unsynchronised kernel does not maintain its error
                // estimate, so the figure is recorded but not judged.
                o.measure(Measurement::info("ntp_estimated_error_ms", est_ms, "ms"));
                o.found(
                    Status::Warn,
                    "the kernel clock is not NTP-synchronised (STA_UNSYNC): run chronyd or systemd-timesyncd on this node",
                );
            }
        }
        Err(e) => {
            o.found(Status::Warn, format!("cannot read the kernel's NTP state (adjtimex): {e}"));
        }
    }
}

/// Measures the offset; returns it in ms when measured.
async fn offset(o: &mut Outcome, ctx: &Context, db: &Database) -> Option<f64> {
    let cfg = &ctx.config().clock;
    if matches!(db, Database::Sqlite(_)) {
        o.detail("offset", "not measured: SQLite runs in this process, on this node's clock");
        return None;
    }
    let mut best: Option<(f64, f64)> = None; // (round trip, offset)
    for _ in 0..cfg.samples {
        let before = ctx.clock().now_ms();
        let server = match db.server_time_ms().await {
            Ok(t) => t,
            Err(e) => {
                o.found(Status::Fail, format!("cannot read the database clock: {}", crate::context::ErrorChain(&e)));
                return None;
            }
        };
        let after = ctx.clock().now_ms();
        #[allow(clippy::cast_precision_loss, reason = "millisecond timestamps are exact in f64 until the year 287,396")]
        let (rtt, off) = ((after - before) as f64, server as f64 - (before as f64 + after as f64) / 2.0);
        if best.is_none_or(|(r, _)| rtt < r) {
            best = Some((rtt, off));
        }
    }
    let (rtt, off) = best?;
    o.measure(Measurement::judged(
        "offset_ms",
        off.abs(),
        "ms",
        Threshold {
            warn: Some(cfg.offset_warn_ms as f64),
            fail: Some(cfg.offset_fail_ms as f64),
            direction: Direction::Above,
        },
    ));
    o.measure(Measurement::info("round_trip_ms", rtt, "ms"));
    o.detail("offset_signed_ms", off);
    o.detail("samples", cfg.samples);
    Some(off)
}

const SEQUENCES: &str = "\
SELECT sn.nspname || '.' || seq.relname AS sequence_name,
       tn.nspname AS table_schema,
       tbl.relname AS table_name,
       a.attname AS column_name,
       a.atttypid::regtype::text AS column_type,
       s.seqmax AS seq_max,
       s.seqincrement AS increment,
       s.seqstart AS start_value,
       ps.last_value AS last_value
FROM pg_sequence s
JOIN pg_class seq ON seq.oid = s.seqrelid
JOIN pg_namespace sn ON sn.oid = seq.relnamespace
JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                 AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
JOIN pg_class tbl ON tbl.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = tbl.relnamespace
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
LEFT JOIN pg_sequences ps ON ps.schemaname = sn.nspname AND ps.sequencename = seq.relname
WHERE sn.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1";

/// One sequence owned by a column, as [`SEQUENCES`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SequenceRow {
    /// `schema.sequence`.
    pub(crate) name: String,
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) column: String,
    pub(crate) column_type: String,
    pub(crate) seq_max: i64,
    pub(crate) increment: i64,
    pub(crate) start: i64,
    /// `None` before the first `nextval()`.
    pub(crate) last: Option<i64>,
}

impl SequenceRow {
    /// `schema.table.column`.
    pub(crate) fn qualified(&self) -> String {
        format!("{}.{}.{}", self.schema, self.table, self.column)
    }

    /// The next value `nextval()` hands out: `last_value + increment` once
    /// called, else the start value.
    pub(crate) fn next(&self) -> i64 {
        self.last.map_or(self.start, |l| l.saturating_add(self.increment))
    }

    /// The largest value the column holds, `None` when the table is empty.
    pub(crate) async fn column_max(&self, pool: &sqlx::PgPool) -> Result<Option<i64>, sqlx::Error> {
        let sql = format!(
            "SELECT max({})::text FROM {}.{}",
            quote_ident(&self.column),
            quote_ident(&self.schema),
            quote_ident(&self.table)
        );
        let max: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await?;
        Ok(max.and_then(|s| s.parse().ok()))
    }

    /// The failure when the next value collides with a value the column
    /// already holds (a sequence behind its column, as after a restore).
    pub(crate) fn behind(&self, column_max: Option<i64>) -> Option<String> {
        let (next, max) = (self.next(), column_max?);
        (self.increment > 0 && next <= max).then(|| {
            let (name, column, schema, table) = (&self.name, &self.column, &self.schema, &self.table);
            format!(
                "sequence {name} would hand out {next} but {} already holds {max}: the next insert \
                 collides (after a restore?); fix with SELECT setval('{name}', (SELECT max({column}) FROM {schema}.{table}))",
                self.qualified()
            )
        })
    }
}

/// Every sequence owned by a column, outside the system schemas.
pub(crate) async fn sequence_rows(pool: &sqlx::PgPool) -> Result<Vec<SequenceRow>, sqlx::Error> {
    let rows = sqlx::query(SEQUENCES).fetch_all(pool).await?;
    Ok(rows
        .iter()
        .map(|row| SequenceRow {
            name: row.get("sequence_name"),
            schema: row.get("table_schema"),
            table: row.get("table_name"),
            column: row.get("column_name"),
            column_type: row.get("column_type"),
            seq_max: row.get("seq_max"),
            increment: row.get("increment"),
            start: row.get("start_value"),
            last: row.get("last_value"),
        })
        .collect())
}

/// Checks every column-owned sequence; returns how many were measured.
async fn sequences(o: &mut Outcome, ctx: &Context, pool: &sqlx::PgPool) -> usize {
    let cfg = &ctx.config().clock;
    let rows = match sequence_rows(pool).await {
        Ok(rows) => rows,
        Err(e) => {
            sql_error(o, "reading sequences", &e);
            return 0;
        }
    };
    let mut listed = Vec::new();
    let mut worst_used: f64 = 0.0;
    for row in &rows {
        let SequenceRow { name, column_type, seq_max, increment, last, .. } = row;
        if *increment <= 0 {
            listed.push(serde_json::json!({"sequence": name, "skipped": "descending"}));
            continue;
        }
        let column_max = match column_type.as_str() {
            "smallint" => i64::from(i16::MAX),
            "integer" => i64::from(i32::MAX),
            _ => i64::MAX,
        };
        let capacity = column_max.min(*seq_max);
        #[allow(clippy::cast_precision_loss, reason = "a share of a range, as a percentage")]
        let used = last.unwrap_or(0).max(0) as f64 / capacity as f64 * 100.0;
        worst_used = worst_used.max(used);
        let qualified = row.qualified();
        let column_max_value = match row.column_max(pool).await {
            Ok(v) => v,
            Err(e) => {
                sql_error(o, &format!("reading max({qualified})"), &e);
                None
            }
        };
        if let Some(failure) = row.behind(column_max_value) {
            o.found(Status::Fail, failure);
        }
        let threshold = Threshold {
            warn: Some(f64::from(cfg.sequence_warn_percent)),
            fail: Some(f64::from(cfg.sequence_fail_percent)),
            direction: Direction::Above,
        };
        let m = Measurement::judged(format!("{name} used of {qualified} ({column_type})"), used, "%", threshold);
        if m.status != Status::Pass {
            o.measure(m);
        }
        listed.push(serde_json::json!({
            "sequence": name, "column": qualified, "column_type": column_type, "capacity": capacity,
            "last_value": last, "column_max": column_max_value, "used_percent": used,
        }));
    }
    o.measure(Measurement::info("sequences", listed.len() as f64, "count"));
    o.measure(Measurement::info("sequence_used_max", worst_used, "%"));
    o.detail("sequences", listed);
    rows.len()
}
