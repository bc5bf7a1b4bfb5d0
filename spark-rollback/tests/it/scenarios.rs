//! Recorded scenarios: each a snapshot file under `tests/fixtures/`, made by
//! the generator function beside its test, and the decision the engine must
//! reach when the file is replayed.
//!
//! The files are committed so that a reader (or another tool) can replay
//! exactly what the tests replay; `fixtures_match_their_generators` keeps
//! them honest. After changing a generator, rewrite the files with
//! `SPARK_BLESS=1 cargo test -p spark-rollback --test it fixtures_match`.

use std::path::PathBuf;

use spark_rollback::{Decision, Engine, Evaluation, Metrics, Replay, Role, Signal, Snapshot, TriggerId, TriggerStatus};

/// The stage start, unix seconds.
pub(crate) const START: i64 = 1_700_000_000;
/// The stage every scenario replays.
pub(crate) const STAGE: &str = "25%";
/// The snapshot resolution, seconds.
const STEP: u32 = 15;
/// The default plan's evaluation interval: every expected time is checked
/// to within one of it.
const INTERVAL_MS: i64 = 30_000;
const MIB: f64 = 1024.0 * 1024.0;

/// A tiny xorshift64 generator: deterministic noise without a rand crate.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [-1, 1].
    pub(crate) fn unit(&mut self) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "53 random bits are exact in an f64")]
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        u * 2.0 - 1.0
    }

    /// `mean` with up to `relative` of it added or taken away.
    fn jitter(&mut self, mean: f64, relative: f64) -> f64 {
        mean * (1.0 + relative * self.unit())
    }
}

/// A signal's healthy level and its relative noise, alike for both roles:
/// 50 requests/s, 0.1 % 5xx, a 120 ms p95, a CPU busy enough (45 %) that a
/// slow canary is not "slow while idle", 512 MiB of RSS, no CSP violations
/// and no decimal precision errors.
pub(crate) fn healthy_level(signal: Signal) -> (f64, f64) {
    match signal {
        Signal::HttpRequestsPerSecond => (50.0, 0.02),
        Signal::Http5xxRatio => (0.001, 0.2),
        Signal::ApiLatencyP95Seconds => (0.12, 0.05),
        Signal::WsStalenessSeconds => (2.0, 0.1),
        Signal::FeedStalenessSeconds => (1.5, 0.1),
        Signal::RiskBlocksPerMinute => (0.2, 0.15),
        Signal::IdempotencyConflictRatio => (0.001, 0.2),
        Signal::IdempotencyExpiredRatio => (0.02, 0.1),
        Signal::CspViolationsPerMinute | Signal::DecimalPrecisionErrorsTotal => (0.0, 0.0),
        Signal::PgbouncerSaturationRatio => (0.35, 0.05),
        Signal::ProcessCpuRatio => (0.45, 0.05),
        Signal::ProcessResidentMemoryBytes => (512.0 * MIB, 0.002),
        Signal::DbConnections => (20.0, 0.05),
        Signal::OutboxLagP99Seconds => (0.5, 0.2),
        Signal::WsDisconnectsPerMinute => (1.0, 0.2),
        other => panic!("no healthy level for {other}: add one"),
    }
}

/// A healthy sample of `signal`.
fn healthy(rng: &mut Rng, signal: Signal) -> f64 {
    let (mean, noise) = healthy_level(signal);
    let v = rng.jitter(mean, noise);
    if signal == Signal::DbConnections { v.round() } else { v }
}

/// Four significant digits, as a scrape would show them, so the files stay
/// short; non-finite values pass through.
fn round(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    #[allow(clippy::cast_possible_truncation, reason = "the decimal exponent of a finite f64")]
    let e = 3 - v.abs().log10().floor() as i32;
    if e >= 0 {
        let m = 10f64.powi(e);
        (v * m).round() / m
    } else {
        let m = 10f64.powi(-e);
        (v / m).round() * m
    }
}

