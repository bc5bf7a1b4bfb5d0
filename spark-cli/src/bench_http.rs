//! `spark bench http`: load on `POST /v1/orders` of a running order service.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::output::{CmdResult, Output};

#[derive(Debug, Args)]
pub(crate) struct HttpBench {
    /// The service's base URL (loopback only, e.g. http://127.0.0.1:8080).
    #[arg(long)]
    url: String,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Seconds to run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Requests per second to offer (open loop); without it, as fast as the
    /// concurrency allows.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate: Option<u32>,
    /// Share of requests that repeat an earlier key (same body): replays.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=90))]
    duplicate_percent: u32,
    /// The API token to send as `Authorization: Bearer` (a client of the
    /// service's --clients file allowed on `bench-acc-*`); best passed in
    /// the environment, where `ps` does not show it.
    #[arg(long, env = "SPARK_BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Without --token: the X-Client-Id to send to a service run with
    /// `--dev-auth header`.
    #[arg(long, default_value = "spark-bench")]
    client_id: String,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    requests: u64,
    seconds: f64,
    requests_per_sec: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    created_201: u64,
    replayed_201: u64,
    conflict_409: u64,
    /// Refused as unauthenticated: a missing or wrong --token.
    unauthenticated_401: u64,
    /// Refused for the account: the token's client may not use `bench-acc-*`.
    forbidden_403: u64,
    other_4xx: u64,
    server_5xx: u64,
    /// Redirects, counted and not followed: a redirect could lead off this
    /// machine.
    redirect_3xx: u64,
    /// Any other status (1xx, a 2xx other than 201).
    other_status: u64,
    transport_errors: u64,
    /// Ticks skipped because `concurrency` requests were already in flight.
    saturated: u64,
}

fn body(n: u64) -> String {
    serde_json::json!({
        "account_id": format!("bench-acc-{}", n % 50),
        "symbol": "THYAO",
        "side": if n.is_multiple_of(3) { "sell" } else { "buy" },
        "quantity": (1 + n % 10).to_string(),
        "price": "301.50",
    })
    .to_string()
}

pub(crate) async fn run(args: HttpBench, out: &Output) -> CmdResult {
    let url = crate::loopback::loopback_url(&args.url, "load tests target this machine only")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Redirects are not followed: the loopback check above is on --url
    // alone, and a Location header may name any host.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1024)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let endpoint = url.join("/v1/orders")?;
    let run_id = format!("{:08x}", fastrand::u32(..));
    let seq = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicU64::new(0));
    let stats = Arc::new(std::sync::Mutex::new((Report::default(), Vec::<f64>::new())));
    let dup = u64::from(args.duplicate_percent);
    let credential = match &args.token {
        Some(token) => ("authorization", format!("Bearer {token}")),
        None => ("x-client-id", args.client_id.clone()),
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);

    let one = {
        let (client, endpoint, run_id, seq, stats, credential) =
            (client.clone(), endpoint.clone(), run_id.clone(), seq.clone(), stats.clone(), credential.clone());
        move || {
            let (client, endpoint, run_id, stats, credential) =
                (client.clone(), endpoint.clone(), run_id.clone(), stats.clone(), credential.clone());
            let n = seq.fetch_add(1, Ordering::Relaxed);
            // Every so often, repeat a recent key with its original body.
            let k = if n > 10 && n % 100 < dup { n - 1 - (n * 7919) % 10.min(n) } else { n };
            async move {
                let t = Instant::now();
                let r = client
                    .post(endpoint)
                    .header("content-type", "application/json")
                    .header(credential.0, credential.1)
                    .header("idempotency-key", format!("{run_id}-{k}"))
                    .body(body(k))
                    .send()
                    .await;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let mut s = stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                s.0.requests += 1;
                s.1.push(ms);
                match r {
                    Ok(r) => match r.status().as_u16() {
                        201 if r.headers().contains_key("idempotent-replayed") => s.0.replayed_201 += 1,
                        201 => s.0.created_201 += 1,
                        409 => s.0.conflict_409 += 1,
                        401 => s.0.unauthenticated_401 += 1,
                        403 => s.0.forbidden_403 += 1,
                        400..=499 => s.0.other_4xx += 1,
                        500..=599 => s.0.server_5xx += 1,
                        300..=399 => s.0.redirect_3xx += 1,
                        _ => s.0.other_status += 1,
                    },
                    Err(_) => s.0.transport_errors += 1,
                }
            }
        }
    };

    let mut tasks = tokio::task::JoinSet::new();
    match args.rate {
        Some(rate) => {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < deadline {
                ticker.tick().await;
                if in_flight.load(Ordering::Relaxed) >= u64::from(args.concurrency) {
                    stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0.saturated += 1;
                    continue;
                }
                let (fut, in_flight) = (one(), in_flight.clone());
                in_flight.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    fut.await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
                while tasks.try_join_next().is_some() {}
            }
        }
        None => {
            for _ in 0..args.concurrency {
                let one = one.clone();
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        one().await;
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let (mut report, mut lat) = std::mem::take(&mut *stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    report.seconds = elapsed;
    report.requests_per_sec = report.requests as f64 / elapsed;
    report.p50_ms = pct(0.50);
    report.p95_ms = pct(0.95);
    report.p99_ms = pct(0.99);
    let text = || {
        format!(
            "{} requests in {:.1} s: {:.0} req/s · p50 {:.2} ms · p95 {:.2} ms · p99 {:.2} ms\n\
             201 created {} · 201 replayed {} · 409 {} · 401 {} · 403 {} · other 4xx {} · 5xx {} · \
             3xx (not followed) {} · other {} · transport errors {} · saturated ticks {}",
            report.requests,
            report.seconds,
            report.requests_per_sec,
            report.p50_ms,
            report.p95_ms,
            report.p99_ms,
            report.created_201,
            report.replayed_201,
            report.conflict_409,
            report.unauthenticated_401,
            report.forbidden_403,
            report.other_4xx,
            report.server_5xx,
            report.redirect_3xx,
            report.other_status,
            report.transport_errors,
            report.saturated
        )
    };
    // Figures from refused requests measure the refusal, not the service:
    // a run the service would not authorise is a "no" (exit 1).
    if report.unauthenticated_401 + report.forbidden_403 > 0 {
        let why = "the service refused the credentials: pass --token (or SPARK_BENCH_TOKEN) of a client allowed \
                   on bench-acc-*, or --client-id against a service run with --dev-auth header";
        return out.refuse(&report, &format!("{}\n{why}", text()), true);
    }
    out.emit(&report, text)
}
