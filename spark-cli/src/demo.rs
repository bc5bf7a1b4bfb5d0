//! `spark demo`: every guarantee in one run, on the embedded default.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use spark_money::{Price, Side, TickRounding, TickTable};
use spark_outbox::{ChannelPublisher, Relay};

use crate::output::{CmdResult, Output};

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Distinct orders in the burst.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(10..=10_000))]
    orders: u32,
    /// Where to write the summary JSON.
    #[arg(long, default_value = "spark-demo-summary.json")]
    summary: PathBuf,
    /// The database [default: a fresh SQLite file in a temporary directory].
    #[arg(long)]
    database_url: Option<String>,
    /// Where the release evidence goes: a new `UTC-STAMP` directory inside
    /// holds the ritual's sealed bundle, the rehearsal's rollback record,
    /// the release notes and the demo's signing key.
    #[arg(long, default_value = "spark-demo-evidence")]
    evidence_dir: PathBuf,
}

#[derive(Debug, Default, Serialize)]
struct Checks {
    replays_identical: bool,
    every_refusal_refused: bool,
    one_order_per_key: bool,
    one_open_position_per_account_and_instrument: bool,
    positions_match_accepted_orders: bool,
    every_event_published: bool,
    only_authorised_clients_served: bool,
    evidence_bundles_verify: bool,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    ok: bool,
    database: String,
    requests: u64,
    orders_accepted: u64,
    replays: u64,
    conflicts_409: u64,
    rejected_422: u64,
    unauthenticated_401: u64,
    forbidden_403: u64,
    hidden_404: u64,
    open_positions: u64,
    events_published: u64,
    outbox_lag_p50_ms: i64,
    outbox_lag_p99_ms: i64,
    duration_ms: u128,
    checks: Checks,
    release: crate::demo_ritual::RitualSummary,
}

/// One request the burst sends.
#[derive(Clone)]
struct Req {
    key: String,
    body: String,
}

struct Resp {
    status: u16,
    replayed: bool,
    body: String,
}

const ACCOUNTS: [&str; 5] = ["acc-1", "acc-2", "acc-3", "acc-4", "acc-5"];
const SYMBOLS: [(&str, i64); 3] = [("THYAO", 30_150), ("GARAN", 10_137), ("AKBNK", 5_912)];

fn order_body(account: &str, symbol: &str, side: Side, qty: &str, price: &str) -> String {
    serde_json::json!({ "account_id": account, "symbol": symbol, "side": side, "quantity": qty, "price": price })
        .to_string()
}