/// A snapshot from `before` minutes before the stage start to `after`
/// minutes after it, every 15 s: `sample(rng, signal, role, t)` gives the
/// value `t` seconds from the start (`NaN` for Prometheus's `NaN`, `None`
/// for no sample at all).
fn generate(
    seed: u64,
    before: i64,
    after: i64,
    mut sample: impl FnMut(&mut Rng, Signal, Role, i64) -> Option<f64>,
) -> Snapshot {
    let mut rng = Rng::new(seed);
    let mut snapshot = Snapshot::new(STEP);
    for signal in Signal::ALL {
        for role in Role::ALL {
            for t in (-before * 60..=after * 60).step_by(STEP as usize) {
                if let Some(v) = sample(&mut rng, signal, role, t) {
                    snapshot.push(signal, role, START + t, round(v));
                }
            }
        }
    }
    snapshot
}

/// Twenty minutes of the stage (and `before` minutes before it), healthy
/// for both roles except where `change` gives a sample (`Some(Some(v))`)
/// or leaves one out (`Some(None)`).
fn healthy_except(
    seed: u64,
    before: i64,
    mut change: impl FnMut(&mut Rng, Signal, Role, i64) -> Option<Option<f64>>,
) -> Snapshot {
    generate(seed, before, 20, |rng, signal, role, t| {
        change(rng, signal, role, t).unwrap_or_else(|| Some(healthy(rng, signal)))
    })
}

fn healthy_fixture() -> Snapshot {
    healthy_except(1, 0, |_, _, _, _| None)
}

/// p95 250 ms, then 520 ms from three minutes in.
fn api_p95_regression() -> Snapshot {
    healthy_except(2, 0, |rng, signal, role, t| match (signal, role) {
        (Signal::ApiLatencyP95Seconds, Role::Canary) => Some(Some(rng.jitter(if t > 180 { 0.52 } else { 0.25 }, 0.02))),
        _ => None,
    })
}

/// Canary 5xx flapping between 4 % and 1 % every two minutes (4 % first):
/// never 5 minutes above 3 %, but 2.5 % on average, 25 times the 0.1 %
/// error budget.
fn error_flapping() -> Snapshot {
    healthy_except(3, 0, |rng, signal, role, t| match (signal, role) {
        (Signal::Http5xxRatio, Role::Canary) => {
            Some(Some(rng.jitter(if (t / 120) % 2 == 0 { 0.04 } else { 0.01 }, 0.02)))
        }
        _ => None,
    })
}

/// The canary gets no requests: its rate is 0, the ratios and the latency
/// quantile are `NaN` (0/0, as Prometheus returns them), counter rates 0,
/// and the idle process uses 2 % CPU.
fn zero_canary_traffic() -> Snapshot {
    healthy_except(4, 0, |rng, signal, role, _| match (signal, role) {
        (_, Role::Baseline) => None,
        (Signal::HttpRequestsPerSecond | Signal::RiskBlocksPerMinute | Signal::WsDisconnectsPerMinute, _) => {
            Some(Some(0.0))
        }
        (Signal::Http5xxRatio | Signal::IdempotencyConflictRatio | Signal::ApiLatencyP95Seconds, _) => {
            Some(Some(f64::NAN))
        }
        (Signal::ProcessCpuRatio, _) => Some(Some(rng.jitter(0.02, 0.1))),
        _ => None,
    })
}

/// Every canary series stops after five minutes; the baseline goes on.
fn canary_data_stops() -> Snapshot {
    healthy_except(5, 0, |_, _, role, t| (role == Role::Canary && t > 300).then_some(None))
}

fn growing_memory(rng: &mut Rng, t: i64) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "seconds of a short fixture")]
    let minutes = t as f64 / 60.0;
    rng.jitter(512.0 * MIB * (1.0 + 0.02 * minutes), 0.002)
}

/// Canary RSS +2 % of its starting value per minute; the baseline's flat.
fn memory_leak_canary() -> Snapshot {
    healthy_except(6, 0, |rng, signal, role, t| {
        (signal == Signal::ProcessResidentMemoryBytes && role == Role::Canary).then(|| Some(growing_memory(rng, t)))
    })
}

/// Both roles' RSS +2 % per minute.
fn memory_growth_both() -> Snapshot {
    healthy_except(7, 0, |rng, signal, _, t| {
        (signal == Signal::ProcessResidentMemoryBytes).then(|| Some(growing_memory(rng, t)))
    })
}

/// 40 canary requests per five minutes (2 every 15 s), 5 % of them 5xx: two
/// errors in the `error_rate` window, far too few to judge.
fn low_traffic_errors() -> Snapshot {
    healthy_except(8, 0, |_, signal, role, _| match (signal, role) {
        (Signal::HttpRequestsPerSecond, Role::Canary) => Some(Some(2.0 / 15.0)),
        (Signal::Http5xxRatio, Role::Canary) => Some(Some(0.05)),
        _ => None,
    })
}

/// 2,000 canary requests a minute, 4 % of them 5xx from the stage start.
///
/// The request rate and the 5xx ratio reach 45 minutes back (the canary
/// healthy at the previous stage), the other signals 10: the burn-rate
/// pairs average over whatever their long windows hold, and without that
/// history `slo_burn_fast` fires on the first 30 s of 4 % and pre-empts
/// `error_rate`; with less than about 35 minutes of it `slo_burn_slow`
/// (6× over 6 h and 30 m, i.e. 0.6 % errors) still fires before 5 minutes.
fn error_rate_sustained() -> Snapshot {
    healthy_except(9, 45, |rng, signal, role, t| match (signal, role) {
        (Signal::HttpRequestsPerSecond | Signal::Http5xxRatio, _) if t < -600 => None,
        _ if t < -600 => Some(None),
        (Signal::HttpRequestsPerSecond, Role::Canary) => Some(Some(rng.jitter(2000.0 / 60.0, 0.02))),
        (Signal::Http5xxRatio, Role::Canary) if t > 0 => Some(Some(rng.jitter(0.04, 0.02))),
        _ => None,
    })
}

/// Baseline 5xx 0.4 % and risk blocks 0.2/min, and the canary's (or, unless
/// `canary_only`, both roles') raised to 0.56 % and 0.28/min: each 40 %
/// higher, each below every threshold (0.56 % is also below the 0.6 % at
/// which `slo_burn_slow` fires, so the noise is kept to ±5 %).
fn correlated(seed: u64, canary_only: bool) -> Snapshot {
    healthy_except(seed, 0, move |rng, signal, role, _| {
        let worse = role == Role::Canary || !canary_only;
        match signal {
            Signal::Http5xxRatio => Some(Some(rng.jitter(if worse { 0.0056 } else { 0.004 }, 0.05))),
            Signal::RiskBlocksPerMinute => Some(Some(rng.jitter(if worse { 0.28 } else { 0.2 }, 0.15))),
            _ => None,
        }
    })
}

fn correlated_canary() -> Snapshot {
    correlated(10, true)
}

fn correlated_both() -> Snapshot {
    correlated(11, false)
}

/// The canary's decimal precision error counter goes from 0 to 1 at 7m15s.
fn decimal_precision_error() -> Snapshot {
    healthy_except(12, 0, |_, signal, role, t| {
        (signal == Signal::DecimalPrecisionErrorsTotal && role == Role::Canary).then_some(Some(if t >= 435 {
            1.0
        } else {
            0.0
        }))
    })
}

/// A fixture's file name (without `.json`) and its generator.
pub(crate) type Fixture = (&'static str, fn() -> Snapshot);

/// Every fixture.
pub(crate) const FIXTURES: [Fixture; 12] = [
    ("healthy", healthy_fixture),
    ("api_p95_regression", api_p95_regression),
    ("error_flapping", error_flapping),
    ("zero_canary_traffic", zero_canary_traffic),
    ("canary_data_stops", canary_data_stops),
    ("memory_leak_canary", memory_leak_canary),
    ("memory_growth_both", memory_growth_both),
    ("low_traffic_errors", low_traffic_errors),
    ("error_rate_sustained", error_rate_sustained),
    ("correlated_canary", correlated_canary),
    ("correlated_both", correlated_both),
    ("decimal_precision_error", decimal_precision_error),
];

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.json"))
}