pub(crate) async fn run(args: DemoArgs, out: &Output) -> CmdResult {
    let started = Instant::now();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().context("temporary directory")?;
    let url = args.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", tmp.path().join("demo.db").display()));
    let db = order_service::Database::connect(&url, 8).await?;
    order_service::migrate(&db).await?;
    // Two API clients with fresh random tokens; the file keeps only their
    // SHA-256, as an operator's would.
    let (token, other_token) = (order_service::auth::new_token(), order_service::auth::new_token());
    let clients_file = tmp.path().join("clients.toml");
    std::fs::write(
        &clients_file,
        format!(
            "[[client]]\nid = \"demo-client\"\ntoken_sha256 = \"{}\"\naccounts = [\"acc-*\"]\n\n\
             [[client]]\nid = \"other-client\"\ntoken_sha256 = \"{}\"\naccounts = [\"other-*\"]\n",
            order_service::auth::token_sha256(&token),
            order_service::auth::token_sha256(&other_token),
        ),
    )
    .context("cannot write the demo clients file")?;
    let auth = order_service::Auth::bearer(order_service::Clients::load(&clients_file)?);
    let state = order_service::AppState::new(db.clone(), order_service::Instruments::default_set(), auth);

    // The relay publishes into a local channel sink while the burst runs.
    let (publisher, mut received) = ChannelPublisher::new();
    let outbox = state.outbox();
    let relays = Relay::builder(outbox.clone()).poll_interval(Duration::from_millis(50)).spawn(publisher)?;
    let lags = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let lag_sink = lags.clone();
    let collector = tokio::spawn(async move {
        while let Some(event) = received.recv().await {
            let now = spark_db::Clock::now_ms(&spark_db::SystemClock);
            lag_sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(now - event.created_at_ms);
        }
    });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        axum::serve(listener, order_service::app(state).into_make_service_with_connect_info::<std::net::SocketAddr>())
            .await
    });
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?;

    // The burst: distinct orders, then the refusals and the parallel retries.
    let bist = TickTable::bist_equity();
    let mut expected: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut plan = Vec::new();
    for i in 0..args.orders {
        let account = ACCOUNTS[i as usize % ACCOUNTS.len()];
        let (symbol, cents) = SYMBOLS[i as usize % SYMBOLS.len()];
        let side = if i % 4 == 3 { Side::Sell } else { Side::Buy };
        let raw = Price::new(spark_money::Decimal::new(cents + i64::from(i % 50), 2))?;
        let price = bist.align(raw, TickRounding::Passive(side))?;
        // At least two lots: every planned order clears the 100 TRY minimum notional.
        let qty = 2 + i % 20;
        *expected.entry((account.to_owned(), symbol.to_owned())).or_default() +=
            if side == Side::Buy { i64::from(qty) } else { -i64::from(qty) };
        plan.push(Req {
            key: format!("demo-{i}"),
            body: order_body(account, symbol, side, &qty.to_string(), &price.to_string()),
        });
    }
    let retried: Vec<Req> = plan.iter().step_by(10).cloned().collect();
    let mut refusals = Vec::new();
    for (i, r) in plan.iter().step_by(20).enumerate() {
        // A reused key with another body.
        refusals.push(Req { key: r.key.clone(), body: order_body("acc-1", "THYAO", Side::Buy, "999", "301.50") });
        // A price off the tick and a quantity off the lot.
        refusals
            .push(Req { key: format!("off-tick-{i}"), body: order_body("acc-1", "THYAO", Side::Buy, "10", "301.37") });
        refusals
            .push(Req { key: format!("off-lot-{i}"), body: order_body("acc-1", "THYAO", Side::Buy, "10.5", "301.50") });
    }
    let refusals_sent = refusals.len() as u64;
    let total = plan.len() + retried.len() * 5 + refusals.len() + retried.len() + AUTH_PROBES;
    let progress = crate::progress::bar(total as u64, "requests", out.is_json());

    let send = |req: Req| {
        let (client, base, progress, token) = (client.clone(), base.clone(), progress.clone(), token.clone());
        async move {
            let r = client
                .post(format!("{base}/v1/orders"))
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .header("idempotency-key", &req.key)
                .body(req.body.clone())
                .send()
                .await?;
            let status = r.status().as_u16();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            let body = r.text().await?;
            progress.inc(1);
            anyhow::Ok((req.key, Resp { status, replayed, body }))
        }
    };
    let mut summary = Summary { database: crate::db::redact(&url), ..Summary::default() };
    let mut first: HashMap<String, String> = HashMap::new();
    let mut identical = true;
    let mut record = |summary: &mut Summary, key: String, r: Resp| {
        summary.requests += 1;
        match r.status {
            201 if r.replayed => {
                summary.replays += 1;
                identical &= first.get(&key).is_some_and(|b| *b == r.body);
            }
            201 => {
                summary.orders_accepted += 1;
                identical &= first.insert(key, r.body).is_none();
            }
            409 => summary.conflicts_409 += 1,
            422 => summary.rejected_422 += 1,
            _ => {}
        }
    };

    // 1. Distinct orders, 16 at a time; each retried key also sent 5 times in parallel.
    let mut set = tokio::task::JoinSet::new();
    let mut queue: Vec<Req> = plan.clone();
    for r in &retried {
        for _ in 0..5 {
            queue.push(r.clone());
        }
    }
    // Interleave so that retries race their originals.
    queue.sort_by_key(|r| r.key.clone());
    let mut results = Vec::new();
    for req in queue {
        if set.len() >= 16
            && let Some(done) = set.join_next().await
        {
            results.push(done.context("request task")??);
        }
        set.spawn(send(req));
    }
    while let Some(done) = set.join_next().await {
        results.push(done.context("request task")??);
    }
    // Originals first, so replays can be compared with them.
    results.sort_by_key(|(_, r)| r.replayed);
    for (key, r) in results {
        record(&mut summary, key, r);
    }
    // 2. The refusals, and a final retry of every raced key (all replays now).
    for req in refusals.into_iter().chain(retried.iter().cloned()) {
        let (key, r) = send(req).await?;
        record(&mut summary, key, r);
    }
    // 3. Authentication: no token and a wrong token are 401, another
    // client's account is 403, another client's order is 404; the owner
    // reads it.
    let auth_ok = auth_probes(&client, &base, &token, &other_token, &first, &mut summary).await?;
    progress.inc(AUTH_PROBES as u64);
    progress.finish_and_clear();

    // 4. Let the relay drain, then check every guarantee in the database.
    let deadline = Instant::now() + Duration::from_secs(15);
    while outbox.stats().await?.pending > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relays.shutdown().await.context("outbox relay")?;
    // The service stays up for the ritual, which checks its headers.
    collector.await.ok();
    let mut lags = lags.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    lags.sort_unstable();
    summary.events_published = lags.len() as u64;
    summary.outbox_lag_p50_ms = lags.get(lags.len() / 2).copied().unwrap_or(0);
    summary.outbox_lag_p99_ms =
        lags.get((lags.len() * 99 / 100).min(lags.len().saturating_sub(1))).copied().unwrap_or(0);

    let (orders, duplicate_open, open_rows): (i64, i64, Vec<(String, String, String)>) = match &db {
        order_service::Database::Sqlite(p) => (
            sqlx::query_scalar("SELECT COUNT(*) FROM order_service_orders").fetch_one(p).await?,
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM (SELECT 1 FROM spark_positions WHERE status = 'open'
                 GROUP BY account_id, instrument HAVING COUNT(*) > 1)",
            )
            .fetch_one(p)
            .await?,
            sqlx::query_as("SELECT account_id, instrument, quantity FROM spark_positions WHERE status = 'open'")
                .fetch_all(p)
                .await?,
        ),
        order_service::Database::Postgres(p) => (
            sqlx::query_scalar("SELECT COUNT(*) FROM order_service_orders").fetch_one(p).await?,
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM (SELECT 1 FROM spark_positions WHERE status = 'open'
                 GROUP BY account_id, instrument HAVING COUNT(*) > 1) d",
            )
            .fetch_one(p)
            .await?,
            sqlx::query_as("SELECT account_id, instrument, quantity::text FROM spark_positions WHERE status = 'open'")
                .fetch_all(p)
                .await?,
        ),
    };
    summary.open_positions = open_rows.len() as u64;
    let held: BTreeMap<(String, String), i64> =
        open_rows.into_iter().filter_map(|(a, i, q)| Some(((a, i), q.parse::<i64>().ok()?))).collect();
    let wanted: BTreeMap<(String, String), i64> = expected.into_iter().filter(|(_, q)| *q != 0).collect();
    summary.checks = Checks {
        replays_identical: identical && summary.replays >= retried.len() as u64,
        every_refusal_refused: summary.rejected_422 == refusals_sent,
        one_order_per_key: u64::try_from(orders).unwrap_or(0) == summary.orders_accepted
            && summary.orders_accepted == u64::from(args.orders),
        one_open_position_per_account_and_instrument: duplicate_open == 0,
        positions_match_accepted_orders: held == wanted,
        every_event_published: outbox.stats().await?.pending == 0
            && summary.events_published == summary.orders_accepted,
        only_authorised_clients_served: auth_ok,
        // Set below, once the release half has run.
        evidence_bundles_verify: false,
    };
    // The release half: a rehearsed rollback, the ritual, release notes
    // and verify, against this database and this binary.
    let stamp = spark_evidence::utc_stamp(spark_db::system_clock().now_ms());
    let release = crate::demo_ritual::run(&url, &base, &args.evidence_dir.join(stamp), out.is_json()).await;
    server.abort();
    summary.release = release?;
    summary.checks.evidence_bundles_verify = summary.release.bundle_intact && summary.release.rehearsal_intact;
    let c = &summary.checks;
    summary.ok = c.evidence_bundles_verify
        && c.replays_identical
        && c.every_refusal_refused
        && c.one_order_per_key
        && c.one_open_position_per_account_and_instrument
        && c.positions_match_accepted_orders
        && c.every_event_published
        && c.only_authorised_clients_served;
    summary.duration_ms = started.elapsed().as_millis();
    std::fs::write(&args.summary, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", args.summary.display()))?;

    let r = &summary.release;
    // On the embedded default some items cannot be measured (no Prometheus,
    // no WAL archive, no flag file): the demo shows them, it does not accept
    // them for anyone.
    let reasons: String = r.reasons.iter().map(|line| format!("\n  not counted: {line}")).collect();
    let text = || {
        let mark = |b: bool| if b { "held" } else { "BROKEN" };
        format!(
            "{} requests in {:.1} s on {}\n\
             orders accepted {} · replays {} · 409s {} · 422s {} · 401s {} · 403s {} · 404s {} · open positions {} \
             · events published {} (lag p50 {} ms, p99 {} ms)\n\
             each replay identical: {}\nevery bad order and reused key refused: {}\none order per key: {}\none open position per account and instrument: {}\n\
             positions match accepted orders: {}\nevery event published: {}\n\
             only authorised clients served: {}\n\
             ritual for release demo in {} ms: {} ({}/10){}\n\
             evidence bundles verify: {} (ritual bundle {}, key {})\n\
             release notes: {}\nsummary written to {}",
            summary.requests,
            started.elapsed().as_secs_f64(),
            summary.database,
            summary.orders_accepted,
            summary.replays,
            summary.conflicts_409,
            summary.rejected_422,
            summary.unauthenticated_401,
            summary.forbidden_403,
            summary.hidden_404,
            summary.open_positions,
            summary.events_published,
            summary.outbox_lag_p50_ms,
            summary.outbox_lag_p99_ms,
            mark(c.replays_identical),
            mark(c.every_refusal_refused),
            mark(c.one_order_per_key),
            mark(c.one_open_position_per_account_and_instrument),
            mark(c.positions_match_accepted_orders),
            mark(c.every_event_published),
            mark(c.only_authorised_clients_served),
            r.ritual_ms,
            r.verdict,
            r.items_passed,
            reasons,
            mark(c.evidence_bundles_verify),
            r.bundle.display(),
            r.public_key.display(),
            r.release_notes.display(),
            args.summary.display()
        )
    };
    if summary.ok { out.emit(&summary, text) } else { out.refuse(&summary, &text(), true) }
}