/// A snapshot as JSON with one sample a line (pretty JSON puts each number
/// on its own line and makes the files three times longer), its signals in
/// the order of `signals` and each signal's series reversed where `reverse`
/// says so.
pub(crate) fn to_json_ordered(snapshot: &Snapshot, signals: &[&str], reverse: &[bool]) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string");
    let mut out = format!(
        "{{\n  \"format\": {},\n  \"step_seconds\": {},\n  \"signals\": {{\n",
        q(&snapshot.format),
        snapshot.step_seconds
    );
    for (i, name) in signals.iter().enumerate() {
        let matrix = &snapshot.signals[*name];
        let mut series: Vec<_> = matrix.result.iter().collect();
        if reverse.get(i).copied().unwrap_or(false) {
            series.reverse();
        }
        out +=
            &format!("    {}: {{\n      \"resultType\": {},\n      \"result\": [\n", q(name), q(&matrix.result_type));
        for (j, s) in series.iter().enumerate() {
            let metric = serde_json::to_string(&s.metric).expect("labels");
            out += &format!("        {{\n          \"metric\": {metric},\n          \"values\": [\n");
            for (k, (t, v)) in s.values.iter().enumerate() {
                let t = serde_json::to_string(t).expect("a timestamp");
                let comma = if k + 1 < s.values.len() { "," } else { "" };
                out += &format!("            [{t}, {}]{comma}\n", q(v));
            }
            out += &format!("          ]\n        }}{}\n", if j + 1 < series.len() { "," } else { "" });
        }
        out += &format!("      ]\n    }}{}\n", if i + 1 < signals.len() { "," } else { "" });
    }
    out + "  }\n}\n"
}

/// A snapshot as a fixture file holds it.
fn to_fixture_json(snapshot: &Snapshot) -> String {
    let names: Vec<&str> = snapshot.signals.keys().map(String::as_str).collect();
    to_json_ordered(snapshot, &names, &[])
}

#[test]
fn fixtures_match_their_generators() {
    let bless = std::env::var("SPARK_BLESS").is_ok_and(|v| v == "1");
    for (name, generate) in FIXTURES {
        let snapshot = generate();
        let json = to_fixture_json(&snapshot);
        let path = fixture_path(name);
        if bless {
            std::fs::create_dir_all(path.parent().expect("a folder")).expect("the fixtures folder");
            std::fs::write(&path, &json).expect("a writable fixture");
            continue;
        }
        let file = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; write it with SPARK_BLESS=1", path.display()));
        assert_eq!(Snapshot::parse(&file).expect("a valid fixture"), snapshot, "{name}.json");
        if let Some((line, (a, b))) = file.lines().zip(json.lines()).enumerate().find(|(_, (a, b))| a != b) {
            panic!(
                "{name}.json line {}: {a:?} but its generator gives {b:?}; rerun with SPARK_BLESS=1 if the generator changed on purpose",
                line + 1
            );
        }
        assert_eq!(file.len(), json.len(), "{name}.json differs from its generator in length");
    }
}

/// A fixture file, loaded from disk.
pub(crate) fn load(name: &str) -> Snapshot {
    Snapshot::load(&fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub(crate) fn replay_snapshot(snapshot: &Snapshot, until_minutes: Option<i64>) -> (Engine, Metrics, Replay) {
    let engine = Engine::new(spark_rollback::Plan::default()).expect("the default plan");
    let metrics = Metrics::from_snapshot(snapshot).expect("valid metrics");
    let stage = engine.plan().stage(STAGE).expect("the stage");
    let replay =
        engine.replay(&metrics, stage, START * 1000, until_minutes.map(|m| (START + m * 60) * 1000)).expect("a replay");
    (engine, metrics, replay)
}

fn replay(name: &str, until_minutes: Option<i64>) -> (Engine, Metrics, Replay) {
    replay_snapshot(&load(name), until_minutes)
}

/// `at_ms` is `seconds` after the stage start, give or take one interval.
#[track_caller]
fn assert_near(at_ms: i64, seconds: i64) {
    let expected = (START + seconds) * 1000;
    assert!(
        (at_ms - expected).abs() <= INTERVAL_MS,
        "decided {}s after the start, expected {seconds}s ± 30s",
        (at_ms - START * 1000) / 1000
    );
}

#[track_caller]
fn assert_rollback(replay: &Replay, trigger: TriggerId, seconds: i64) {
    assert_eq!(replay.decision().kind(), "rollback", "{}", replay.last.reason);
    assert_eq!(replay.decision().trigger(), Some(trigger), "{}", replay.last.reason);
    assert_near(replay.last.at_ms, seconds);
}

fn status(evaluation: &Evaluation, id: TriggerId) -> TriggerStatus {
    evaluation.triggers.iter().find(|t| t.id == id).expect("every trigger is reported").status
}

/// Every evaluation instant of the fixture, from one interval after the
/// start to its last sample.
fn every_instant(engine: &Engine, metrics: &Metrics) -> Vec<Evaluation> {
    let stage = engine.plan().stage(STAGE).expect("the stage");
    let (_, last) = metrics.span_ms().expect("samples");
    (1..)
        .map(|k| START * 1000 + k * INTERVAL_MS)
        .take_while(|&at| at <= last)
        .map(|at| engine.evaluate(metrics, stage, START * 1000, at).expect("an evaluation"))
        .collect()
}

#[test]
fn healthy_promotes_at_the_stage_minimum() {
    let (_, _, replay) = replay("healthy", None);
    assert_eq!(replay.decision(), &Decision::Promote, "{}", replay.last.reason);
    assert_near(replay.last.at_ms, 15 * 60);
    assert!(replay.trail.iter().all(|e| e.decision == "continue" || e.decision == "promote"));
}

#[test]
fn p95_regression_rolls_back_after_five_minutes_above_400ms() {
    let (_, _, replay) = replay("api_p95_regression", None);
    assert_rollback(&replay, TriggerId::ApiP95, 8 * 60);
}

#[test]
fn flapping_errors_burn_the_budget_without_tripping_error_rate() {
    let (engine, metrics, replay) = replay("error_flapping", None);
    // With no history before the stage, the 1 h and 5 m windows both hold
    // only the first 30 s of 4 %: 40 times the budget.
    assert_rollback(&replay, TriggerId::SloBurnFast, 30);
    assert_ne!(status(&replay.last, TriggerId::ErrorRate), TriggerStatus::Firing);
    // Not only until the burn rate fires: over the whole 20 minutes the
    // 5xx ratio is never above 3 % for 5 minutes, with plenty of requests.
    let all = every_instant(&engine, &metrics);
    assert_eq!(all.len(), 40);
    for e in &all {
        let s = status(e, TriggerId::ErrorRate);
        assert_ne!(s, TriggerStatus::Firing, "error_rate fired at {}", e.at_ms);
        if e.at_ms >= (START + 5 * 60) * 1000 {
            assert_eq!(s, TriggerStatus::Ok, "error_rate at {}", e.at_ms);
        }
    }
}

#[test]
fn zero_canary_traffic_holds_past_the_stage_minimum() {
    let (_, _, replay) = replay("zero_canary_traffic", Some(16));
    assert_eq!(replay.decision().kind(), "hold", "{}", replay.last.reason);
    assert_eq!(replay.last.at_ms, (START + 16 * 60) * 1000);
    assert_eq!(
        replay.last.reason,
        "gate api_p95: no recent api_latency_p95_seconds at the last 3 evaluations; never promoted on missing data"
    );
    assert!(replay.trail.iter().all(|e| e.decision == "continue" || e.decision == "hold"));
    let first_hold = replay.trail.iter().find(|e| e.decision == "hold").expect("a hold");
    assert_near(first_hold.at_ms, 90);
}

#[test]
fn canary_data_stopping_holds() {
    let (_, _, replay) = replay("canary_data_stops", None);
    assert_eq!(replay.decision().kind(), "hold", "{}", replay.last.reason);
    assert_eq!(replay.last.at_ms, (START + 20 * 60) * 1000);
    assert_eq!(
        replay.last.reason,
        "gate api_p95: no recent api_latency_p95_seconds at the last 3 evaluations; never promoted on missing data"
    );
    assert!(replay.trail.iter().all(|e| e.decision == "continue" || e.decision == "hold"));
    // The last sample is at 5 m; at 5m30s the gates see nothing, and the
    // third evaluation without data holds.
    let first_hold = replay.trail.iter().find(|e| e.decision == "hold").expect("a hold");
    assert_near(first_hold.at_ms, 6 * 60 + 30);
}

#[test]
fn a_canary_memory_leak_rolls_back() {
    let (_, _, replay) = replay("memory_leak_canary", None);
    assert_rollback(&replay, TriggerId::MemoryLeak, 10 * 60);
}

#[test]
fn memory_growing_on_both_sides_holds_as_the_platform() {
    let (_, _, replay) = replay("memory_growth_both", None);
    assert_eq!(replay.decision().kind(), "hold", "{}", replay.last.reason);
    assert_eq!(status(&replay.last, TriggerId::MemoryLeak), TriggerStatus::Platform);
    assert!(replay.last.reason.starts_with("memory_leak: canary RSS +"), "{}", replay.last.reason);
    assert!(replay.last.reason.ends_with("the platform, not the release"), "{}", replay.last.reason);
    // Continue until the slope has its 10 minutes of data, then hold (and
    // so never promote at 15 m).
    let first_hold = replay.trail.iter().find(|e| e.decision == "hold").expect("a hold");
    assert_near(first_hold.at_ms, 10 * 60);
    assert!(replay.trail.iter().all(|e| e.decision == "continue" || e.decision == "hold"));
}

#[test]
fn two_errors_in_forty_requests_do_not_roll_back() {
    let (engine, metrics, replay) = replay("low_traffic_errors", None);
    assert_eq!(replay.decision().kind(), "hold", "{}", replay.last.reason);
    assert!(
        replay.last.reason.starts_with("too few canary requests to judge: 160 since the stage started, 300 needed"),
        "{}",
        replay.last.reason
    );
    assert!(replay.trail.iter().all(|e| e.decision != "rollback"));
    for e in every_instant(&engine, &metrics) {
        assert_eq!(status(&e, TriggerId::ErrorRate), TriggerStatus::Insufficient, "at {}", e.at_ms);
    }
    let e =
        engine.evaluate(&metrics, engine.plan().stage(STAGE).unwrap(), START * 1000, (START + 10 * 60) * 1000).unwrap();
    let error_rate = e.triggers.iter().find(|t| t.id == TriggerId::ErrorRate).unwrap();
    let requests = error_rate.values.iter().find(|(k, _)| *k == "requests").unwrap().1;
    assert!((requests - 40.0).abs() < 0.5, "{requests} requests in the window");
}

#[test]
fn sustained_errors_at_volume_roll_back_on_error_rate() {
    let (_, _, replay) = replay("error_rate_sustained", None);
    assert_rollback(&replay, TriggerId::ErrorRate, 5 * 60);
}

#[test]
fn correlated_small_degradations_in_the_canary_roll_back() {
    let (_, _, replay) = replay("correlated_canary", None);
    assert_rollback(&replay, TriggerId::CorrelatedDegradation, 120);
    // Every gate still passes: only the comparison with the baseline sees it.
    assert!(replay.last.gates.iter().all(|g| g.status == spark_rollback::GateStatus::Pass));
}

#[test]
fn correlated_degradations_shared_with_the_baseline_do_not_roll_back() {
    let (engine, metrics, replay) = replay("correlated_both", None);
    assert_eq!(replay.decision(), &Decision::Promote, "{}", replay.last.reason);
    assert_near(replay.last.at_ms, 15 * 60);
    for e in every_instant(&engine, &metrics) {
        let s = status(&e, TriggerId::CorrelatedDegradation);
        // Eight samples a side before the test runs: 2 minutes.
        let expected = if e.at_ms < (START + 120) * 1000 { TriggerStatus::Insufficient } else { TriggerStatus::Ok };
        assert_eq!(s, expected, "at {}", e.at_ms);
    }
}

#[test]
fn one_decimal_precision_error_rolls_back_at_the_next_evaluation() {
    let (_, _, replay) = replay("decimal_precision_error", None);
    assert_rollback(&replay, TriggerId::DecimalPrecisionErrors, 7 * 60 + 30);
}

#[test]
fn evaluate_at_an_instant_equals_the_replay_trail() {
    for (name, until) in [
        ("healthy", None),
        ("api_p95_regression", None),
        ("memory_growth_both", None),
        ("low_traffic_errors", None),
        ("zero_canary_traffic", Some(16)),
        ("correlated_canary", None),
    ] {
        let (engine, metrics, replay) = replay(name, until);
        let stage = engine.plan().stage(STAGE).unwrap();
        assert!(replay.trail.len() >= 4, "{name}: {} instants", replay.trail.len());
        for entry in &replay.trail {
            let e = engine.evaluate(&metrics, stage, START * 1000, entry.at_ms).unwrap();
            assert_eq!(e.decision.kind(), entry.decision, "{name} at {}", entry.at_ms);
            assert_eq!(e.decision.trigger(), entry.trigger, "{name} at {}", entry.at_ms);
            assert_eq!(e.reason, entry.reason, "{name} at {}", entry.at_ms);
        }
        let last = engine.evaluate(&metrics, stage, START * 1000, replay.last.at_ms).unwrap();
        assert_eq!(
            serde_json::to_value(&last).unwrap(),
            serde_json::to_value(&replay.last).unwrap(),
            "{name}: the last evaluation"
        );
    }
}