/// Requests [`auth_probes`] sends.
const AUTH_PROBES: usize = 5;

/// The authentication probes; each is counted in the summary, and the
/// result says whether every one was answered as it must be.
async fn auth_probes(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    other_token: &str,
    accepted: &HashMap<String, String>,
    summary: &mut Summary,
) -> anyhow::Result<bool> {
    let order = order_body("acc-1", "THYAO", Side::Buy, "10", "301.50");
    let post = |auth: Option<String>, key: &str, body: String| {
        let mut r = client
            .post(format!("{base}/v1/orders"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r
    };
    let own_id = accepted
        .values()
        .find_map(|b| serde_json::from_str::<serde_json::Value>(b).ok()?["order_id"].as_str().map(str::to_owned))
        .context("no order was accepted")?;
    let get = |t: &str| client.get(format!("{base}/v1/orders/{own_id}")).header("authorization", format!("Bearer {t}"));
    let probes = [
        (post(None, "auth-1", order.clone()), 401),
        (post(Some(format!("Bearer {}", order_service::auth::new_token())), "auth-2", order.clone()), 401),
        (
            post(Some(format!("Bearer {token}")), "auth-3", order_body("other-1", "THYAO", Side::Buy, "10", "301.50")),
            403,
        ),
        (get(other_token), 404),
        (get(token), 200),
    ];
    let mut ok = true;
    for (request, want) in probes {
        let status = request.send().await?.status().as_u16();
        summary.requests += 1;
        match status {
            401 => summary.unauthenticated_401 += 1,
            403 => summary.forbidden_403 += 1,
            404 => summary.hidden_404 += 1,
            _ => {}
        }
        ok &= status == want;
    }
    Ok(ok)
}
